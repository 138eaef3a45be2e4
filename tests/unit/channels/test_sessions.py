"""gateway.channels.sessions with plain calls: sealed session tokens (key, channel, tampering, rotation), expiry
and renewal, keys from the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from msgspec import Raw

from gateway.channels.sessions import OPENED_KEPT, TOKEN_PREFIX, SessionKeys, SessionStore, UpstreamSession
from gateway.config.routing import SessionsSpec
from gateway.protocol.errors import ConfigError

SECRET = "correct horse battery staple, rotated yearly"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_opens_only_with_its_key_and_channel() -> None:
    keys = SessionKeys([SECRET.encode()], persistent=True)
    store = SessionStore(keys, "main", ttl_s=60)
    token, session = store.issue("2025-06-18", Raw(b'{"elicitation":{}}'), {"h": UpstreamSession("abc", "2025-06-18")})
    assert token.startswith(TOKEN_PREFIX)
    assert SECRET not in token
    assert "abc" not in token  # upstream session ids travel encrypted
    opened = store.open(token)
    assert opened is not None
    assert (opened.id, opened.version, bytes(opened.capabilities)) == (session.id, "2025-06-18", b'{"elicitation":{}}')
    assert opened.upstream == {"h": UpstreamSession("abc", "2025-06-18")}
    # Another replica with the same key opens it; another key or channel does not.
    assert SessionStore(SessionKeys([SECRET.encode()], persistent=True), "main", ttl_s=60).open(token) is not None
    assert (
        SessionStore(SessionKeys([b"another secret entirely!"], persistent=True), "main", ttl_s=60).open(token) is None
    )
    assert SessionStore(keys, "other", ttl_s=60).open(token) is None
    # Tampering is detected.
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (flipped, token + "x", "g1.", "g1.!!!", "", "abc", TOKEN_PREFIX + "A" * 7000):
        assert store.open(bad) is None


def test_a_token_is_decrypted_once_and_still_checked_on_every_use() -> None:
    """Every call of a session carries its token: the first open decrypts it, the next ones find the same
    session without AES-GCM. Expiry, ending and the channel are still checked on each use, the memory is
    bounded and holds no token, and a token that did not open is tried again (never remembered as refused)."""
    clock = Clock()
    keys = SessionKeys([SECRET.encode()], persistent=True)
    store = SessionStore(keys, "main", ttl_s=100, clock=clock)
    token, session = store.issue("2025-11-25", Raw(b"{}"), {})
    first = store.open(token)
    assert first is not None
    assert store.open(token) is first  # the same object: not decoded again
    assert all(token not in key for key in keys._opened)  # remembered by its hash: the token is not kept
    assert SessionStore(keys, "other", ttl_s=100, clock=clock).open(token) is None  # the channel is in the key
    clock.now += 101
    assert store.open(token) is None  # expired, although remembered
    clock.now -= 101
    store.end(session)
    assert store.open(token) is None  # ended, although remembered
    fresh = SessionStore(keys, "main", ttl_s=100, clock=clock)
    tokens = [fresh.issue("2025-11-25", Raw(b"{}"), {})[0] for _ in range(OPENED_KEPT + 1)]
    opened = [keys.open(each, "main") for each in tokens]
    assert all(each is not None for each in opened)
    assert len(keys._opened) <= OPENED_KEPT  # bounded: full, it started over
    assert keys.open(tokens[0], "main") == opened[0]  # forgotten, decrypted again
    assert keys.open(tokens[-1], "main") is opened[-1]
    assert keys.open(token + "x", "main") is None


def test_rotation_keeps_old_tokens_valid() -> None:
    old = SessionStore(SessionKeys([b"the key of last year!!"], persistent=True), "main", ttl_s=60)
    token, _ = old.issue("2025-11-25", Raw(b"{}"), {})
    rotated = SessionKeys([b"the key of this year!!", b"the key of last year!!"], persistent=True)
    assert SessionStore(rotated, "main", ttl_s=60).open(token) is not None
    fresh, _ = SessionStore(rotated, "main", ttl_s=60).issue("2025-11-25", Raw(b"{}"), {})
    assert old.open(fresh) is None


def test_sessions_expire_end_and_renew() -> None:
    clock = Clock()
    store = SessionStore(SessionKeys.random(), "main", ttl_s=100, clock=clock)
    token, session = store.issue("2025-11-25", Raw(b"{}"), {"h": UpstreamSession("one", "2025-11-25")})
    clock.now += 99
    assert store.open(token) is not None
    assert store.upstream(session, "h") == UpstreamSession("one", "2025-11-25")
    store.renew(session, "h", None)  # the server forgot it
    assert store.upstream(session, "h") is None
    store.renew(session, "h", UpstreamSession("two", "2025-11-25"))
    assert store.upstream(session, "h") == UpstreamSession("two", "2025-11-25")
    clock.now += 2
    assert store.open(token) is None  # expired
    token2, session2 = store.issue("2025-11-25", Raw(b"{}"), {})
    store.end(session2)
    assert store.open(token2) is None  # ended


def test_keys_come_from_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SESSION_KEY", SECRET)
    keys = SessionKeys.from_spec(SessionsSpec(key="env:SESSION_KEY"), file="routing.yaml", base=tmp_path)
    assert keys.persistent
    assert not SessionKeys.from_spec(SessionsSpec(), file="routing.yaml", base=tmp_path).persistent
    with pytest.raises(ConfigError) as short:
        SessionKeys.from_spec(SessionsSpec(key="too short"), file="routing.yaml", base=tmp_path)
    assert short.value.key == "sessions.key"
    with pytest.raises(ConfigError) as missing:
        SessionKeys.from_spec(
            SessionsSpec(key=SECRET, previous_keys=["env:NOT_SET_ANYWHERE"]), file="routing.yaml", base=tmp_path
        )
    assert missing.value.key == "sessions.previous_keys[0]"
