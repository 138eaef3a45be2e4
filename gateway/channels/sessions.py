"""Client sessions the gateway issues: sealed `Mcp-Session-Id` tokens and what they carry.
Keeps in process only what a token cannot carry; does no transport I/O itself (it calls through an `Upstream`).

Owns the session a handshake-era client holds with a channel whose
`initialize` the gateway answers (aggregated, or in front of a stdio or
2026-07-28 server): its negotiated version and capabilities, and the sessions
the gateway opened for it on handshake-era HTTP servers. All of it travels inside the client's
`Mcp-Session-Id`, encrypted and authenticated with AES-GCM under a key from
routing.yaml, so a restarted gateway or another replica polling the same
tunnel can resume the session. Kept in process: ended sessions, and upstream
sessions renewed after the token was issued.
`open_upstream_session` runs the handshake that opens one such upstream session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from msgspec import Raw, Struct

from gateway.config import secrets as secret_refs
from gateway.config.routing import SessionsSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import ConfigError, UpstreamProtocolError

# Re-exported (`X as X`) for channel.py and aggregate.py, which import them from here until they import
# gateway.protocol.headers themselves.
from gateway.protocol.headers import SESSION_HEADER, VERSION_HEADER
from gateway.protocol.mcp import Call, Reply
from gateway.protocol.wire import Headers, JsonDecoder, header_value
from gateway.upstream.base import Upstream

INIT_ID: Final = Raw(b'"gw-client-init"')
TOKEN_PREFIX: Final = "g1."
MIN_SECRET_CHARS: Final = 16
_NONCE_BYTES: Final = 12
_KDF_INFO: Final = b"mcp-tunnel-gateway client sessions v1"
OPENED_KEPT: Final = 4096
"""Tokens a key set remembers having opened (every call of a session carries the same token), by their
SHA-256 (the token itself is not kept past its request); then it starts over. Expiry and ending are
checked on every use by `SessionStore.open`, not remembered."""
_AAD: Final = b"mcp-tunnel-gateway session v1|"
MAX_TOKEN_CHARS: Final = 6000
"""Tokens longer than this are refused unread (a header field must stay well under 8 KiB)."""


class UpstreamSession(Struct, array_like=True, frozen=True):
    """A session the gateway holds with one handshake-era server on a client's behalf."""

    id: str
    version: str


class ClientSession(Struct, array_like=True, frozen=True):
    """What a client's `Mcp-Session-Id` carries (sealed)."""

    id: str
    """Random; names the session in this process (per-client processes, ended sessions)."""
    channel: str
    issued: int
    """Unix time of issue; a session older than `ttl_s` is expired."""
    version: str
    """The protocol version negotiated with the client."""
    capabilities: Raw
    """The client's capabilities from its `initialize` (a handshake-era request carries none)."""
    upstream: dict[str, UpstreamSession] = {}


def new_session(channel: str, version: str, capabilities: Raw, now: float) -> ClientSession:
    return ClientSession(secrets.token_urlsafe(12), channel, int(now), version, Raw(bytes(capabilities)))


