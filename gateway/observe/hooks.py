"""The telemetry seam: the hooks every layer calls (`Telemetry`) and `NOOP`, which does nothing.
Owns the interface and the no-op only, so no layer needs OpenTelemetry (as httpcore's `_trace.py`);
must not import opentelemetry, directly or through anything it imports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, Protocol

from gateway.config.routing import ServerSpec
from gateway.observe.records import CallSink
from gateway.protocol.mcp import Call, Frame, UpstreamInfo
from gateway.protocol.oauth_tokens import Failed, Granted
from gateway.protocol.wire import Headers, JsonRpcMessage, PolledCommand
from gateway.relay.tracing import NO_TRACER, RelayTracer

RateLimitOutcome = Literal["admitted", "waited", "rejected"]
TokenGrant = Literal["workload_identity", "client_credentials", "token_exchange"]


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One kind of token request as telemetry names it: the grant, the token endpoint (shown without
    userinfo or query) and, for a service credential, the server it is for. Built once per credential."""

    grant: TokenGrant
    token_url: str = field(repr=False)  # userinfo, when a URL carries any, is never shown
    server: str | None = None


class Observed(Protocol):
    """What telemetry needs of one server's transport (an `Upstream`): its name and kind, its calls,
    and the `observer` hook it reports up/down/restart through."""

    name: str
    transport: str
    observer: Callable[[str, str], None] | None

    @property
    def ready(self) -> bool: ...

    def exchange(self, call: Call) -> AsyncIterator[Frame]: ...


class CommandScope(Protocol):
    def __enter__(self) -> CommandScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PostScope(Protocol):
    def __enter__(self) -> PostScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def delivered(self, ok: bool) -> None: ...


class PollScope(Protocol):
    def __enter__(self) -> PollScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def polled(self, count: int) -> None: ...


class TokenScope(Protocol):
    def __enter__(self) -> TokenScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def settled(self, status: int, outcome: Granted | Failed) -> None: ...


class _NullScope:
    """What every no-op hook returns: a context manager whose methods do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NullScope:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def polled(self, count: int) -> None:
        pass

    def delivered(self, ok: bool) -> None:
        pass

    def settled(self, status: int, outcome: Granted | Failed) -> None:
        pass


_NULL: Final = _NullScope()


class Telemetry:
    """The hooks the gateway calls; this base records nothing (it is what `NoopTelemetry` is).

    Callers: the dispatcher (`command`, `describe`, `post`), the channel (`exchange`), the
    poller and the responder (`poll`, `post_retry`), workload identity and service credentials
    (`token_request`), the limits (`rate_limit`), the budget alerts
    (`budget_alert`), the app (`watch`, `relay_tracer`, `call_log`), the ops listener (`metrics_data`),
    the log records (`trace_ids`) and the CLI (`shutdown`).
    """

    enabled: bool = False

    def command(self, command: PolledCommand, received_at: float) -> CommandScope:
        """Around one command's whole life: the SERVER span (current inside), in-flight count, duration."""
        return _NULL

    def describe(self, message: JsonRpcMessage) -> None:
        """The current command carries `message`: names its span and sets the MCP attributes."""

    def post(self, resp_type: str, status: int, body: bytes | None, headers: Headers | None) -> PostScope:
        """Around one response POST of the current command; a terminal frame settles the outcome."""
        return _NULL

    def exchange(self, upstream: Observed, call: Call, info: UpstreamInfo) -> AsyncIterator[Frame]:
        """`upstream.exchange(call)` in a CLIENT span, with the trace context passed on to the server."""
        return upstream.exchange(call)

    def poll(self, limit: int) -> PollScope:
        """Around one long poll; `.polled(n)` reports how many commands it brought."""
        return _NULL

    def token_request(self, request: TokenRequest) -> TokenScope:
        """Around one POST to an OAuth token endpoint and the reading of its answer: `.settled(status,
        outcome)` says what the endpoint answered; an exception leaving the scope means no answer
        (network error, timeout). No token, secret or body is ever given to it."""
        return _NULL

    def post_retry(self, attempt: int, reason: str, delay_s: float) -> None:
        """A response POST is retried after `delay_s`: an event on the POST span and a counter."""

    def rate_limit(self, limit: str, outcome: RateLimitOutcome, wait_s: float = 0.0) -> None:
        """One call met `limit`: an event on the current span when it waits or is rejected, the wait
        time when it is admitted after waiting `wait_s`."""

    def limit_waiting(self, limit: str) -> None:
        """`Limits(on_wait=...)`: a call starts waiting for `limit`."""
        self.rate_limit(limit, "waited")

    def budget_alert(self, budget: str, scope: str, threshold: int) -> None:
        """A usage budget crossed `threshold` percent for one key (counted; the key is no label: unbounded)."""

    def call_log(self) -> CallSink | None:
        """A sink exporting each call's record as an OTLP log record (the audit log when telemetry is on),
        or None when logs are not exported."""
        return None

    def watch_limits(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Export the limits' own (limit label, admitted|waited|rejected) counts as counters."""

    def watch(self, upstreams: Mapping[str, Observed], specs: Mapping[str, ServerSpec]) -> None:
        """Observe these upstreams (all of them, replacing earlier ones): up/down gauge, restart counter
        and events, through `Upstream.observer`."""

    def relay_tracer(self) -> RelayTracer:
        """The relay's seam: a span per MCP client request, its context put into the command."""
        return NO_TRACER

    def metrics_data(self) -> object | None:
        """A collection of every instrument (the SDK's `MetricsData`, which `/metrics` reads by shape),
        or None when metrics are not kept."""
        return None

    def trace_ids(self) -> tuple[str, str] | None:
        """(trace id, span id) of the span current in this context, for log lines; None outside one."""
        return None

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting (blocking; call at exit)."""


class NoopTelemetry(Telemetry):
    """Telemetry off: no SDK imported, no provider, no exporter; every hook returns at once."""


NOOP: Final = NoopTelemetry()
