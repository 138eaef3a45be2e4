"""The one error tree of the package (gateway and relay), each error named by who caused it.
Defines the classes every layer raises; turns none of them into a response (see below for where).

Every exception class defined under `gateway/` descends from `GatewayError`
(tests/unit/test_error_tree.py checks it, and that this tree names each one);
classes raised by one module only live in that module (its path is given).

    GatewayError
    ├── ConfigError              a configuration file is wrong: file, key, expected (exit status 2)
    │   └── RelayConfigError     relay.yaml is wrong                      (relay/config.py)
    ├── SecretError              a secret reference cannot be resolved    (config/secrets.py)
    ├── GlobError, ValueError    a routing rule's glob pattern is malformed (config/globs.py)
    ├── SseError, ValueError     an SSE stream cannot be parsed in bounds (protocol/sse.py)
    │   └── SseEventTooLarge     one event grew past `max_event_bytes`
    ├── InvalidCursor, ValueError  a cursor the gateway did not issue, or for a list that changed
    │                            since (channels/cursors.py; a channel answers InvalidRequestParams)
    ├── CommandError             the MCP client / command is wrong        -> JSON-RPC error
    │   ├── UnknownChannel       no such channel on this gateway          (400, -32603)
    │   ├── RateLimited          a rate limit or concurrency cap said no  (429, -32029, data.retry_after_ms)
    │   ├── RouteDenied          a `deny` routing rule matched            (403, -32010)
    │   ├── UnknownTarget        no server of the channel has that name   (400, -32602)
    │   ├── SessionNotFound      unknown, expired or ended Mcp-Session-Id (404, -32600)
    │   ├── InvalidRequestParams malformed params or cursor, a 2026-07-28 `_meta` key missing (400, -32602)
    │   ├── HeaderMismatch       2026-07-28 standard headers missing or not the body's  (400, -32020)
    │   ├── MethodNotFound       an aggregated channel serves no such method (404, -32601; channels/aggregate.py)
    │   ├── MissingClientCapability  a server asked what the client did not declare (400, -32021)
    │   ├── UnsupportedProtocolVersion  a version the gateway does not serve  (400, -32022, data.supported)
    │   ├── DiscoveryUnsupported  `oauth_discovery` on a channel without one HTTP server (400)
    │   └── ServiceCredentialRefused  the token endpoint refused a server's service credential (RFC 6749
    │                            §5.2): the user's token could not be exchanged (403, -32011, data.error)
    ├── UpstreamError            the MCP server failed                    -> -32603 + tunnel_failure
    │   ├── UpstreamUnavailable  not running / connection failed / died
    │   ├── UpstreamProtocolError  answered something that is not MCP
    │   ├── UpstreamHttpError    answered an HTTP error without a JSON-RPC body (its challenge,
    │   │                        `WWW-Authenticate`, travels with it)
    │   └── DiscoveryFailed      its OAuth metadata is missing, invalid, redirected or too large
    ├── ListUnavailable          a server's list could not be fetched: it is left out of the merged
    │                            view                                     (channels/catalog.py)
    ├── InvalidMetadata          an OAuth metadata document is not what its RFC requires (protocol/oauth.py)
    ├── ControlPlaneError        the control plane refused or failed
    │   ├── CommandGone          404 on a response POST: the caller left (cancellation)
    │   ├── CredentialsUnavailable  no access token to send: the token exchange failed
    │   └── SubjectTokenError    the platform token to exchange cannot be read (tunnel/subject_tokens.py)
    ├── JwksUnavailable          an issuer's key set could not be had (relay/jwks.py)
    ├── SigningKeyError, ValueError  a relay signing key is unusable; says why, never the key (relay/tokens.py)
    ├── H1Error                  an HTTP/1.1 exchange with the control plane failed; `sent` says
    │                            whether the request left                 (tunnel/http1.py)
    └── RelayError               what the relay answers its callers with: HTTP status and API error
        │                        code (relay/errors.py draws this subtree in full)
        ├── CallerError          the MCP client's request is at fault (4xx)
        ├── TunnelClientError    the tunnel client's (a gateway's) request is at fault (4xx)
        └── …                    the relay's own state: unknown tunnel, full queue, timeouts, 503s

The JSON-RPC code, HTTP status and provenance are class attributes or fields;
`gateway.dispatch` turns a gateway error into a wire response, in that one place (for an
`oauth_discovery` command: an API error object, `{"error": {"message", "type", "code"}}`, with
`api_code`), and the relay's `error_middleware` does the same for a `RelayError`.
Messages never carry secrets, URLs, raw bodies or exception text from peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.protocol.wire import INTERNAL_ERROR, Headers, TunnelFailure


class GatewayError(Exception):
    """Base of every error the package (gateway and relay) raises on purpose."""


_PROBLEM_WORDS: Final = {
    "connection_refused": "connect refused",
    "host_unreachable": "host unreachable:",
    "network_unreachable": "network unreachable:",
    "dns": "DNS lookup failed for",
    "tls": "TLS handshake failed with",
    "timeout": "no answer in time from",
    "connection_reset": "connection reset by",
    "connection_closed": "connection closed by",
    "unexpected_eof": "connection closed by",
    "dial": "could not connect to",
    "invalid_protocol_response": "not an MCP answer from",
    "non_protocol_response": "not an MCP answer from",
    "malformed_json": "not an MCP answer from",
}


class ConfigError(GatewayError):
    """A configuration file is wrong: names the file, the key and what was expected."""

    def __init__(self, file: str, key: str, expected: str) -> None:
        self.file, self.key, self.expected = file, key, expected
        super().__init__(f"{file}: {key}: expected {expected}")


class CommandError(GatewayError):
    """The command (or the MCP request inside it) cannot be served as sent."""

    code: ClassVar[int] = INTERNAL_ERROR
    status: ClassVar[int] = 400
    api_code: ClassVar[str] = "invalid_request"
    """The API error code when this error ends an `oauth_discovery` command."""
    data: Raw | UnsetType = UNSET


class UnknownChannel(CommandError):
    api_code = "unsupported_channel"

    def __init__(self, channel: str) -> None:
        super().__init__(f"unknown channel {channel!r}: this gateway serves no such channel")


RATE_LIMITED = -32029
"""JSON-RPC code of a request refused by a gateway limit (implementation-defined server error range)."""


class RateLimited(CommandError):
    """A rate limit or concurrency cap refused the request; retry after `retry_after_ms`."""

    code = RATE_LIMITED
    status = 429

    def __init__(self, limit: str, retry_after_ms: int) -> None:
        super().__init__(f"rate limit exceeded ({limit}); retry after {retry_after_ms} ms")
        self.limit = limit
        self.retry_after_ms = retry_after_ms
        self.data = Raw(b'{"retry_after_ms":%d}' % retry_after_ms)


ROUTE_DENIED = -32010
"""JSON-RPC code of a request a `deny` routing rule refused (implementation-defined server error range)."""


class RouteDenied(CommandError):
    """A routing rule denies the request; its message is the rule's."""

    code = ROUTE_DENIED
    status = 403