class SessionKeys:
    """AES-GCM keys: the first seals, every one opens (rotation)."""

    def __init__(self, secrets_: Sequence[bytes], *, persistent: bool) -> None:
        if not secrets_:
            raise ValueError("at least one key")
        self._aeads = [AESGCM(_derive(secret)) for secret in secrets_]
        self.persistent = persistent
        """False when the key is random to this process (sessions end with it)."""
        self._encoder = msgspec.json.Encoder()
        self._decoder = JsonDecoder(ClientSession)
        self._opened: dict[tuple[bytes, str], ClientSession] = {}
        """(SHA-256 of the token, channel) -> the session it carries: what one AES-GCM open proved."""

    @classmethod
    def random(cls) -> SessionKeys:
        return cls([os.urandom(32)], persistent=False)

    @classmethod
    def from_spec(cls, spec: SessionsSpec, *, file: str, base: Path | None) -> SessionKeys:
        """The configured keys (`env:`, `file:` or literal), or a random one when none is configured."""
        if spec.key is None:
            return cls.random()
        found: list[bytes] = []
        for index, ref in enumerate([spec.key, *spec.previous_keys]):
            key = "sessions.key" if index == 0 else f"sessions.previous_keys[{index - 1}]"
            try:
                value = secret_refs.resolve(ref, base=base).reveal()
            except secret_refs.SecretError as exc:
                raise ConfigError(file, key, f"a resolvable secret ({exc})") from None
            if len(value) < MIN_SECRET_CHARS:
                raise ConfigError(file, key, f"a secret of at least {MIN_SECRET_CHARS} characters")
            found.append(value.encode())
        return cls(found, persistent=True)

    def seal(self, session: ClientSession) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[0].encrypt(nonce, self._encoder.encode(session), _AAD + session.channel.encode())
        return TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str, channel: str) -> ClientSession | None:
        """The session a token carries, or None when it is not one of ours for this channel. A token opened
        before is not decrypted again: the same string under the same keys opens to the same session."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        key = (hashlib.sha256(token.encode()).digest(), channel)
        session = self._opened.get(key)
        if session is None:
            session = self._open(token, channel)
            if session is not None:
                if len(self._opened) >= OPENED_KEPT:
                    self._opened.clear()
                self._opened[key] = session
        return session

    def _open(self, token: str, channel: str) -> ClientSession | None:
        """`open` for a token not opened before (prefix and length already checked): AES-GCM decides."""
        body = token[len(TOKEN_PREFIX) :]
        try:
            data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        nonce, sealed = data[:_NONCE_BYTES], data[_NONCE_BYTES:]
        if len(nonce) != _NONCE_BYTES or not sealed:
            return None
        for aead in self._aeads:
            try:
                plain = aead.decrypt(nonce, sealed, _AAD + channel.encode())
            except InvalidTag:
                continue
            try:
                session = self._decoder.decode(plain)
            except msgspec.MsgspecError:
                return None
            return session if session.channel == channel else None
        return None


def _derive(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(secret)


class SessionStore:
    """Sessions of one channel: sealing, opening (expiry, ended sessions), renewed upstream sessions.

    Bounded: the oldest entries of the in-process maps are forgotten first. A
    forgotten ended session could be resumed until it expires; a forgotten
    renewal is renewed again on the next call.
    """

    def __init__(
        self,
        keys: SessionKeys,
        channel: str,
        *,
        ttl_s: float,
        limit: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.channel = channel
        self.ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._renewed: OrderedDict[str, dict[str, UpstreamSession]] = OrderedDict()

    def issue(self, version: str, capabilities: Raw, upstream: dict[str, UpstreamSession]) -> tuple[str, ClientSession]:
        session = new_session(self.channel, version, capabilities, self._clock())
        if upstream:
            session = msgspec.structs.replace(session, upstream=dict(upstream))
        return self.keys.seal(session), session

    def open(self, token: str) -> ClientSession | None:
        """The live session a client's token names, or None (unknown, expired or ended: answer 404)."""
        session = self.keys.open(token, self.channel)
        if session is None or session.id in self._ended:
            return None
        if self._clock() - session.issued > self.ttl_s:
            return None
        return session

    def upstream(self, session: ClientSession, server: str) -> UpstreamSession | None:
        """The session held on `server` for this client: a renewal first, else the one in the token."""
        renewed = self._renewed.get(session.id)
        if renewed is not None and server in renewed:
            found = renewed[server]
            return found if found.id else None
        return session.upstream.get(server)

    def renew(self, session: ClientSession, server: str, upstream: UpstreamSession | None) -> None:
        """Remember a re-initialized (or dropped, with None) upstream session the token cannot carry."""
        renewed = self._renewed.setdefault(session.id, {})
        renewed[server] = upstream if upstream is not None else UpstreamSession("", "")  # "": the token's is gone
        self._renewed.move_to_end(session.id)
        while len(self._renewed) > self._limit:
            self._renewed.popitem(last=False)

    def end(self, session: ClientSession) -> None:
        self._ended[session.id] = self._clock()
        self._renewed.pop(session.id, None)
        while len(self._ended) > self._limit:
            self._ended.popitem(last=False)


def session_headers(held: UpstreamSession) -> Headers:
    """The headers that put a request in an upstream session."""
    return {SESSION_HEADER: [held.id], VERSION_HEADER: [held.version]}


async def open_upstream_session(
    upstream: Upstream, bridge: Bridge, version: str, capabilities: Raw
) -> UpstreamSession | None:
    """The handshake with a handshake-era HTTP server on a client's behalf (its version and
    capabilities, the gateway's identity); None when the server issues no sessions."""
    params = Raw(
        bridge.codec.encode(
            {"protocolVersion": version, "capabilities": capabilities, "clientInfo": bridge.client_info}
        )
    )
    reply = await _reply(upstream, Call("initialize", INIT_ID, params, {}, own_session=False))
    answer = bridge.codec.message(reply.body)
    session_id = header_value(reply.headers, SESSION_HEADER)
    if answer.result is msgspec.UNSET:
        raise UpstreamProtocolError(upstream.name, "invalid_protocol_response")
    agreed = bridge.codec.members(answer.result).get("protocolVersion")
    if session_id is None or agreed is None:
        return None  # a server without sessions: calls use the gateway's own
    held = UpstreamSession(session_id, msgspec.json.decode(agreed, type=str))
    await _reply(upstream, Call("notifications/initialized", None, msgspec.UNSET, session_headers(held), False))
    return held


async def _reply(upstream: Upstream, call: Call) -> Reply:
    frames = upstream.exchange(call)
    try:
        async for frame in frames:
            if isinstance(frame, Reply):
                return frame
    finally:
        close = getattr(frames, "aclose", None)
        if close is not None:
            await close()
    raise UpstreamProtocolError(upstream.name, "response_body_missing")
