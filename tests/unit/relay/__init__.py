"""gateway/relay/: the tunnel API, the MCP front door, queue backends, relay config."""
