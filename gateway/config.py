"""routing.yaml: frozen msgspec Structs, `load()`, and the cross-reference checks.

Owns the shape of the gateway's configuration and every load-time error
(naming the file, the key and what was expected). Builds no runtime objects;
secrets stay references (`env:VAR`, `file:/path`) until provisioning.
Sans-IO apart from reading the one file it is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Struct

from gateway.errors import ConfigError

CHANNEL_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Channel names the control plane accepts: lowercase letters, digits, `-`, `_`."""

T = TypeVar("T")

SERVER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Frozen(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class StdioSpec(_Frozen, frozen=True, kw_only=True):
    """A local program spoken to over its stdin/stdout (spawned without a shell)."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    inherit_env: bool = True


class Egress(_Frozen, frozen=True, kw_only=True):
    """How to reach one destination: proxy, extra trust roots, client certificate (mTLS)."""

    proxy: str | None = None
    """An http(s) proxy URL; `none` for a direct connection; absent: HTTPS_PROXY/HTTP_PROXY/NO_PROXY."""
    ca_bundle: str | None = None
    """PEM file of CA certificates added to the system roots (TLS-inspecting middleboxes)."""
    client_cert: str | None = None
    client_key: str | None = None


class HttpSpec(Egress, frozen=True, kw_only=True):
    """A Streamable HTTP MCP endpoint on the private network."""

    url: str
    headers: dict[str, str] = {}
    """Sent on every request; values may be `env:VAR` or `file:/path` references."""


class ServerSpec(_Frozen, frozen=True, kw_only=True):
    """One upstream MCP server: exactly one of `stdio` or `http`."""

    stdio: StdioSpec | None = None
    http: HttpSpec | None = None
    startup_timeout_s: float = 30.0
    request_timeout_s: float | None = None
    """Upper bound for one call when the command carries no deadline (None: unbounded)."""
    restart_backoff_max_s: float = 30.0

    @property
    def transport(self) -> str:
        return "stdio" if self.stdio is not None else "http"


class ControlPlaneSpec(Egress, frozen=True, kw_only=True):
    """The tunnel control plane to poll (OpenAI's service or a `gateway relay`)."""

    url: str
    tunnel_id: str
    api_key: str | None = None
    """`env:VAR`, `file:/path` (re-read when it changes), `exec:COMMAND` (a short-lived token
    it prints, cached until it expires) or a literal; `env:TUNNEL_API_KEY` when absent."""


class EmbeddedRelaySpec(_Frozen, frozen=True, kw_only=True):
    """The relay started in-process when `control_plane` is omitted."""

    listen: str = "127.0.0.1:8780"
    tunnel_id: str = "tunnel_local"
    client_token: str | None = None
    """Bearer token MCP clients must present; None leaves the loopback endpoint open."""


class GatewaySpec(_Frozen, frozen=True, kw_only=True):
    """The poll channel and the dispatcher."""

    max_inflight: int = 64
    poll_timeout_ms: int = 25_000
    drain_timeout_s: float = 20.0
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest upstream message accepted (a stdio line, an HTTP body)."""


class RoutingConfig(_Frozen, frozen=True, kw_only=True):
    control_plane: ControlPlaneSpec | None = None
    relay: EmbeddedRelaySpec = EmbeddedRelaySpec()
    gateway: GatewaySpec = GatewaySpec()
    servers: dict[str, ServerSpec]
    channels: dict[str, list[str]]


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def parse(data: bytes, file: str) -> RoutingConfig:
    """Decode and check a routing document; raise ConfigError naming file and key."""
    try:
        document = msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(file, "(document)", f"valid YAML ({exc})") from None
    if isinstance(document, dict):
        # Convert named entries one by one so an error names the entry, not `[...]`.
        for section, kind in (("servers", ServerSpec), ("channels", list[str])):
            entries = document.get(section)
            if isinstance(entries, dict):
                for name, entry in entries.items():
                    _convert(entry, kind, file, f"{section}.{name}")
    config = _convert(document, RoutingConfig, file, "")
    check(config, file)
    return config


def _convert(value: object, kind: type[T], file: str, prefix: str) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        assert match is not None
        path = (match["path"] or "").lstrip(".")
        key = ".".join(part for part in (prefix, path) if part) or "(top level)"
        message = match["msg"]
        expected = message[:1].lower() + message[1:] if message.startswith("Expected") else message
        raise ConfigError(file, key, expected.removeprefix("expected ")) from None


def load(path: str | Path) -> RoutingConfig:
    """Read and check routing.yaml."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(file, "(file)", f"a readable file ({exc.strerror})") from None
    return parse(data, file)


def check(config: RoutingConfig, file: str) -> None:
    """Cross-reference and value checks msgspec's types cannot express."""
    for name, server in config.servers.items():
        key = f"servers.{name}"
        if not SERVER_NAME.fullmatch(name):
            raise ConfigError(file, key, "a server name of letters, digits, '.', '-' or '_'")
        if (server.stdio is None) == (server.http is None):
            raise ConfigError(file, key, "exactly one of `stdio` or `http`")
        if server.stdio is not None and not server.stdio.command:
            raise ConfigError(file, f"{key}.stdio.command", "a non-empty program name")
        if server.http is not None:
            _check_url(server.http.url, file, f"{key}.http.url")
            _check_egress(server.http, file, f"{key}.http")
        if server.startup_timeout_s <= 0:
            raise ConfigError(file, f"{key}.startup_timeout_s", "a positive number of seconds")
    if not config.channels:
        raise ConfigError(file, "channels", "at least one channel")
    for channel, members in config.channels.items():
        key = f"channels.{channel}"
        if not CHANNEL_NAME.fullmatch(channel):
            raise ConfigError(file, key, "a channel name of lowercase letters, digits, '-' or '_'")
        if len(members) != 1:
            raise ConfigError(file, key, "exactly one server name (aggregated channels are not supported yet)")
        for member in members:
            if member not in config.servers:
                known = ", ".join(sorted(config.servers)) or "none"
                raise ConfigError(file, key, f"a server defined under `servers` (got {member!r}; known: {known})")
    if config.control_plane is not None:
        _check_url(config.control_plane.url, file, "control_plane.url")
        _check_egress(config.control_plane, file, "control_plane")
        if not config.control_plane.tunnel_id:
            raise ConfigError(file, "control_plane.tunnel_id", "a non-empty tunnel id")
    _check_listen(config.relay.listen, file, "relay.listen")
    gw = config.gateway
    if gw.max_inflight < 1:
        raise ConfigError(file, "gateway.max_inflight", "an integer of at least 1")
    if gw.poll_timeout_ms < 1:
        raise ConfigError(file, "gateway.poll_timeout_ms", "an integer of at least 1")
    if gw.max_message_bytes < 1024:
        raise ConfigError(file, "gateway.max_message_bytes", "at least 1024 bytes")


def _check_url(url: str, file: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(file, key, f"an absolute http(s) URL (got {url!r})")


def _check_egress(spec: Egress, file: str, key: str) -> None:
    if spec.proxy is not None and spec.proxy != "none":
        _check_url(spec.proxy, file, f"{key}.proxy")
    if spec.client_key is not None and spec.client_cert is None:
        raise ConfigError(file, f"{key}.client_cert", "a certificate to go with `client_key`")


def _check_listen(listen: str, file: str, key: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(file, key, f"HOST:PORT (got {listen!r})")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