class UnknownTarget(CommandError):
    """The tool, prompt or resource named is not served on this channel."""

    code = -32602
    status = 400


class SessionNotFound(CommandError):
    """The client's `Mcp-Session-Id` is unknown, expired or ended: it must initialize again."""

    code = -32600
    status = 404

    def __init__(self) -> None:
        super().__init__("Session not found")


MISSING_CLIENT_CAPABILITY = -32021
"""JSON-RPC code of MCP 2026-07-28's MissingRequiredClientCapabilityError."""


class MissingClientCapability(CommandError):
    """A server asked the client, during its request, for something (elicitation, sampling, roots)
    the client did not declare it can do; `data.requiredCapabilities` says what it would need."""

    code = MISSING_CLIENT_CAPABILITY
    status = 400

    def __init__(self, capability: str, required: Raw) -> None:
        super().__init__(f"Client did not declare the {capability} capability required by the server's request")
        self.data = Raw(b'{"requiredCapabilities":%s}' % bytes(required))


class InvalidRequestParams(CommandError):
    """The request's params (or its cursor) cannot be used."""

    code = -32602
    status = 400


class HeaderMismatch(CommandError):
    """A 2026-07-28 request's `MCP-Protocol-Version`, `Mcp-Method` or `Mcp-Name` header is missing,
    malformed, or says something else than its body (streamable-http "Server Validation")."""

    code = -32020
    status = 400


