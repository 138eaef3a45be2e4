"""proc_affinity routing rules shared by every queue backend: which gateway instance may take a command.
Sans-IO: clocks come in as arguments; no asyncio, no aiohttp.

Owns reading `X-Tunnel-MCP-Server-Info` (the channels an instance declares with
`proc_affinity`), the session id a command or frame carries, and the in-process
session -> owner table the memory backend uses. The Redis backend applies the
same rules inside its Lua scripts (`redis_scripts.py`).

The rules, for a queued command on channel C carrying `Mcp-Session-Id: S`:
- no owner recorded for (C, S): any instance may take it;
- owner is the polling instance: it takes it (and the binding's TTL is renewed);
- owner is another instance that is still seen (polling, or its last poll ended
  within `client_seen_grace_s`): the command waits for the owner;
- owner is another instance no longer seen: the polling instance takes it and
  becomes the owner (reassignment).
An owner is recorded when the terminal frame of a command taken by an instance
that declared C with `proc_affinity` is posted, for the session id the command
carried or the one the response sets (an `initialize` answer); a
`session_termination_response` removes it. Nothing else is ever bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from gateway.protocol.headers import SESSION_HEADER
from gateway.protocol.wire import (
    RESP_SESSION_END,
    SERVER_INFO_MAX_BYTES,
    SERVER_INFO_MAX_CHANNELS,
    Headers,
    JsonDecoder,
    ServerInfoHeader,
    TunnelResponsePayload,
    header_value,
)

ANONYMOUS: Final = "-"
"""The instance id of polls that send no `X-Tunnel-Client-Instance-Id`."""

_server_info = JsonDecoder(ServerInfoHeader)


def affine_channels(value: str | None) -> frozenset[str]:
    """The channel names an `X-Tunnel-MCP-Server-Info` v1 value declares with `proc_affinity: true`.

    Lenient by design (the header is optional and diagnostic): a missing, oversized,
    malformed or non-v1 value declares nothing rather than failing the poll.
    """
    if not value or len(value) > SERVER_INFO_MAX_BYTES:
        return frozenset()
    try:
        info = _server_info.decode(value)
    except msgspec.DecodeError:
        return frozenset()
    if info.version != 1 or len(info.channels) > SERVER_INFO_MAX_CHANNELS:
        return frozenset()
    return frozenset(channel.name for channel in info.channels if channel.proc_affinity is True)


def session_of(headers: Headers) -> str:
    """The command's `Mcp-Session-Id` ("" when it has none)."""
    return header_value(headers, SESSION_HEADER) or ""


def session_set_by(frame: TunnelResponsePayload) -> str:
    """The `Mcp-Session-Id` a response frame sets ("" when none), e.g. an `initialize` answer."""
    if isinstance(frame.resp_headers, dict):
        return header_value(frame.resp_headers, SESSION_HEADER) or ""
    return ""


def ends_session(frame: TunnelResponsePayload) -> bool:
    return frame.resp_type == RESP_SESSION_END


@dataclass(slots=True)
class _Binding:
    owner: str
    expires: float


class SessionTable:
    """(channel, session id) -> owning instance with a TTL, for the memory backend.

    `may_take` asks `seen(instance)` whether a foreign owner still counts as seen.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._bindings: dict[tuple[str, str], _Binding] = {}

    def __len__(self) -> int:
        return len(self._bindings)

    def owner(self, channel: str, session: str, now: float) -> str | None:
        binding = self._bindings.get((channel, session))
        if binding is None:
            return None
        if binding.expires <= now:
            del self._bindings[(channel, session)]
            return None
        return binding.owner

    def may_take(self, channel: str, session: str, instance: str, now: float, seen: Callable[[str], bool]) -> bool:
        """Apply the routing rules for one queued command; reassigns a lost owner's session."""
        if not session:
            return True
        owner = self.owner(channel, session, now)
        if owner is None:
            return True
        if owner != instance and seen(owner):
            return False
        self._bindings[(channel, session)] = _Binding(instance, now + self._ttl)
        return True

    def record(self, channel: str, session: str, instance: str, now: float) -> None:
        """Bind a session to the instance that answered it, unless another live binding holds it."""
        if not session:
            return
        current = self.owner(channel, session, now)
        if current is None or current == instance:
            self._bindings[(channel, session)] = _Binding(instance, now + self._ttl)

    def forget(self, channel: str, session: str) -> None:
        self._bindings.pop((channel, session), None)

    def purge(self, now: float) -> None:
        for key in [key for key, binding in self._bindings.items() if binding.expires <= now]:
            del self._bindings[key]
