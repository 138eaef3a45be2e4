"""HTTP header names and content types used in more than one place, each spelled once.
Constants only: imports nothing and holds no logic.

Header names match case-insensitively on the wire, so compare them with `wire.header_value` or
`.lower()`, never with `==` on a received name.

What a name is spelled as here is what the gateway sends; `wire.RESPONSE_HEADER_ALLOWLIST` keeps
the v1 contract's own spelling of the headers it passes back to callers.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------- MCP (Streamable HTTP)

SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
"""2026-07-28: the request's JSON-RPC method, mirrored in a header."""
NAME_HEADER: Final = "Mcp-Name"
"""2026-07-28: the tool or prompt name or resource URI a request targets, mirrored in a header."""
LAST_EVENT_ID: Final = "Last-Event-ID"

# --------------------------------------------------------------------------- Secure MCP Tunnel v1

SERVER_INFO_HEADER: Final = "X-Tunnel-MCP-Server-Info"
SHARD_HEADER: Final = "X-Tunnel-Shard-Token"
CLIENT_NAME_HEADER: Final = "X-Tunnel-Client-Name"
CLIENT_VERSION_HEADER: Final = "X-Tunnel-Client-Version"
INSTANCE_HEADER: Final = "X-Tunnel-Client-Instance-Id"

# --------------------------------------------------------------------------- HTTP

CONTENT_TYPE: Final = "Content-Type"
ACCEPT: Final = "Accept"
AUTHORIZATION: Final = "Authorization"
WWW_AUTHENTICATE: Final = "WWW-Authenticate"
RETRY_AFTER: Final = "Retry-After"

# --------------------------------------------------------------------------- content types

JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"
PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format, version 0.0.4 (`/metrics` of the gateway and the relay)."""
