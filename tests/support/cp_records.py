"""What the scripted control plane records (every poll and response POST), the replies it is scripted with, and
the checks tests make on what it recorded: exactly one accepted terminal frame per command, the contract's
synthesized failure, a tool's text, which process answered."""

from __future__ import annotations

import email.utils
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from multidict import CIMultiDict

from tests.support.openapi import validate_failure

if TYPE_CHECKING:
    from tests.support.scripted_cp import ScriptedControlPlane

TERMINAL_TYPES: Final = frozenset(
    {"jsonrpc_response", "notify_ack", "session_termination_response", "oauth_discovery_response"}
)
ERROR_CODES: Final = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "tunnel_use_forbidden"),
    404: ("invalid_request_error", "pending_request_not_found"),
    408: ("server_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def now() -> float:
    """The control plane's clock (monotonic)."""
    return time.monotonic()


@dataclass(frozen=True)
class Reply:
    """A scripted answer to one poll or response POST."""

    status: int
    retry_after: str | None = None
    drop: bool = False
    """Close the connection without answering (with status 200 on a POST: accept it first,
    so the acknowledgement is what gets lost)."""
    body: bytes | None = None
    """A raw body to send instead of an `APIErrorResponse` (deliberately off-contract)."""

    @classmethod
    def dropped(cls) -> Reply:
        return cls(0, drop=True)

    @classmethod
    def lost_ack(cls) -> Reply:
        return cls(200, drop=True)


ReplySpec = Reply | int


def as_reply(spec: ReplySpec) -> Reply:
    return spec if isinstance(spec, Reply) else Reply(spec)


@dataclass
class Command:
    request_id: str
    shard_token: str
    channel: str | None
    body: dict[str, Any]
    contract: bool
    handed_at: float | None = None
    raw: bytes | None = None
    """The command's exact bytes in the poll body, when they are not `body` as JSON (malformed on purpose)."""


@dataclass
class PollRecord:
    index: int
    arrived: float
    query: dict[str, list[str]]
    headers: CIMultiDict[str]
    outstanding: int
    """Commands handed out and not yet answered with a terminal frame, when this poll arrived."""
    replied: float | None = None
    replied_wall: float | None = None
    status: int | None = None
    handed: list[str] = field(default_factory=list)
    peer_cert: dict[str, Any] | None = None

    @property
    def limit(self) -> int | None:
        values = self.query.get("limit", [])
        return int(values[0]) if len(values) == 1 and values[0].isdigit() else None

    @property
    def key(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


@dataclass
class PostRecord:
    index: int
    arrived: float
    body: bytes
    headers: CIMultiDict[str]
    payload: dict[str, Any] | None
    status: int | None = None
    after_final: bool = False
    lost_ack: bool = False
    """Accepted, but the connection was closed before the acknowledgement (scripted)."""

    @property
    def request_id(self) -> str | None:
        return self.payload.get("request_id") if self.payload else None

    @property
    def resp_type(self) -> str:
        return str(self.payload.get("resp_type", "jsonrpc_response")) if self.payload else "?"

    @property
    def terminal(self) -> bool:
        return self.resp_type in TERMINAL_TYPES

    @property
    def accepted(self) -> bool:
        return self.status == 200 or self.lost_ack

    @property
    def key(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None


@dataclass
class PostRule:
    replies: deque[Reply]
    request_id: str | None
    resp_type: str | None

    def matches(self, record: PostRecord) -> bool:
        return (self.request_id is None or record.request_id == self.request_id) and (
            self.resp_type is None or record.resp_type == self.resp_type
        )


def http_date(unix_time: float) -> str:
    return email.utils.formatdate(unix_time, usegmt=True)


DEADLINE_SLACK_S = 1.0
"""Sanity allowance between a POST started before a deadline and its arrival."""


def exactly_once(cp: ScriptedControlPlane, ids: list[str], deadlines: dict[str, float] | None = None) -> None:
    """Each command taken was answered exactly once (a command with a deadline: at most once, in time)."""
    deadlines = deadlines or {}
    assert cp.violations == []
    assert cp.duplicates() == {}, "a terminal frame was delivered twice"
    for rid in ids:
        terminals = cp.terminals(rid)
        if rid in deadlines:
            handed = cp.commands[rid].handed_at
            assert handed is not None
            assert len(terminals) <= 1
            for frame in terminals:
                assert frame.arrived <= handed + deadlines[rid] + DEADLINE_SLACK_S, "answered after its deadline"
        else:
            assert len(terminals) == 1, f"{rid}: {len(terminals)} terminal frames"


def tunnel_failure(payload: dict[str, Any]) -> dict[str, Any]:
    """The synthesized error of a failed command, checked against the contract."""
    assert payload["resp_type"] == "jsonrpc_response"
    error = payload["resp_json"]["error"]
    assert error["code"] == -32603
    validate_failure(error["data"])
    failure: dict[str, Any] = error["data"]["tunnel_failure"]
    return failure


def payload_text(payload: dict[str, Any]) -> str:
    """The first text content of the `tools/call` result in a terminal payload."""
    return str(payload["resp_json"]["result"]["content"][0]["text"])


async def whoami(cp: ScriptedControlPlane, channel: str | None = None) -> int:
    """The pid of the stdio server behind `channel` (the `whoami` tool of the test servers)."""
    return int(payload_text(await cp.answer(cp.call("whoami", channel=channel))))
