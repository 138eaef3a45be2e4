"""gateway/upstream/: stdio framing, process pools, the Streamable HTTP transport."""
