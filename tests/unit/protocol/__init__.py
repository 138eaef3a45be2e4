"""gateway/protocol/: the wire, era bridging, edge checks, SSE, trace context, with plain calls and fuzzing."""
