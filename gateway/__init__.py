"""mcp-tunnel-gateway: one outbound poll channel from a private network to many MCP servers."""

__version__ = "0.1.0"
