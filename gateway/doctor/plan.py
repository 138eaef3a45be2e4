"""What routing.yaml asks the gateway to reach: destinations with their egress settings, secret references.
Reads the parsed configuration only; opens no socket and resolves no secret.

A destination is somewhere the gateway itself connects to over the network: the control plane,
the workload-identity token endpoint, each HTTP server it does not spawn. Each carries the
routing.yaml key of its egress settings, so a check can name the setting to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from gateway.app import Overrides, RemoteControlPlane, remote_control_plane, used_servers
from gateway.config.routing import Egress, RoutingConfig, token_endpoint_egress
from gateway.protocol.errors import ConfigError
from gateway.upstream.egress import proxy_for

CONTROL_PLANE: Final = "control_plane"
TOKEN_ENDPOINT: Final = "token_endpoint"
EMBEDDED: Final = "embedded relay (no control_plane section): nothing to reach"


@dataclass(frozen=True, slots=True)
class Destination:
    """One place the gateway connects to, and the routing.yaml key of the settings that say how."""

    target: str
    """`control_plane`, `token_endpoint` or `servers.NAME`."""
    key: str
    """Where its egress settings (`proxy`, `ca_bundle`, `url`) live in routing.yaml."""
    url: str
    spec: Egress

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def proxy(self) -> str | None:
        """The proxy in effect: the explicit setting, else the environment's (NO_PROXY honoured)."""
        return proxy_for(self.url, self.spec)

    @property
    def proxy_setting(self) -> str:
        """Where that proxy is configured, for a mitigation to name."""
        if self.spec.proxy is not None:
            return f"`{self.key}.proxy`"
        return "HTTPS_PROXY" if self.tls else "HTTP_PROXY"


@dataclass(frozen=True, slots=True)
class SecretRef:
    key: str
    """The routing.yaml key that holds the reference."""
    ref: str


@dataclass(slots=True)
class Plan:
    """The parsed file and what follows from it."""

    config: RoutingConfig
    routes_file: Path
    remote: RemoteControlPlane | None
    """None with the embedded relay, or when the control plane's settings are unusable (`remote_error`)."""
    remote_error: ConfigError | None
    destinations: list[Destination] = field(default_factory=list)
    secrets: list[SecretRef] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        return self.config.control_plane is None

    @property
    def file(self) -> str:
        return str(self.routes_file)

    @property
    def base(self) -> Path:
        return self.routes_file.parent

    def servers(self) -> list[str]:
        """The servers the gateway would start, in routing.yaml's order."""
        used = used_servers(self.config)
        return [name for name in self.config.servers if name in used]

    def destination(self, target: str) -> Destination | None:
        return next((d for d in self.destinations if d.target == target), None)


def make_plan(config: RoutingConfig, routes_file: Path) -> Plan:
    remote: RemoteControlPlane | None = None
    error: ConfigError | None = None
    if config.control_plane is not None:
        try:
            remote = remote_control_plane(config, Overrides(), routes_file)
        except ConfigError as exc:
            error = exc
    plan = Plan(config, routes_file, remote, error)
    plan.destinations = _destinations(plan)
    plan.secrets = _secrets(config, remote)
    return plan


def _destinations(plan: Plan) -> list[Destination]:
    config, found = plan.config, []
    if config.control_plane is not None:
        found.append(Destination(CONTROL_PLANE, CONTROL_PLANE, config.control_plane.url, config.control_plane))
        identity = plan.remote.identity if plan.remote is not None else config.control_plane.workload_identity
        if identity is not None:
            key = f"{CONTROL_PLANE}.workload_identity"
            found.append(
                Destination(
                    TOKEN_ENDPOINT, key, identity.token_url, token_endpoint_egress(config.control_plane, identity)
                )
            )
    for name in plan.servers():
        http = config.servers[name].http
        if http is not None and http.spawn is None:
            found.append(Destination(f"servers.{name}", f"servers.{name}.http", http.url, http))
    return found


def _is_ref(value: str) -> bool:
    return value.startswith(("env:", "file:"))


def _secrets(config: RoutingConfig, remote: RemoteControlPlane | None) -> list[SecretRef]:
    """Every `env:`/`file:` reference, and the control-plane key (`env:TUNNEL_API_KEY` when none is
    named and workload identity is off); `exec:` ones run at use and are checked by `credentials`."""
    refs: list[SecretRef] = []
    cp = config.control_plane
    if cp is not None and cp.api_key is not None:
        refs.append(SecretRef(f"{CONTROL_PLANE}.api_key", cp.api_key))
    elif remote is not None and remote.api_key is not None:
        refs.append(SecretRef(f"{CONTROL_PLANE}.api_key", "env:TUNNEL_API_KEY"))
    if cp is not None and cp.workload_identity is not None:
        identity = cp.workload_identity
        for name in ("identity_provider_id", "service_account_id", "subject_token"):
            value = getattr(identity, name)
            if isinstance(value, str) and _is_ref(value):
                refs.append(SecretRef(f"{CONTROL_PLANE}.workload_identity.{name}", value))
    if cp is None and config.relay.client_token is not None:
        refs.append(SecretRef("relay.client_token", config.relay.client_token))
    for name, server in config.servers.items():
        if server.http is not None:
            for header, value in server.http.headers.items():
                if _is_ref(value):
                    refs.append(SecretRef(f"servers.{name}.http.headers.{header}", value))
    for header, value in config.telemetry.headers.items():
        if _is_ref(value):
            refs.append(SecretRef(f"telemetry.headers.{header}", value))
    if config.sessions.key is not None:
        refs.append(SecretRef("sessions.key", config.sessions.key))
    for i, key in enumerate(config.sessions.previous_keys):
        refs.append(SecretRef(f"sessions.previous_keys[{i}]", key))
    return refs
