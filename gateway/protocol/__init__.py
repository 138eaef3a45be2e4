"""Sans-IO: MCP types and header names, the JSON-RPC codec, the tunnel v1 wire, era bridging, SSE,
trace context and the error tree. Imports neither asyncio nor aiohttp, and nothing else of ours."""
