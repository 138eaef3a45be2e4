"""The MCP facts every layer shares: a peer's era, what a server said about itself, one call's message
and frames between channel and transport, server-tagged request ids. Plain data with no behaviour;
sans-IO, importing nothing of ours but the wire types.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.protocol.wire import Codec, Headers


class Era(enum.Enum):
    """The MCP generation a peer speaks."""

    LEGACY = "legacy"
    """Handshake era: `initialize`, sessions (2024-11-05 … 2025-11-25)."""
    MODERN = "modern"
    """Stateless era: per-request `_meta` envelope, `server/discover` (2026-07-28)."""


@dataclass(frozen=True, slots=True)
class UpstreamInfo:
    """What the server said about itself when the gateway connected to it."""

    era: Era
    protocol_version: str
    capabilities: Raw
    server_info: Raw
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC message for the server, taken apart so a transport can re-id it.

    `id` is None for notifications. `params` is relayed as raw bytes.
    `headers` are the ones the transport should send (HTTP only); the channel
    layer has already decided them. `own_session` asks an HTTP transport to use
    the session the gateway holds with the server instead of the client's.
    """

    method: str
    id: Raw | None
    params: Raw | UnsetType = UNSET
    headers: Headers = field(default_factory=dict)
    own_session: bool = True


@dataclass(frozen=True, slots=True)
class Notify:
    """A server message sent while the call runs (progress, logging …): one JSON-RPC message."""

    message: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """The terminal answer: a JSON-RPC response body (empty for acks) and its HTTP framing."""

    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=dict)


Frame = Notify | Reply


def tag_id(codec: Codec, tag: str, id: Raw) -> Raw:
    """A JSON-RPC id that also says which upstream a request came from (`tag` has no `~`)."""
    return Raw(codec.encode(f"{tag}~{bytes(id).decode()}"))


def untag_id(id: Raw) -> tuple[str, Raw] | None:
    """The tag and original id of a tagged id, or None when it is not one of ours."""
    try:
        value = msgspec.json.decode(id)
    except msgspec.DecodeError:
        return None
    if not isinstance(value, str):
        return None
    tag, sep, original = value.partition("~")
    if not sep or not original:
        return None
    try:
        msgspec.json.decode(original)
    except msgspec.DecodeError:
        return None
    return tag, Raw(original.encode())


async def abandon(frames: AsyncIterator[object]) -> None:
    """Close a call's frames before its Reply: the transport abandons (cancels) the call.
    A no-op on frames that already ended."""
    close = getattr(frames, "aclose", None)
    if close is not None:
        await close()
