"""Relay errors, named by who caused them, and their one translation into HTTP responses.
Raised anywhere in the relay; turned into a response nowhere but `error_middleware`.

Every failure the relay reports is a `RelayError` subclass whose status, API error
code and extra headers are class attributes. `RelayError` is a branch of the package's one tree
(`gateway.protocol.errors.GatewayError`); this is that branch in full::

    RelayError (500, server_error)
    ├── CallerError                      the MCP client's request is at fault (4xx)
    │   ├── HostNotAllowed (403)         DNS-rebinding protection: Host not allowed
    │   ├── OriginNotAllowed (403)
    │   ├── MissingSessionId (400 missing_mcp_session_id)
    │   ├── ClientUnauthorized (401 + WWW-Authenticate: Bearer)
    │   ├── ClientTokenRequired (403 tunnel_use_forbidden)  the client token travels in its own header
    │   ├── UserTokenRefused             a user's token failed `user_auth`, with a challenge (RFC 6750 §3)
    │   │   ├── UserUnauthorized (401 invalid_token)   missing, expired, foreign, forged
    │   │   └── InsufficientScope (403 insufficient_scope)
    │   ├── InvalidJsonRpc (400, JSON-RPC error body)
    │   └── MethodNotAllowed (405 + Allow)
    ├── TunnelClientError                the tunnel client's (a gateway's) request is at fault (4xx)
    │   ├── GatewayUnauthorized (401 tunnel_use_forbidden)  no valid key or access token for this tunnel
    │   ├── GatewayForbidden (403 tunnel_use_forbidden)  metadata only: a valid access token for other tunnels
    │   ├── InvalidParameter (400)
    │   ├── InvalidPayload (400 invalid_json_payload)
    │   ├── PendingNotFound (404 pending_request_not_found)
    │   ├── ShardMismatch (401 tunnel_request_mismatch)
    │   └── FrameBacklog (429 rate_limit_exceeded + Retry-After)
    ├── TunnelNotFound (404)             a caller named a tunnel the relay does not serve (the
    │   │                                tunnel API answers 401 instead: tunnel ids stay secret)
    │   └── TunnelRemoved (404)          a reload removed the tunnel while the caller waited
    ├── InvalidChannel (400 invalid_channel_format)
    ├── BodyTooLarge (413 request_body_too_large)
    ├── BodyTimeout (408 request_timeout)  the body did not arrive within `read_timeout_s`
    ├── QueueFull (429 tunnel_queue_full + Retry-After)
    ├── ClientRateExceeded (429 rate_limit_exceeded + Retry-After)  a client token's `client_rate` is spent
    ├── ClientNotSeen (503 tunnel_client_not_seen)
    ├── BackendUnavailable (503 tunnel_transport_unavailable + Retry-After)  the queue store is unreachable
    │   └── CommandLost (503)            the queue store no longer knows a waiting caller's command
    ├── RelayClosing (503)
    ├── CallerTimeout (504)
    ├── MetadataNotFound (404 oauth_metadata_not_found)   the channel's server publishes no OAuth metadata
    ├── MetadataUnavailable (502 oauth_discovery_failed)  the gateway could not fetch it
    ├── PublicUrlRequired (500 public_url_required)       discovery with `allowed_hosts: ['*']` and no `public_url`
    ├── IssuerKeysUnavailable (503 issuer_unavailable + Retry-After)  `user_auth` cannot fetch the issuer's
    │                                    keys, so a user's token can be neither accepted nor refused
    └── TokenError (400 invalid_request)  the token endpoint's caller; an RFC 6749 body, never cached
        ├── InvalidGrant (400 invalid_grant)  the subject token failed verification
        ├── UnauthorizedClient (400 unauthorized_client)  a valid subject token whose subject may not
        │                                     use the tunnels asked for (or any)
        ├── UnsupportedGrantType (400 unsupported_grant_type)
        ├── TokenBodyTooLarge (413 invalid_request)
        ├── TokenMethodNotAllowed (405 invalid_request + Allow: POST)
        ├── TokenRateExceeded (429 temporarily_unavailable + Retry-After)  the caller's address spent
        │                                 its `token_rate_per_s`; checked before the body is read
        └── IssuerUnavailable (503 temporarily_unavailable + Retry-After)  the issuer's keys could not
                                          be fetched, so the token can be neither accepted nor refused
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from gateway.protocol.errors import GatewayError
from gateway.protocol.headers import CONTENT_TYPE, JSON, RETRY_AFTER, WWW_AUTHENTICATE
from gateway.protocol.wire import INVALID_REQUEST, NULL_ID, PARSE_ERROR, Codec
from gateway.relay.exchange import Reply

log = logging.getLogger("gateway.relay")


class RelayError(GatewayError):
    """Base of every error the relay answers with; maps to an APIErrorResponse."""

    status: ClassVar[int] = 500
    code: ClassVar[str | None] = None
    default_message: ClassVar[str] = "internal relay error"
    extra_headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.param = param

    @property
    def error_type(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def headers(self) -> dict[str, str]:
        """The answer's headers besides Content-Type: the class's own."""
        return self.extra_headers

    def reply(self, codec: Codec) -> Reply:
        """This error as the answer every server of the relay gives it."""
        body = codec.api_error(self.message, self.error_type, self.code, self.param)
        return Reply(self.status, body, [(CONTENT_TYPE, JSON), *self.headers().items()])

    def to_response(self, codec: Codec) -> web.Response:
        return self.reply(codec).to_response()


class RetryLater:
    """A refusal that says when a retry would be let through: `Retry-After` in whole seconds, at least 1
    (mixed into a RelayError subclass ahead of it)."""

    def __init__(self, retry_after_s: float = 1.0) -> None:
        super().__init__()
        self.retry_after_s = max(1, math.ceil(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {**super().headers(), RETRY_AFTER: str(self.retry_after_s)}  # type: ignore[misc]


class CallerError(RelayError):
    status = 400
    default_message = "bad request"


class HostNotAllowed(CallerError):
    status = 403
    default_message = "the Host header names a host this relay does not serve"


class OriginNotAllowed(CallerError):
    status = 403
    default_message = "requests from this Origin are not allowed"


class MissingSessionId(CallerError):
    code = "missing_mcp_session_id"
    default_message = "DELETE needs the Mcp-Session-Id header of the session to end"


class ClientUnauthorized(CallerError):
    status = 401
    code = "tunnel_use_forbidden"
    default_message = "a valid Bearer token for this tunnel is required"
    extra_headers = {WWW_AUTHENTICATE: "Bearer"}


class ClientTokenRequired(CallerError):
    """No valid client token in the tunnel's `client_token_header` (not `Authorization`, which carries
    the user's own token there): 403, so the challenge of the user's OAuth is not confused with it."""

    status = 403
    code = "tunnel_use_forbidden"
    default_message = "a valid client token for this tunnel is required in its client token header"


class UserTokenRefused(CallerError):
    """A request to a channel under `user_auth` whose user token does not pass; the answer carries
    `WWW-Authenticate: Bearer …` naming the channel's metadata, so a client can (re)authorize."""

    def __init__(self, message: str | None = None, *, challenge: str, subject: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge
        self.subject = subject
        """The token's `sub` when the token itself was valid (too little scope), for the audit line."""

    def reply(self, codec: Codec) -> Reply:
        reply = super().reply(codec)
        reply.headers.append((WWW_AUTHENTICATE, self.challenge))
        return reply


class UserUnauthorized(UserTokenRefused):
    status = 401
    code = "invalid_token"
    default_message = "a valid bearer token for this channel is required"


class InsufficientScope(UserTokenRefused):
    status = 403
    code = "insufficient_scope"
    default_message = "the bearer token lacks a scope this channel requires"


class InvalidJsonRpc(CallerError):
    """The MCP request body is not one JSON-RPC message; answered as a JSON-RPC error."""

    def __init__(self, message: str, *, rpc_code: int) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code

    def reply(self, codec: Codec) -> Reply:
        return Reply(self.status, codec.error_response(NULL_ID, self.rpc_code, self.message), [(CONTENT_TYPE, JSON)])

    @classmethod
    def parse_error(cls, message: str) -> InvalidJsonRpc:
        return cls(message, rpc_code=PARSE_ERROR)

    @classmethod
    def invalid_request(cls, message: str) -> InvalidJsonRpc:
        return cls(message, rpc_code=INVALID_REQUEST)


class MethodNotAllowed(CallerError):
    status = 405
    default_message = "this endpoint accepts POST and DELETE; the relay offers no standalone SSE stream"
    extra_headers = {"Allow": "POST, DELETE"}


class TunnelClientError(RelayError):
    """A request to the tunnel API (from a gateway polling or posting frames) is at fault."""

    status = 400
    default_message = "bad request"


class GatewayUnauthorized(TunnelClientError):
    status = 401
    code = "tunnel_use_forbidden"
    default_message = "a valid Bearer key for this tunnel is required"


class GatewayForbidden(TunnelClientError):
    status = 403
    code = "tunnel_use_forbidden"
    default_message = "this access token does not grant use of this tunnel"


class InvalidParameter(TunnelClientError):
    default_message = "invalid parameter"


class InvalidPayload(TunnelClientError):
    code = "invalid_json_payload"
    default_message = "the body is not a valid TunnelResponsePayload JSON object"


class PendingNotFound(TunnelClientError):
    status = 404
    code = "pending_request_not_found"
    default_message = "the pending request was already processed, expired, or never existed"


class ShardMismatch(TunnelClientError):
    status = 401
    code = "tunnel_request_mismatch"
    default_message = "the shard token does not belong to this request"


class FrameBacklog(TunnelClientError):
    status = 429
    code = "rate_limit_exceeded"
    default_message = "the MCP caller has not consumed earlier frames yet; retry shortly"
    extra_headers = {RETRY_AFTER: "1"}


class TunnelNotFound(RelayError):
    status = 404
    default_message = "this relay serves no such tunnel"


class TunnelRemoved(TunnelNotFound):
    default_message = "this tunnel was removed from the relay's configuration while the call waited"


class InvalidChannel(RelayError):
    status = 400
    code = "invalid_channel_format"
    default_message = "channel names use lowercase letters, digits, '-' and '_' (at most 64)"


class BodyTooLarge(RelayError):
    status = 413
    code = "request_body_too_large"
    default_message = "the request body exceeds the relay's byte limit"


class BodyTimeout(RelayError):
    status = 408
    code = "request_timeout"
    default_message = "the request body did not arrive in time"
    extra_headers = {"Connection": "close"}


class QueueFull(RelayError):
    status = 429
    code = "tunnel_queue_full"
    default_message = "the tunnel's queue is full; retry shortly"
    extra_headers = {RETRY_AFTER: "1"}


class ClientRateExceeded(RetryLater, RelayError):
    """The client token's `client_rate` is spent for now."""

    status = 429
    code = "rate_limit_exceeded"
    default_message = "too many requests for this client token; retry after the Retry-After delay"


class ClientNotSeen(RelayError):
    status = 503
    code = "tunnel_client_not_seen"
    default_message = "no tunnel client has polled this tunnel recently"


class BackendUnavailable(RelayError):
    status = 503
    code = "tunnel_transport_unavailable"
    default_message = "the relay's queue store is unreachable; retry shortly"
    extra_headers = {RETRY_AFTER: "1"}


class CommandLost(BackendUnavailable):
    default_message = "the relay lost track of this request (its queue state expired or was purged); retry"


class RelayClosing(RelayError):
    status = 503
    default_message = "the relay is shutting down"


class CallerTimeout(RelayError):
    status = 504
    default_message = "the tunnel client did not answer in time"


class MetadataNotFound(RelayError):
    status = 404
    code = "oauth_metadata_not_found"
    default_message = "this channel's server publishes no OAuth protected resource metadata"


class MetadataUnavailable(RelayError):
    status = 502
    code = "oauth_discovery_failed"
    default_message = "the tunnel client could not fetch this channel's OAuth metadata"


class IssuerKeysUnavailable(RelayError):
    status = 503
    code = "issuer_unavailable"
    default_message = "the issuer's signing keys cannot be fetched right now; retry later"
    extra_headers = {RETRY_AFTER: "5"}


class PublicUrlRequired(RelayError):
    code = "public_url_required"
    default_message = "OAuth discovery needs the relay's `public_url` when `allowed_hosts` allows any host"


class OAuthErrorBody(msgspec.Struct, frozen=True):
    """RFC 6749 section 5.2: the token endpoint's error answer."""

    error: str
    error_description: str


NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""RFC 6749 section 5.1: token endpoint answers, tokens or errors, are never cached."""


class TokenError(RelayError):
    """The token endpoint refuses a request; `oauth_error` is the RFC 6749/8693 `error` code and
    the message its `error_description` (written by the relay: never a token or a key)."""

    status = 400
    oauth_error: ClassVar[str] = "invalid_request"
    default_message = "the token request is malformed"

    def headers(self) -> dict[str, str]:
        """The answer's headers besides Content-Type: never cached, and the class's own."""
        return {**NO_STORE, **self.extra_headers}

    def reply(self, codec: Codec) -> Reply:
        body = msgspec.json.encode(OAuthErrorBody(self.oauth_error, self.message))
        return Reply(self.status, body, [*self.headers().items(), (CONTENT_TYPE, "application/json")])


class InvalidGrant(TokenError):
    oauth_error = "invalid_grant"
    default_message = "the subject token is invalid"


class UnauthorizedClient(TokenError):
    oauth_error = "unauthorized_client"
    default_message = "the subject may not use this relay's tunnels"


class UnsupportedGrantType(TokenError):
    oauth_error = "unsupported_grant_type"
    default_message = "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange"


class TokenBodyTooLarge(TokenError):
    status = 413
    default_message = "the token request body is too large"


class TokenMethodNotAllowed(TokenError):
    status = 405
    default_message = "the token endpoint accepts POST only"
    extra_headers = {"Allow": "POST"}


class TokenRateExceeded(RetryLater, TokenError):
    """The caller's address sent more token requests than `token_rate_per_s` and `token_burst` allow."""

    status = 429
    oauth_error = "temporarily_unavailable"
    default_message = "too many token requests from this address; retry after the Retry-After delay"


class IssuerUnavailable(TokenError):
    status = 503
    oauth_error = "temporarily_unavailable"
    default_message = "the issuer's signing keys cannot be fetched right now; retry later"
    extra_headers = {"Retry-After": "5"}


def refusal(exc: RelayError, codec: Codec, on_error: Callable[[str], None] | None = None) -> Reply:
    """A RelayError as its answer, `on_error` told its API code (`http_NNN` without one): the one
    translation every server of the relay uses (aiohttp's through `error_middleware`)."""
    if on_error is not None:
        on_error(exc.code or f"http_{exc.status}")
    return exc.reply(codec)


def unexpected(method: str, path: str, codec: Codec, on_error: Callable[[str], None] | None = None) -> Reply:
    """The bare 500 for an exception no handler expected (logged here, with its traceback)."""
    log.exception("relay: unexpected error handling %s %s", method, path)
    if on_error is not None:
        on_error("server_error")
    return RelayError().reply(codec)


def error_middleware(codec: Codec, on_error: Callable[[str], None] | None = None) -> Middleware:
    """The one translation of errors into responses: RelayError and aiohttp's own 4xx/5xx
    become APIErrorResponse bodies; anything unexpected is logged and becomes a bare 500.
    `on_error` is told each error answer's API code (`http_NNN` without one), for the console."""

    def told(code: str) -> None:
        if on_error is not None:
            on_error(code)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RelayError as exc:
            return refusal(exc, codec, on_error).to_response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            told(f"http_{exc.status}")
            kind = "server_error" if exc.status >= 500 else "invalid_request_error"
            headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", RETRY_AFTER.lower()}}
            body = codec.api_error(exc.reason, kind, None)
            return web.Response(status=exc.status, body=body, content_type=JSON, headers=headers)
        except ConnectionResetError:
            raise  # the peer left; there is nobody to answer
        except Exception:
            return unexpected(request.method, request.path, codec, on_error).to_response()

    return middleware


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The logger the relay gives aiohttp's HTTP server. A request aiohttp could not parse (bad
    request line, headers or chunking: the client's fault, answered 400) becomes one DEBUG line
    without a traceback, so malformed traffic cannot flood the log; anything else keeps its
    ERROR line and traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.debug("relay: refused a malformed HTTP request (%s)", type(exc).__name__)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)
