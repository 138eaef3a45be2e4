"""Transports to MCP servers: the Upstream contract and its stdio and HTTP implementations.
They know nothing of the tunnel, the dispatcher or the channels above them."""
