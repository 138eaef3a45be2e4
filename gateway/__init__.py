"""mcp-tunnel-gateway: one outbound poll channel from a private network to many MCP servers.
Holds only `__version__`, which every module may import; no logic and no imports of its own."""

__version__ = "0.1.0"
