"""One record per finished MCP call (`CallRecord`), and the sinks that consume them (`CallSinks`).
Carries names, outcomes, sizes and times only: never arguments, results or header values.

The dispatcher emits one record when a JSON-RPC command has its answer (or none: timeout,
caller gone). Consumers (the audit log, the status page's counters, usage budgets) subscribe
through `CallSinks`; a sink must not block or raise, it runs on the call's path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal, Protocol

import msgspec

log = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "rejected", "timeout", "cancelled"]
"""ok: answered by the server (a JSON-RPC error result included); error: the gateway or the server
failed the call (`error` says which source); rejected: refused by a limit, route, allow-list or
budget before reaching a server; timeout: the command's deadline passed; cancelled: the caller left."""


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one JSON-RPC command, as the audit log and the status page see it."""

    time: float
    """Wall clock (seconds since the epoch) when the gateway received the command."""
    tunnel: str
    channel: str
    method: str
    """The JSON-RPC method; `response` for a client's answer to a server request."""
    outcome: Outcome
    status: int
    """HTTP status of the posted response (0 when nothing was posted)."""
    duration_s: float
    server: str | None = None
    """The server that served it, when routing decided one."""
    name: str | None = None
    """The tool or prompt name, or the resource URI, the request addressed."""
    session: str | None = None
    """The client's `Mcp-Session-Id`, when it sent one."""
    tenant: str | None = None
    """The limits' tenant header value, when configured and present."""
    subject: str | None = None
    """Who called (an authenticated user's `sub`), when known."""
    error: str | None = None
    """Why it failed: a `tunnel_failure` source, a JSON-RPC error code, or a limit's name."""
    bytes_in: int = 0
    """Size of the client's JSON-RPC message."""
    bytes_out: int = 0
    """Size of the terminal response body posted back."""


class CallSink(Protocol):
    """Consumes finished calls; runs on the call's path, so it must be quick and must not raise."""

    def record(self, call: CallRecord) -> None: ...


class CallSinks:
    """Fans each record out to every sink; a sink that raises is logged, the others still run."""

    def __init__(self, sinks: Iterable[CallSink] = ()) -> None:
        self._sinks: list[CallSink] = list(sinks)

    def add(self, sink: CallSink) -> None:
        self._sinks.append(sink)

    def remove(self, sink: CallSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def record(self, call: CallRecord) -> None:
        for sink in self._sinks:
            try:
                sink.record(call)
            except Exception:
                log.exception("call record sink %s failed", type(sink).__name__)
