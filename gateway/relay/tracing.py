"""The relay's telemetry seam: what the front door calls around each MCP client request.
Only the interface and a do-nothing default: imports no tracing SDK and no gateway internals.

Whoever builds the relay (the gateway's app, the `gateway relay` CLI) hands in
an implementation of `RelayTracer`, as httpcore's transports receive a `trace`
callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Final, Protocol

from gateway.protocol.wire import Headers, JsonRpcMessage


class RequestTrace(Protocol):
    """One client request's span: entered before the command is queued, left once it is answered."""

    def __enter__(self) -> RequestTrace: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def inject(self, headers: Headers, body: bytes | None) -> tuple[Headers, bytes | None]:
        """The command's headers and JSON-RPC body carrying this span's trace context."""
        ...

    def answered(self, status: int, body: bytes | None) -> None:
        """The HTTP status (and, for a JSON answer, the body) the client gets."""
        ...

    def subject(self, subject: str) -> None:
        """Who made the request: the `sub` of the user's token the relay checked (`user_auth`)."""
        ...


class RelayTracer(Protocol):
    def request(
        self, channel: str, headers: Mapping[str, str], body: bytes | None, message: JsonRpcMessage | None = None
    ) -> RequestTrace:
        """A trace for one request: `headers` are the client's HTTP headers, `body` its JSON-RPC message,
        `message` that body as the front door decoded it (None: not decoded; the tracer decodes it)."""
        ...


class _NoTrace:
    __slots__ = ()

    def __enter__(self) -> _NoTrace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def inject(self, headers: Headers, body: bytes | None) -> tuple[Headers, bytes | None]:
        return headers, body

    def answered(self, status: int, body: bytes | None) -> None:
        pass

    def subject(self, subject: str) -> None:
        pass


_NO_TRACE: Final = _NoTrace()


class _NoTracer:
    __slots__ = ()

    def request(
        self, channel: str, headers: Mapping[str, str], body: bytes | None, message: JsonRpcMessage | None = None
    ) -> RequestTrace:
        return _NO_TRACE


NO_TRACER: Final[RelayTracer] = _NoTracer()
"""Tracing off: commands are queued exactly as the client sent them."""
