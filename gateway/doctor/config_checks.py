"""The doctor's file checks: routing.yaml parses (else exit 2), and every secret reference resolves.
Reads files and the environment only; never shows a secret's value, only how it is referenced.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import routing as config_module
from gateway.config import secrets
from gateway.config.references import SecretRef
from gateway.config.routing import RoutingConfig
from gateway.doctor.plan import CONTROL_PLANE, Plan
from gateway.doctor.report import CheckResult, fail, ok, skip, timed
from gateway.protocol.errors import ConfigError


def check_config(routes_file: Path) -> tuple[RoutingConfig | None, CheckResult]:
    """The parsed file and the `config` check; None when it does not parse (the run ends there,
    with exit status 2)."""
    with timed() as clock:
        try:
            config = config_module.load(routes_file)
        except ConfigError as exc:
            fix = f"correct `{exc.key}` in {exc.file} (`gateway check --routes {exc.file}` checks the file alone)"
            if exc.key == "(file)":
                fix = "pass the routing file with --routes FILE (default: routing.yaml in the working directory)"
            return None, clock.stamp(fail("config", str(routes_file), str(exc), fix))
        where = "embedded relay" if config.control_plane is None else f"control plane {config.control_plane.url}"
        detail = f"{len(config.servers)} servers, {len(config.channels)} channels, {where}"
        return config, clock.stamp(ok("config", str(routes_file), detail))


def secret_mitigation(key: str, ref: str) -> str:
    """What to do about a reference that does not resolve."""
    if ref.startswith("env:"):
        name = ref[4:]
        return f"set {name} in the gateway's environment (systemd: Environment= or a credential), or change `{key}`"
    if ref.startswith("file:"):
        return f"create the file, readable by the gateway's user, or correct the path in `{key}`"
    return f"correct `{key}`"


def check_secret(plan: Plan, secret: SecretRef) -> CheckResult:
    """One reference: resolved now as provisioning would (relative paths against the file's folder)."""
    with timed() as clock:
        if secret.ref.startswith("exec:"):
            return clock.stamp(skip("secret", secret.key, "an exec: command runs at use (see credentials)"))
        try:
            resolved = secrets.resolve(secret.ref, base=plan.base)
        except secrets.SecretError as exc:
            cause = str(ConfigError(plan.file, secret.key, f"a resolvable secret ({exc})"))
            return clock.stamp(fail("secret", secret.key, cause, secret_mitigation(secret.key, secret.ref)))
        return clock.stamp(ok("secret", secret.key, f"{resolved.source} resolves"))


def check_secrets(plan: Plan) -> list[CheckResult]:
    """Every reference the file holds, and the control plane's settings as provisioning reads them
    (a missing key or workload-identity variable)."""
    results: list[CheckResult] = []
    error = plan.remote_error
    if error is not None:
        ref = "env:TUNNEL_API_KEY" if error.key == f"{CONTROL_PLANE}.api_key" else ""
        if error.key.startswith(f"{CONTROL_PLANE}.workload_identity."):
            field = error.key.rsplit(".", 1)[1]
            spec = plan.config.control_plane.workload_identity if plan.config.control_plane else None
            ref = str(getattr(spec, field, "")) if spec is not None else ""
        fix = secret_mitigation(error.key, ref) if ref else f"correct `{error.key}` (or the environment it names)"
        results.append(fail("secret", error.key, str(error), fix))
    for secret in plan.secrets:
        if error is not None and secret.key == error.key:
            continue
        results.append(check_secret(plan, secret))
    if not results:
        results.append(skip("secret", "(none)", "the file names no secret references"))
    return results
