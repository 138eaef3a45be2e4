"""Transports to MCP servers: the Upstream contract and its stdio and HTTP implementations."""
