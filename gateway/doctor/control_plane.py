"""The doctor's control-plane checks: the credential (an API key, or a workload-identity exchange) is
obtained and accepted, and `GET /v1/tunnels/{id}` answers the tunnel's metadata.
Never polls: a poll would take real commands off the tunnel's queue.

Reuses the gateway's own credential objects and client (`ControlPlane.metadata`), so what the doctor
checks is what the gateway sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import aiohttp

from gateway.app import RemoteControlPlane, workload_identity_credential
from gateway.config.egress import Egress
from gateway.doctor.config_checks import secret_mitigation
from gateway.doctor.network_checks import Blocked, embedded
from gateway.doctor.plan import CONTROL_PLANE, TOKEN_ENDPOINT, Plan
from gateway.doctor.report import CheckResult, Clock, fail, ok, skip, timed
from gateway.protocol.errors import ConfigError, ControlPlaneError, CredentialsUnavailable
from gateway.protocol.wire import Codec
from gateway.tunnel.client import METADATA_TIMEOUT_S, ControlPlane, Identity
from gateway.tunnel.credentials import Credential
from gateway.tunnel.workload_identity import EXCHANGE_TIMEOUT_S, WorkloadIdentity
from gateway.upstream.egress import egress

IDENTITY_FIX: Final = (
    "check `control_plane.workload_identity`: the subject token's source, the identity provider and service "
    "account ids, and that the token endpoint trusts this platform's issuer"
)


async def check_control_plane(
    plan: Plan,
    session: aiohttp.ClientSession,
    blocked: Blocked,
    failed_secrets: set[str],
    *,
    learn_secret: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """`credentials` then `tunnel`, from one metadata request; the tokens an exchange reads and obtains are
    told to `learn_secret` (the report's redactor)."""
    if plan.embedded:
        return [embedded("credentials"), embedded("tunnel")]
    remote = plan.remote
    if remote is None or any(key.startswith(CONTROL_PLANE) for key in failed_secrets):
        why = "the control plane's credential does not resolve (see secret)"
        return [skip("credentials", CONTROL_PLANE, why), skip("tunnel", CONTROL_PLANE, why)]
    for target in (CONTROL_PLANE, TOKEN_ENDPOINT) if remote.identity is not None else (CONTROL_PLANE,):
        if target in blocked:
            why = f"{target}: {blocked[target]}"
            return [skip("credentials", CONTROL_PLANE, why), skip("tunnel", CONTROL_PLANE, why)]
    with timed() as clock:
        credential, problem = await _credential(plan, remote, session, learn_secret)
        try:
            if problem is not None:
                return [clock.stamp(problem), skip("tunnel", CONTROL_PLANE, "no credential to ask with")]
            assert credential is not None
            return await _metadata(plan, remote, session, credential, clock)
        finally:
            if isinstance(credential, WorkloadIdentity):
                await credential.close()


async def _credential(
    plan: Plan, remote: RemoteControlPlane, session: aiohttp.ClientSession, learn_secret: Callable[[str], None] | None
) -> tuple[Credential | None, CheckResult | None]:
    """The credential object the gateway would use, with a value in hand (or why there is none)."""
    if remote.identity is None:
        key = remote.api_key
        assert key is not None
        try:
            await key.get()
        except ControlPlaneError as exc:
            ref = plan.config.control_plane.api_key if plan.config.control_plane else None
            fix = secret_mitigation(f"{CONTROL_PLANE}.api_key", ref or "env:TUNNEL_API_KEY")
            return key, fail("credentials", CONTROL_PLANE, str(exc), fix)
        return key, None
    try:
        identity = workload_identity_credential(
            remote, plan.config, session, file=plan.file, base=plan.base, learn_secret=learn_secret
        )
    except ConfigError as exc:
        return None, fail("credentials", CONTROL_PLANE, str(exc), f"correct `{exc.key}`")
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT_S + 5):
            await identity.get()
    except CredentialsUnavailable as exc:
        return identity, fail("credentials", CONTROL_PLANE, exc.reason, IDENTITY_FIX)
    except TimeoutError:
        cause = f"token exchange: no access token within {EXCHANGE_TIMEOUT_S + 5:g}s ({identity.label})"
        return identity, fail("credentials", CONTROL_PLANE, cause, IDENTITY_FIX)
    return identity, None


