"""Demo MCP servers started by the default ``routing.yaml``: ``clock`` (stdio) and ``notes`` (HTTP).
Standalone programs: they import nothing of the gateway's, and the gateway never imports them.

They are written with the official MCP SDK (the optional ``demo`` extra) and are the only
modules in ``gateway`` that import ``mcp``.
"""
