"""What a relay reload (`SIGHUP` to `gateway relay`) may change: a pure comparison of the configuration
the relay started with and the new one, naming each setting that takes effect on restart only.
Builds and swaps nothing itself (`Relay.reload` does); reads no file and resolves no secret.

Applied at run time: which tunnels are served (one added starts with an empty queue; one removed is
refused from then on, and its waiting callers are answered at once), every per-tunnel setting
(`gateway_key`, `client_tokens`, `client_rate`, `client_burst`, `client_token_header`, `user_auth`
while its key sets are the ones the relay fetches, `name`, `description`), `allowed_hosts`,
`allowed_origins`, `public_url`, `response_timeout_s`, `poll_max_wait_ms`, `ops.token` (while the
console stays served) and `identity:` (signing keys, subjects, audiences, lifetimes, rates, trusted
proxies; not the issuers' key sources). Everything else is fixed at start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from gateway.relay.config import IssuerSpec, RelayConfig, RelayOpsSpec, UserAuthSpec, parse_listen
from gateway.relay.webconsole import served

RESTART_ONLY: Final = (
    "listen",
    "backend",
    "queue_max",
    "max_body_bytes",
    "client_seen_grace_s",
    "read_timeout_s",
    "access_log",
    "session_ttl_s",
    "oauth_discovery",
)
"""Top-level keys fixed at start: the listener, the queue backend and what was built from them
(`access_log` chooses which HTTP layer serves; `oauth_discovery` sizes the metadata cache)."""

_KEY_SOURCE: Final = (
    "jwks_url",
    "jwks_file",
    "jwks_ca_file",
    "jwks_token",
    "jwks_proxy",
    "jwks_refresh_s",
    "jwks_cooldown_s",
    "jwks_timeout_s",
)
"""What an `identity.issuers[]` key cache is built from (the relay fetches it from start to stop)."""


def restart_keys(started: RelayConfig, new: RelayConfig) -> list[str]:
    """The keys of `new` that differ from `started` and cannot change while the relay runs; empty when
    `new` can be applied as it is."""
    return list(_restart_keys(started, new))


def rejection(keys: list[str]) -> str:
    """The reason a reload changing `keys` is refused (`listen, backend take effect on restart`)."""
    return f"{', '.join(keys)} {'takes' if len(keys) == 1 else 'take'} effect on restart"


def _restart_keys(started: RelayConfig, new: RelayConfig) -> Iterator[str]:
    for key in RESTART_ONLY:
        if getattr(new, key) != getattr(started, key):
            yield key
    fetched = _user_key_sets(started)  # the key sets are fetched from start to stop
    for tunnel_id, spec in new.tunnels.items():
        if spec.user_auth is not None:
            for key in _user_key_set_change(spec.user_auth, fetched):
                yield f"tunnels.{tunnel_id}.user_auth.{key}"
    if _console_served(new.listen, new.ops) != _console_served(started.listen, started.ops):
        yield "ops.token"  # it turns the console on or off
    yield from _identity_keys(started, new)


def _key_set(spec: UserAuthSpec) -> tuple[float, float]:
    return spec.jwks_cache_s, spec.jwks_refresh_min_s


def _user_key_set_change(spec: UserAuthSpec, fetched: dict[tuple[str, str | None], tuple[float, float]]) -> list[str]:
    """The `user_auth` keys that would need a key set the relay does not fetch: another `jwks_uri` or
    `jwks_proxy`, or another schedule for one it fetches."""
    uri, _ = key_set = spec.key_set()
    schedule = fetched.get(key_set)
    if schedule is None:
        return ["jwks_proxy" if any(known == uri for known, _ in fetched) else "jwks_uri"]
    names = ("jwks_cache_s", "jwks_refresh_min_s")
    return [name for name, old, now in zip(names, schedule, _key_set(spec), strict=True) if old != now]


def _user_key_sets(config: RelayConfig) -> dict[tuple[str, str | None], tuple[float, float]]:
    """`user_auth` key sets the relay fetches: by `jwks_uri` and `jwks_proxy` (`UserAuthSpec.key_set`),
    the first tunnel naming one sets its schedule (as `UserAuth` builds them)."""
    sets: dict[tuple[str, str | None], tuple[float, float]] = {}
    for tunnel in config.tunnels.values():
        if tunnel.user_auth is not None:
            sets.setdefault(tunnel.user_auth.key_set(), _key_set(tunnel.user_auth))
    return sets


def _console_served(listen: str, ops: RelayOpsSpec) -> bool:
    return served(parse_listen(listen)[0], ops.token)


def _identity_keys(started: RelayConfig, new: RelayConfig) -> Iterator[str]:
    before, after = started.identity, new.identity
    if before is None or after is None:
        if (before is None) != (after is None):
            yield "identity"  # the token endpoint and the key caches exist from start to stop
        return
    sources = {issuer.issuer: _source(issuer) for issuer in before.issuers}
    if {issuer.issuer: _source(issuer) for issuer in after.issuers} != sources:
        yield "identity.issuers"


def _source(issuer: IssuerSpec) -> tuple[object, ...]:
    return tuple(getattr(issuer, name) for name in _KEY_SOURCE)
