"""The environment a server process the gateway starts is given: the gateway's minus its own credentials.
It never hands a child the control-plane key or the workload-identity settings the gateway itself uses.

A stdio server (or a spawned HTTP server) is somebody else's program: with `inherit_env` it gets the
gateway's environment, except the variables that hold or locate the gateway's own control-plane
credentials and every variable routing.yaml reads a secret from. A server's configured `env:`
entries are set as given (an `env:`/`file:` reference resolved), even one of those names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gateway.config import secrets
from gateway.config.references import secret_references
from gateway.config.routing import ProgramSpec, RoutingConfig
from gateway.protocol.errors import ConfigError

GATEWAY_CREDENTIAL_VARIABLES: Final = frozenset(
    {"TUNNEL_API_KEY", "OPENAI_IDENTITY_PROVIDER_ID", "OPENAI_SERVICE_ACCOUNT_ID", "OPENAI_IDENTITY_TOKEN_FILE"}
)
"""The gateway's own: the control-plane API key, and the variables that turn on workload identity."""


@dataclass(frozen=True, slots=True)
class ChildEnvironment:
    """What one program is started with: the gateway's environment (when `inherit`) without the
    `withheld` variables, then its `configured` entries (references already resolved)."""

    inherit: bool = True
    configured: Mapping[str, str] = field(default_factory=dict)
    withheld: frozenset[str] = GATEWAY_CREDENTIAL_VARIABLES

    @classmethod
    def of(cls, spec: ProgramSpec) -> ChildEnvironment:
        """A program's environment as its spec alone says (entries taken literally)."""
        return cls(spec.inherit_env, dict(spec.env))

    @classmethod
    def for_program(
        cls, spec: ProgramSpec, config: RoutingConfig, *, file: str, key: str, base: Path
    ) -> ChildEnvironment:
        """The environment of a program routing.yaml starts: every variable the file reads a secret
        from is withheld too, and `env:` entries that are `env:`/`file:` references are resolved now
        (ConfigError naming `key.env.NAME` when one does not resolve), so a server is handed a
        secret only when its own entry names it."""
        read = {found.variable for found in secret_references(config) if found.variable is not None}
        configured = {}
        for name, value in spec.env.items():
            if value.startswith(("env:", "file:")):
                try:
                    value = secrets.resolve(value, base=base).reveal()
                except secrets.SecretError as exc:
                    raise ConfigError(file, f"{key}.env.{name}", f"a resolvable secret reference ({exc})") from None
            configured[name] = value
        return cls(spec.inherit_env, configured, GATEWAY_CREDENTIAL_VARIABLES | read)

    def build(self, parent: Mapping[str, str] = os.environ) -> dict[str, str]:
        env = {k: v for k, v in parent.items() if k not in self.withheld} if self.inherit else {}
        env.update(self.configured)
        return env

    def for_spawn(self, parent: Mapping[str, str] = os.environ) -> dict[str, str] | None:
        """`build()`, or None when that is exactly `parent` (the child then inherits the gateway's
        environment as it is: no copy kept for the life of each process)."""
        if self.inherit and not self.configured and self.withheld.isdisjoint(parent):
            return None
        return self.build(parent)
