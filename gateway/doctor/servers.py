"""The doctor's server checks: each server routing.yaml uses is started as the gateway starts it
(`gateway.app.build_upstream`: stdio processes, spawned HTTP servers, remote HTTP endpoints), its
era and tool count read, the time taken measured, and then it is stopped. No process outlives a check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from gateway.app import build_upstream
from gateway.channels.catalog import Catalog, Member
from gateway.config.routing import ChannelSpec, ServerSpec
from gateway.doctor.network_checks import Blocked
from gateway.doctor.plan import Plan
from gateway.doctor.report import CheckResult, fail, ok, skip, timed
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import ConfigError, ServiceCredentialRefused, UpstreamError, UpstreamHttpError
from gateway.upstream.base import Upstream


async def check_servers(
    plan: Plan,
    session: aiohttp.ClientSession,
    bridge: Bridge,
    blocked: Blocked,
    failed_secrets: set[str],
    *,
    learn_secret: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Every server at once (each measured alone), in routing.yaml's order; each token a service credential
    obtains is told to `learn_secret` (the report's redactor)."""
    checks = [_check(plan, name, session, bridge, blocked, failed_secrets, learn_secret) for name in plan.servers()]
    return list(await asyncio.gather(*checks))


async def _check(
    plan: Plan,
    name: str,
    session: aiohttp.ClientSession,
    bridge: Bridge,
    blocked: Blocked,
    failed_secrets: set[str],
    learn_secret: Callable[[str], None] | None,
) -> CheckResult:
    target = f"servers.{name}"
    if target in blocked:
        return skip("server", target, blocked[target])
    if any(key.startswith(f"{target}.") for key in failed_secrets):
        return skip("server", target, "a secret it needs does not resolve (see secret)")
    spec = plan.config.servers[name]
    with timed() as clock:
        try:
            upstream = build_upstream(
                name,
                spec,
                bridge=bridge,
                http=session,
                config=plan.config,
                file=plan.file,
                base=plan.base,
                learn_secret=learn_secret,
            )
        except ConfigError as exc:
            return clock.stamp(fail("server", target, str(exc), f"correct `{exc.key}`"))
        try:
            return clock.stamp(await _handshake(name, spec, upstream, bridge))
        finally:
            await upstream.close()


async def _handshake(name: str, spec: ServerSpec, upstream: Upstream, bridge: Bridge) -> CheckResult:
    target = f"servers.{name}"
    with contextlib.suppress(UpstreamError):
        await upstream.start()
    if upstream.needs_authorization:
        credential = spec.http.service_credential if spec.http is not None else None
        if credential is None:
            return ok("server", target, "up; requires each client's authorization (HTTP 401): its tools are not listed")
        if credential.client_credentials is None:
            detail = "up, wants each user's token: the gateway exchanges it at the first call (token_exchange)"
            return ok("server", target, detail)
        refused = await _with_service_token(name, upstream)
        if refused is not None:
            return refused
    info = upstream.info
    if info is None:
        problem = upstream.problem or "did not come up"
        return fail("server", target, f"{target}: {problem}", _advice(name, spec, problem))
    tools = await _tool_count(name, upstream, bridge)
    era = f"{info.era.value} era ({info.protocol_version})"
    if tools is None:
        cause = f"{target} is up ({era}) but its tools/list failed"
        fix = f"read the server's logs: it answered the handshake but not tools/list (`{target}`)"
        return fail("server", target, cause, fix)
    return ok("server", target, f"{era}, {tools} tools")


async def _with_service_token(name: str, upstream: Upstream) -> CheckResult | None:
    """The handshake again with the gateway's client-credentials token (obtained now, as the first
    call would); the failure when the token endpoint or the server refuses."""
    target = f"servers.{name}"
    key = f"{target}.http.service_credential.client_credentials"
    try:
        await upstream.verify_credentials({})
    except ServiceCredentialRefused as exc:
        fix = f"check `{key}.client_id`, `client_secret` and `scope`/`audience` with the identity provider"
        return fail("server", target, f"{target}: {exc}", fix)
    except UpstreamHttpError as exc:
        cause = f"{target}: the server refused the gateway's client-credentials token (HTTP {exc.resp_code})"
        fix = f"the token's audience or scopes are not what the server wants: check `{key}.audience` and `scope`"
        return fail("server", target, cause, fix)
    except UpstreamError as exc:
        cause = f"{target}: no client-credentials token ({exc})"
        return fail("server", target, cause, f"check `{key}.token_url` and the dns, connect and tls checks for it")
    return None


async def _tool_count(name: str, upstream: Upstream, bridge: Bridge) -> int | None:
    """The server's tools as a channel of its own would list them (every page); None when it fails."""
    member = Member(name, upstream, tag="doctor")
    catalog = Catalog(name, [member], ChannelSpec(servers=[name]), bridge, on_change=lambda _method: None)
    try:
        view = await catalog.view("tools/list")
    finally:
        await catalog.close()
    return len(view.items) if name in view.servers else None


def _advice(name: str, spec: ServerSpec, problem: str) -> str:
    if spec.stdio is not None:
        key = f"servers.{name}.stdio"
        if problem.startswith("could not be started"):
            return f"check `{key}.command`: a program on PATH, a path, or {{python}} (the gateway's interpreter)"
        if problem.startswith("exited with status"):
            return f"run `{key}.command` with its args by hand and read its error output; fix `args`, `env` or `cwd`"
        return f"the program must speak MCP (JSON-RPC lines) on stdin/stdout: check `{key}.command` and `args`"
    key = f"servers.{name}.http"
    if problem.startswith("its process"):
        return f"run `{key}.spawn` by hand and read its error output; it must listen on `{key}.url`"
    if problem.startswith(("HTTP 404", "HTTP 405")):
        return f"the URL is not the server's MCP endpoint: correct `{key}.url` (often ending in /mcp)"
    if problem.startswith("HTTP 5"):
        return f"the server fails the MCP handshake (a server error): read its logs; is `{key}.url` its MCP endpoint?"
    if problem.startswith("HTTP 4"):
        return (
            f"the server refuses the gateway's MCP handshake: check `{key}.headers` (what it expects) and `{key}.url`"
        )
    if problem.startswith("connect refused"):
        return f"start the server, or correct the host and port in `{key}.url`"
    return (
        f"check that `{key}.url` is the server's MCP endpoint and that it answers (see the dns, connect and tls checks)"
    )