class UnsupportedProtocolVersion(CommandError):
    """A request asks for a protocol version the gateway does not serve (basic/versioning)."""

    code = -32022
    status = 400

    def __init__(self, requested: str, supported: Sequence[str]) -> None:
        super().__init__("Unsupported protocol version")
        self.data = Raw(msgspec.json.encode({"supported": list(supported), "requested": requested}))


class DiscoveryUnsupported(CommandError):
    """An `oauth_discovery` command for a channel whose server is not one HTTP server (stdio servers
    have no OAuth metadata; an aggregated channel has no single protected resource)."""

    status = 400
    api_code = "oauth_discovery_unsupported"

    def __init__(self, subject: str, why: str) -> None:
        super().__init__(f"no OAuth discovery for {subject}: {why}")


SERVICE_CREDENTIAL_REFUSED = -32011
"""JSON-RPC code of a call whose server's service credential was refused (implementation-defined range)."""


class ServiceCredentialRefused(CommandError):
    """The token endpoint said no (an RFC 6749 §5.2 error) when the gateway asked for the token a
    server takes instead of the user's: client credentials, or the user's token exchanged (RFC 8693).
    Names the server and the OAuth error code (also in `data.error`), never a token or a secret."""

    code = SERVICE_CREDENTIAL_REFUSED
    status = 403

    def __init__(self, server: str, grant: str, error: str | None) -> None:
        said = error if error is not None else "no OAuth error code"
        super().__init__(f"server {server!r}: the token endpoint refused the {grant} ({said})")
        self.error = error
        self.data = Raw(msgspec.json.encode({"error": error}))


class UpstreamError(GatewayError):
    """The upstream MCP server could not give a valid JSON-RPC answer."""

    status: ClassVar[int] = 502
    reason: ClassVar[str] = "Bad Gateway"
    api_code: str = "oauth_discovery_failed"
    """The API error code when this failure ends an `oauth_discovery` command."""

    def __init__(self, message: str, failure: TunnelFailure) -> None:
        super().__init__(message)
        self.failure = failure

    @property
    def resp_code(self) -> int:
        status = self.failure.upstream_status
        return status if isinstance(status, int) else self.status

    def problem(self, where: str) -> str:
        """The failure in an operator's words, at `where` (a host:port): `connect refused 127.0.0.1:8781`."""
        failure = self.failure
        kind = failure.transport_error_kind
        if isinstance(failure.upstream_status, int):
            return f"HTTP {failure.upstream_status} from {where}"
        words = _PROBLEM_WORDS.get(kind if isinstance(kind, str) else "", None)
        if words is None:
            words = _PROBLEM_WORDS.get(failure.source, failure.source.replace("_", " "))
        return f"{words} {where}"


