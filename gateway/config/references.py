"""Every secret routing.yaml holds, with the key that holds it: the one list that the log redactor,
`gateway doctor` and the environment of server processes read. Resolves nothing, opens nothing.

A secret is an `env:VAR` or `file:/path` reference, or a literal where a secret is expected (an
API key, a client secret, a header whose name says it carries a credential).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from gateway.config.routing import RoutingConfig

_SECRET_NAME: Final = re.compile(
    r"(?i)(token|secret|pass|pwd|api[-_]?key|credential|authorization|cookie|private|^(.*[_-])?keys?$)"
)
_NOT_SECRET: Final = ("_url", "_type", "_header", "_s", "_ms", "limit_key")
"""Name endings the pattern would match that name no secret (`token_url`, `client_token_header`)."""


def secret_name(name: str) -> bool:
    """A header, environment variable or config key whose name says it holds a credential
    (`Authorization`, `X-Api-Key`, `DB_PASSWORD`, `session_key`; not `token_url`)."""
    return _SECRET_NAME.search(name) is not None and not name.lower().endswith(_NOT_SECRET)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """One secret setting: where it is (`key`) and what it says (`ref`: a reference or a literal)."""

    key: str
    ref: str
    secret: bool = True
    """False for a reference to something that is not secret but must resolve (a workload-identity id)."""

    @property
    def is_reference(self) -> bool:
        return self.ref.startswith(("env:", "file:"))

    @property
    def variable(self) -> str | None:
        """The environment variable an `env:` reference reads."""
        return self.ref[4:] if self.ref.startswith("env:") else None


def secret_references(config: RoutingConfig) -> list[SecretRef]:
    """The file's secret settings, in file order (the implicit `env:TUNNEL_API_KEY` is the caller's)."""
    found: list[SecretRef] = []
    cp = config.control_plane
    if cp is not None and cp.api_key is not None:
        found.append(SecretRef("control_plane.api_key", cp.api_key))
    if cp is not None and cp.workload_identity is not None:
        identity = cp.workload_identity
        for name in ("identity_provider_id", "service_account_id"):
            value: str = getattr(identity, name)
            if value.startswith(("env:", "file:")):
                found.append(SecretRef(f"control_plane.workload_identity.{name}", value, secret=False))
        if identity.subject_token is not None and identity.subject_token.startswith(("env:", "file:")):
            found.append(SecretRef("control_plane.workload_identity.subject_token", identity.subject_token))
    if config.relay.client_token is not None:
        found.append(SecretRef("relay.client_token", config.relay.client_token))
    for name, server in config.servers.items():
        if server.stdio is not None:
            found += _named(f"servers.{name}.stdio.env", server.stdio.env)
        if server.http is None:
            continue
        if server.http.spawn is not None:
            found += _named(f"servers.{name}.http.spawn.env", server.http.spawn.env)
        found += _named(f"servers.{name}.http.headers", server.http.headers)
        credential = server.http.service_credential
        grant = credential.grant if credential is not None else None
        if grant is not None and grant.client_secret:
            kind = "client_credentials" if credential and credential.client_credentials else "token_exchange"
            found.append(SecretRef(f"servers.{name}.http.service_credential.{kind}.client_secret", grant.client_secret))
    found += _named("telemetry.headers", config.telemetry.headers)
    if config.ops is not None and config.ops.token is not None:
        found.append(SecretRef("ops.token", config.ops.token))
    if config.sessions.key is not None:
        found.append(SecretRef("sessions.key", config.sessions.key))
    found += [SecretRef(f"sessions.previous_keys[{i}]", key) for i, key in enumerate(config.sessions.previous_keys)]
    for i, budget in enumerate(config.budgets):
        if budget.webhook is not None:
            found += _named(f"budgets[{i}].webhook.headers", budget.webhook.headers)
    return found


def _named(key: str, values: dict[str, str]) -> list[SecretRef]:
    """The secrets of a header or environment map: its references, and literals under a secret's name."""
    return [
        SecretRef(f"{key}.{name}", value)
        for name, value in values.items()
        if value.startswith(("env:", "file:")) or secret_name(name)
    ]
