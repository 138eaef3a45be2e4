"""Demo MCP servers started by the default ``routing.yaml``: ``clock`` (stdio) and ``notes`` (HTTP).

They are written with the official MCP SDK (the optional ``demo`` extra) and are the only
modules in ``gateway`` that import ``mcp``; the gateway itself never imports this package.
"""
