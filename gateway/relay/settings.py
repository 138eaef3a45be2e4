"""The relay's settings as requests read them: one immutable `Settings` per configuration, held by
`LiveSettings` and swapped whole on a reload. Builds no listener, backend or task, and decides nothing
about what may change at run time (that is `gateway.relay.reload`'s).

A request reads `live.current` once and keeps that object to its end, so it sees entirely the old or
entirely the new settings; nothing in a `Settings` is changed after it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.secrets import SecretError, resolve
from gateway.relay.config import RelayConfig, RelayConfigError, parse_listen
from gateway.relay.guard import Credentials, HostGuard, resolve_credentials
from gateway.relay.identity import Identity
from gateway.relay.webconsole import TokenGate, served


@dataclass(frozen=True, slots=True)
class Settings:
    """What one configuration means to a request: the file as parsed, its resolved secrets, the
    Host/Origin allowlists, the identity runtime (with `identity:`) and the console's token gate."""

    config: RelayConfig
    credentials: Credentials
    hosts: HostGuard
    identity: Identity | None
    public: str | None
    """`public_url` without a trailing `/` (None: the checked `Host` is used)."""
    console: TokenGate | None
    """None: the console is not served (listen is not loopback and `ops.token` is not set)."""


def build_settings(
    config: RelayConfig,
    credentials: Credentials | None = None,
    *,
    identity: Identity | None = None,
    source: str = "<relay config>",
) -> Settings:
    """Resolve `config`'s secrets (RelayConfigError names the key, never the value). `identity` is
    the identity runtime to use; without one it is built from `config.identity` (keys not yet fetched)."""
    resolved = resolve_credentials(config, source=source) if credentials is None else credentials
    missing = sorted(set(config.tunnels) - set(resolved))
    if missing:
        raise ValueError(f"no credentials for tunnel {missing[0]!r}")
    if identity is None and config.identity is not None:
        identity = Identity(config.identity, source=source)
    return Settings(
        config=config,
        credentials=resolved,
        hosts=HostGuard(config.allowed_hosts, config.allowed_origins),
        identity=identity,
        public=config.public_url.rstrip("/") if config.public_url else None,
        console=console_gate(config, source=source),
    )


def console_gate(config: RelayConfig, *, source: str = "<relay config>") -> TokenGate | None:
    """The operator console's gate: with `ops.token` it needs the token; without one it is served only
    on a loopback listener (None: not served)."""
    token: str | None = None
    if config.ops.token is not None:
        try:
            token = resolve(config.ops.token).reveal()
        except SecretError as exc:
            raise RelayConfigError(source, "$.ops.token", str(exc)) from None
    if not served(parse_listen(config.listen)[0], token):
        return None
    return TokenGate(token)


class LiveSettings:
    """The relay's current `Settings`: requests read `current`; a reload assigns a new one whole."""

    __slots__ = ("current",)

    def __init__(self, settings: Settings) -> None:
        self.current = settings