async def _metadata(
    plan: Plan, remote: RemoteControlPlane, session: aiohttp.ClientSession, credential: Credential, clock: Clock
) -> list[CheckResult]:
    spec = plan.config.control_plane or Egress()
    try:
        route = egress(remote.url, spec, file=plan.file, key=CONTROL_PLANE, base=plan.base)
    except ConfigError:
        why = "its TLS settings are unusable (see tls)"
        return [skip("credentials", CONTROL_PLANE, why), skip("tunnel", CONTROL_PLANE, why)]
    client = ControlPlane(session, remote.url, remote.tunnel_id, credential, Identity.new(None), Codec(), route)
    path = f"GET /v1/tunnels/{remote.tunnel_id}"
    try:
        async with asyncio.timeout(METADATA_TIMEOUT_S):
            metadata = await client.metadata()
    except TimeoutError:
        cause = f"no answer to {path} within {METADATA_TIMEOUT_S:g}s"
        fix = "check `control_plane.url` (the base URL, e.g. https://api.openai.com) and the network path to it"
        return [skip("credentials", CONTROL_PLANE, "not confirmed (see tunnel)"), _tunnel_fail(cause, fix)]
    except CredentialsUnavailable as exc:
        return [
            clock.stamp(fail("credentials", CONTROL_PLANE, exc.reason, IDENTITY_FIX)),
            skip("tunnel", CONTROL_PLANE, "no credential"),
        ]
    except ControlPlaneError as exc:
        return _refusal(remote, credential, exc, path, clock)
    finally:
        client.close()
    accepted = clock.stamp(ok("credentials", CONTROL_PLANE, f"{credential.label} accepted"))
    described = f"{path}: tunnel {metadata.id!r} ({metadata.name})"
    if metadata.id != remote.tunnel_id:
        cause = f"{path} answered the metadata of another tunnel ({metadata.id!r})"
        return [accepted, _tunnel_fail(cause, "check `control_plane.url`: it must be the control plane itself")]
    return [accepted, ok("tunnel", CONTROL_PLANE, described)]


def _tunnel_fail(cause: str, fix: str) -> CheckResult:
    return fail("tunnel", CONTROL_PLANE, cause, fix)


def _refusal(
    remote: RemoteControlPlane, credential: Credential, exc: ControlPlaneError, path: str, clock: Clock
) -> list[CheckResult]:
    status = exc.status
    if status in (401, 403):
        cause = f"the control plane refused {credential.label} for tunnel {remote.tunnel_id!r} (HTTP {status})"
        fix = (
            "check `control_plane.tunnel_id` and the credential: a tunnel's key works for that tunnel only; "
            "issue a new key if this one was revoked or rotated"
        )
        return [
            clock.stamp(fail("credentials", CONTROL_PLANE, cause, fix)),
            skip("tunnel", CONTROL_PLANE, "credentials refused"),
        ]
    unconfirmed = skip("credentials", CONTROL_PLANE, "not confirmed (see tunnel)")
    if status == 404:
        cause = f"the control plane knows no tunnel {remote.tunnel_id!r} ({path}: HTTP 404)"
        return [unconfirmed, _tunnel_fail(cause, "check `control_plane.tunnel_id` and `control_plane.url`")]
    if status is not None:
        fix = "the control plane is failing or rate-limiting: retry shortly; if it persists, check `control_plane.url`"
        return [unconfirmed, _tunnel_fail(f"{path}: {exc}", fix)]
    fix = "check `control_plane.url`: the control plane's base URL (e.g. https://api.openai.com), no path"
    return [unconfirmed, _tunnel_fail(f"{path}: {exc}", fix)]
