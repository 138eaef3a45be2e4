"""The doctor's run: the checks in their order, what one failure makes the later ones skip, and the output.
Owns the order and the lifetimes (one HTTP session, closed at the end); the checks themselves live
in their own modules, and `gateway.cli` only hands it argv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final, TextIO

import aiohttp

from gateway.doctor.config_checks import check_config, check_secrets
from gateway.doctor.control_plane import check_control_plane
from gateway.doctor.network_checks import Blocked, check_dns, check_reach, check_tls
from gateway.doctor.plan import make_plan
from gateway.doctor.probes import Resolver, system_resolver
from gateway.doctor.report import CheckResult, Report, build, encode_json, redacted, render_text
from gateway.doctor.servers import check_servers
from gateway.observe import logs
from gateway.protocol.eras import Bridge
from gateway.protocol.wire import Codec

NETWORK_TIMEOUT_S: Final = 10.0
"""Longest one network probe (a lookup, a connection, a handshake) waits."""


async def diagnose(
    routes_file: Path,
    *,
    resolver: Resolver = system_resolver,
    timeout_s: float = NETWORK_TIMEOUT_S,
    redactor: logs.Redactor | None = None,
) -> Report:
    """Every check, in `report.KINDS` order; the report with every text redacted."""
    redactor = redactor or logs.Redactor()
    config, parsed = check_config(routes_file)
    if config is None:
        return redacted(build(str(routes_file), [parsed], bad_file=True), redactor.redact, redactor.known)
    redactor.add_all(logs.config_secrets(config, routes_file.parent))
    plan = make_plan(config, routes_file)
    results: list[CheckResult] = [parsed, *check_secrets(plan)]
    failed_secrets = {r.target for r in results if r.name == "secret" and r.status == "fail"}
    blocked: Blocked = {}
    results += await check_dns(plan, resolver, blocked, timeout_s)
    results += await check_reach(plan, blocked, timeout_s)
    results += await check_tls(plan, blocked, timeout_s)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results += await check_control_plane(plan, session, blocked, failed_secrets, learn_secret=redactor.learn)
        results += await check_servers(
            plan, session, Bridge(Codec()), blocked, failed_secrets, learn_secret=redactor.learn
        )
    return redacted(build(str(routes_file), results), redactor.redact, redactor.known)


async def doctor(routes_file: Path, *, as_json: bool, redactor: logs.Redactor, out: TextIO = sys.stdout) -> int:
    """`gateway doctor`: print the report (text, or `--json`); the exit status (0, 1, or 2)."""
    report = await diagnose(routes_file, redactor=redactor)
    if as_json:
        out.write(encode_json(report).decode())
    else:
        out.write(render_text(report))
    out.flush()
    return report.summary.exit_code
