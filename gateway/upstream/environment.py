"""The environment a server process the gateway starts is given: the gateway's minus its own credentials.
It never hands a child the control-plane key or the workload-identity settings the gateway itself uses.

A stdio server (or a spawned HTTP server) is somebody else's program: with `inherit_env` it gets the
gateway's environment, except the variables that hold or locate the gateway's own control-plane
credentials. A server's configured `env:` entries are set as given, even one of those names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

GATEWAY_CREDENTIAL_VARIABLES: Final = frozenset(
    {"TUNNEL_API_KEY", "OPENAI_IDENTITY_PROVIDER_ID", "OPENAI_SERVICE_ACCOUNT_ID", "OPENAI_IDENTITY_TOKEN_FILE"}
)
"""The gateway's own: the control-plane API key, and the variables that turn on workload identity."""


def child_environment(
    inherit: bool, configured: Mapping[str, str], parent: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment for a server process: `parent`'s (when `inherit`) without the gateway's
    credential variables, then the server's `configured` ones."""
    env = {k: v for k, v in parent.items() if k not in GATEWAY_CREDENTIAL_VARIABLES} if inherit else {}
    env.update(configured)
    return env


def spawn_environment(
    inherit: bool, configured: Mapping[str, str], parent: Mapping[str, str] = os.environ
) -> dict[str, str] | None:
    """`child_environment`, or None when that is exactly `parent` (the child then inherits the gateway's
    environment as it is: no copy kept for the life of each process)."""
    if inherit and not configured and GATEWAY_CREDENTIAL_VARIABLES.isdisjoint(parent):
        return None
    return child_environment(inherit, configured, parent)