class UpstreamUnavailable(UpstreamError):
    """The server is not running, could not be reached, or went away mid-call."""

    @classmethod
    def closed(cls, server: str, kind: str = "eof") -> UpstreamUnavailable:
        return cls(
            f"upstream {server!r} closed the connection",
            TunnelFailure(source="transport_closed", transport_error_kind=kind, upstream_response_received=False),
        )

    @classmethod
    def connect(cls, server: str, kind: str = "connection_refused") -> UpstreamUnavailable:
        return cls(
            f"upstream {server!r} could not be reached",
            TunnelFailure(source="connect", transport_error_kind=kind, upstream_response_received=False),
        )

    @classmethod
    def timeout(cls, server: str) -> UpstreamUnavailable:
        return cls(
            f"upstream {server!r} did not answer in time",
            TunnelFailure(source="timeout", transport_error_kind="timeout", upstream_response_received=False),
        )

    @classmethod
    def dns(cls, server: str) -> UpstreamUnavailable:
        return cls(
            f"upstream {server!r} could not be resolved",
            TunnelFailure(source="dns", transport_error_kind="dns", upstream_response_received=False),
        )

    @classmethod
    def tls(cls, server: str) -> UpstreamUnavailable:
        return cls(
            f"upstream {server!r} failed the TLS handshake",
            TunnelFailure(source="tls", transport_error_kind="tls", upstream_response_received=False),
        )


class UpstreamProtocolError(UpstreamError):
    """The server answered, but not with valid MCP / JSON-RPC."""

    def __init__(self, server: str, kind: str, *, received: bool = True) -> None:
        super().__init__(
            f"upstream {server!r} sent an invalid answer ({kind})",
            TunnelFailure(source="protocol", transport_error_kind=kind, upstream_response_received=received),
        )


class UpstreamHttpError(UpstreamError):
    """The server answered an HTTP error status with no JSON-RPC body.

    `headers` keeps what the client must see of such an answer: its `WWW-Authenticate` challenge
    (a 401 or 403 from a server that wants the user's token, MCP authorization, "Authorization
    Flow Steps"), passed on unchanged and never logged or traced."""

    def __init__(self, server: str, status: int, headers: Headers | None = None) -> None:
        self.headers: Headers = headers or {}
        super().__init__(
            f"upstream {server!r} answered HTTP {status}",
            TunnelFailure(
                source="target_http",
                transport_error_kind="http_status",
                upstream_response_received=True,
                upstream_status=status,
            ),
        )

    @property
    def wants_credentials(self) -> bool:
        """A 401 or 403: the server wants (other) credentials, not a retry."""
        return self.failure.upstream_status in (401, 403)


class DiscoveryFailed(UpstreamError):
    """The server's OAuth metadata could not be had: not found at any well-known URL (404), or
    redirected, too large, not a metadata document (502). Names the server, never a URL or body."""

    def __init__(self, server: str, why: str, *, status: int = 502, kind: str = "invalid_protocol_response") -> None:
        super().__init__(
            f"OAuth discovery for upstream {server!r}: {why}",
            TunnelFailure(source="protocol", transport_error_kind=kind, upstream_response_received=True),
        )
        self._status = status
        self.api_code = "oauth_metadata_not_found" if status == 404 else "oauth_discovery_failed"

    @property
    def resp_code(self) -> int:
        return self._status


class ControlPlaneError(GatewayError):
    """The control plane refused a request or could not be reached. `renewed`: it refused the
    credential (401/403) and a new one is on its way (workload identity exchanges again once);
    `timed_out`: no answer came within the request's bound."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        renewed: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.renewed = renewed
        self.timed_out = timed_out


class CommandGone(ControlPlaneError):
    """The control plane no longer waits for a command (404 on a response POST): its caller
    disconnected, which is how a 2026-07-28 client cancels over Streamable HTTP, or gave up.
    The command's upstream call is cancelled and nothing more is posted for it."""

    def __init__(self) -> None:
        super().__init__("control plane no longer waits for this command (404)", 404)


class CredentialsUnavailable(ControlPlaneError):
    """There is no credential to send: the workload identity's token exchange failed (or has not
    finished) and the last access token has expired. Nothing was sent to the control plane;
    `retry_after` says when the next exchange may start."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"credentials: {reason}", None, retry_after)
        self.reason = reason
