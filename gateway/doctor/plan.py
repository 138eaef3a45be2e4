"""What routing.yaml asks the gateway to reach: destinations with their egress settings, secret references.
Reads the parsed configuration only; opens no socket and resolves no secret.

A destination is somewhere the gateway itself connects to over the network: the control plane,
the workload-identity token endpoint, each HTTP server it does not spawn (and its token endpoint),
each budget's webhook. Each carries the
routing.yaml key of its egress settings, so a check can name the setting to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from gateway.app import Overrides, RemoteControlPlane, remote_control_plane, used_servers
from gateway.config.egress import Egress
from gateway.config.identity import token_endpoint_egress
from gateway.config.references import SecretRef, secret_references
from gateway.config.routing import RoutingConfig
from gateway.protocol.errors import ConfigError
from gateway.upstream.egress import proxy_for

CONTROL_PLANE: Final = "control_plane"
TOKEN_ENDPOINT: Final = "token_endpoint"
EMBEDDED: Final = "embedded relay (no control_plane section): nothing to reach"


@dataclass(frozen=True, slots=True)
class Destination:
    """One place the gateway connects to, and the routing.yaml key of the settings that say how."""

    target: str
    """`control_plane`, `token_endpoint`, `servers.NAME`, `servers.NAME.token_endpoint` or `budgets.NAME.webhook`."""
    key: str
    """Where its egress settings (`proxy`, `ca_bundle`, `url`) live in routing.yaml."""
    url: str
    spec: Egress
    url_key: str | None = None
    """Where its URL is set, when not at `key.url` (a server's token endpoint)."""

    @property
    def url_setting(self) -> str:
        return self.url_key or f"{self.key}.url"

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
        credential = http.service_credential if http is not None else None
        if http is not None and credential is not None:
            kind = "client_credentials" if credential.client_credentials is not None else "token_exchange"
            url_key = f"servers.{name}.http.service_credential.{kind}.token_url"
            token_url = credential.grant.token_url
            found.append(
                Destination(f"servers.{name}.token_endpoint", f"servers.{name}.http", token_url, http, url_key)
            )
    for i, budget in enumerate(config.budgets):
        if budget.webhook is not None:
            found.append(
                Destination(
                    f"budgets.{budget.name}.webhook", f"budgets[{i}].webhook", budget.webhook.url, budget.webhook
                )
            )
    return found


def _secrets(config: RoutingConfig, remote: RemoteControlPlane | None) -> list[SecretRef]:
    """Every `env:`/`file:` reference (`gateway.config.references`), and the control-plane key
    (`env:TUNNEL_API_KEY` when none is named and workload identity is off); `exec:` ones run at use
    and are checked by `credentials`."""
    refs = [found for found in secret_references(config) if found.is_reference]
    if (config.control_plane is None or config.control_plane.api_key is None) and (
        remote is not None and remote.api_key is not None
    ):
        refs.insert(0, SecretRef(f"{CONTROL_PLANE}.api_key", "env:TUNNEL_API_KEY"))
    if config.control_plane is None:  # the embedded relay's client token is the only one that matters
        return refs
    return [found for found in refs if found.key != "relay.client_token"]
