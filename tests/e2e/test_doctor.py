"""`gateway doctor` as an operator runs it (`.venv/bin/gateway doctor`, a real subprocess), against real
peers on loopback: a forward proxy (`proxy.py`, with basic auth, and one that refuses CONNECT), a TLS
control plane under a private CA (`trustme`), the scripted control plane refusing a key, closed ports,
a stdio server that dies at once and an HTTP server answering 500. Each failure is named with its cause
and its mitigation; the default routing.yaml passes and leaves no process or port behind; the doctor
never polls (a poll would take real commands); `--json` decodes into its Struct with a stable key order.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from gateway.doctor.report import KINDS, CheckResult, Report, Summary
from tests.support.doctor_run import doctor, failing, one, report_of
from tests.support.forward_proxy import NO_CONNECT, forward_proxy
from tests.support.gateway_process import gateway_env, routes, stdio
from tests.support.harness import ROOT, free_port
from tests.support.scripted_cp import KEY, ScriptedControlPlane
from tests.support.token_endpoint import SubjectIssuer, TokenEndpoint


def marked_processes(marker: str) -> list[int]:
    """Processes (of this user) whose environment carries `marker`: the doctor's children inherit it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in environ:
                found.append(int(entry))
    return found


def closed_port() -> socket.socket:
    """A loopback port bound but not listening: connections to it are refused while the socket lives."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def control_plane(cp: ScriptedControlPlane, **settings: Any) -> dict[str, Any]:
    return {"url": cp.url, "tunnel_id": cp.tunnel_id, "api_key": "env:TUNNEL_API_KEY", **settings}


def remote(cp: ScriptedControlPlane, **settings: Any) -> str:
    return routes({"main": stdio("raw_stdio.py")}, control_plane=control_plane(cp, **settings))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(file))
    return ca, file


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


# --------------------------------------------------------------------------- the default file


async def test_default_routing_passes_and_leaves_no_process_or_port(tmp_path: Path) -> None:
    """The shipped routing.yaml (its two ports moved to free ones): every check ok or skipped as the
    embedded relay's, both servers' handshakes reported, exit 0; afterwards no process the doctor
    started is alive and neither port is held."""
    relay_port, notes_port = free_port(), free_port()
    text = (ROOT / "routing.yaml").read_text().replace("8781", str(notes_port)).replace("8780", str(relay_port))
    file = tmp_path / "routing.yaml"
    file.write_text(text)
    marker = f"DOCTOR_TEST_{uuid.uuid4().hex}"
    run = await doctor(file, env=gateway_env(**{marker: "1"}))
    print(run.stdout, run.stderr)
    assert run.code == 0
    assert run.stdout.splitlines()[-1].endswith("0 failed, 6 skipped: all good")
    for server in ("clock", "notes"):
        line = next(line for line in run.stdout.splitlines() if f"servers.{server}" in line)
        assert re.match(rf"ok +server +servers\.{server} +modern era \(2026-07-28\), [1-9]\d* tools", line), line
    for kind in ("dns", "connect", "tls", "credentials", "tunnel"):
        assert re.search(rf"^skip +{kind} +control_plane +embedded relay", run.stdout, re.M), kind
    assert marked_processes(marker) == []
    assert nothing_listens(notes_port)
    assert nothing_listens(relay_port)


async def test_json_is_the_documented_shape_in_a_stable_order(tmp_path: Path) -> None:
    """`--json` decodes into `Report` (unknown keys refused), keys come in the Struct's field order, and
    checks in `KINDS` order."""
    notes_port = free_port()
    file = tmp_path / "routing.yaml"
    file.write_text((ROOT / "routing.yaml").read_text().replace("8781", str(notes_port)))
    run = await doctor(file, "--json")
    assert run.code == 0, run.stderr
    report = run.report()
    raw = json.loads(run.stdout)
    assert list(raw) == list(Report.__struct_fields__)
    assert list(raw["summary"]) == list(Summary.__struct_fields__)
    assert all(list(check) == list(CheckResult.__struct_fields__) for check in raw["checks"])
    assert report.version == 1
    kinds = [check.name for check in report.checks]
    assert kinds == sorted(kinds, key=KINDS.index)
    assert report.summary == Summary(ok=3, fail=0, skip=6, exit_code=0)


async def test_a_broken_file_exits_2_with_file_key_and_expectation(tmp_path: Path) -> None:
    file = tmp_path / "routing.yaml"
    file.write_text("servers: {}\nchannels:\n  main: [nowhere]\n")
    run = await doctor(file)
    assert run.code == 2
    assert f"cause: {file}: channels.main: expected a server defined under `servers`" in run.stdout
    assert "fix:   correct `channels.main`" in run.stdout
    as_json = await doctor(file, "--json")
    assert as_json.code == 2
    report = as_json.report()
    assert [c.name for c in report.checks] == ["config"]
    assert report.summary.exit_code == 2


# --------------------------------------------------------------------------- the proxy


@pytest.mark.parametrize("password", ["right", "wrong"])
async def test_proxy_with_basic_auth(password: str, ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    """Good credentials: the tunnel through the proxy, TLS under the private CA (ca_bundle), the key and
    the tunnel's metadata all pass, and nothing polls. Wrong ones: named as the proxy's 407, with the
    setting to fix; the password is never printed."""
    authority, ca_file = ca
    async with (
        forward_proxy(tmp_path, basic_auth="doctor:right") as port,
        ScriptedControlPlane(ssl_context=tls_context(authority)) as cp,
    ):
        proxy = f"http://doctor:{password}@127.0.0.1:{port}"
        run, report = await report_of(
            remote(cp, proxy=proxy, ca_bundle=str(ca_file)), tmp_path, gateway_env(TUNNEL_API_KEY=KEY)
        )
        assert cp.polls == []
        if password == "right":
            assert run.code == 0
            assert one(report, "proxy", "control_plane").detail.endswith(f"CONNECT to 127.0.0.1:{cp.port} allowed")
            assert re.search(r"expires in \d+ days", one(report, "tls", "control_plane").detail)
            assert one(report, "credentials", "control_plane").status == "ok"
            assert one(report, "tunnel", "control_plane").status == "ok"
            return
        assert run.code == 1
        result = failing(report, "proxy", "control_plane")
        assert "refused the credentials" in result.cause
        assert "HTTP 407" in result.cause
        assert result.mitigation.startswith("put the proxy's user and password in `control_plane.proxy`'s URL")
        assert "wrong" not in run.stdout
        assert [one(report, kind, "control_plane").status for kind in ("tls", "credentials", "tunnel")] == ["skip"] * 3


async def test_proxy_that_refuses_connect(ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    authority, ca_file = ca
    async with (
        forward_proxy(tmp_path, plugins={"no_connect.NoConnect": NO_CONNECT}) as port,
        ScriptedControlPlane(ssl_context=tls_context(authority)) as cp,
    ):
        document = remote(cp, proxy=f"http://127.0.0.1:{port}", ca_bundle=str(ca_file))
        run, report = await report_of(document, tmp_path, gateway_env(TUNNEL_API_KEY=KEY))
    assert run.code == 1
    result = failing(report, "proxy", "control_plane")
    assert result.cause.startswith(f"the proxy refused CONNECT to 127.0.0.1:{cp.port} (HTTP 403")
    assert "allow CONNECT" in result.mitigation
    assert "`control_plane.proxy: none`" in result.mitigation


# --------------------------------------------------------------------------- TLS


async def test_tls_under_a_private_ca_without_ca_bundle_names_a_middlebox(
    ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    """The control plane and an HTTPS server present certificates of a CA the system does not trust:
    each is explained as a probable TLS-inspecting middlebox, naming its own `ca_bundle` key."""
    authority, _ = ca
    async with ScriptedControlPlane(ssl_context=tls_context(authority)) as cp:
        servers = {"main": stdio("raw_stdio.py"), "inspected": {"http": {"url": f"{cp.url}/mcp"}}}
        document = routes(servers, control_plane=control_plane(cp))
        run, report = await report_of(document, tmp_path, gateway_env(TUNNEL_API_KEY=KEY))
    assert run.code == 1
    for target, key in (("control_plane", "control_plane"), ("servers.inspected", "servers.inspected.http")):
        result = failing(report, "tls", target)
        assert "TLS-inspecting proxy or middlebox" in result.cause
        assert "trustme" in result.cause  # the issuer, read from the refused certificate
        assert f"`{key}.ca_bundle`" in result.mitigation
    assert one(report, "credentials", "control_plane").status == "skip"
    assert one(report, "server", "servers.inspected").status == "skip"
    assert one(report, "server", "servers.main").status == "ok"


async def test_tls_with_ca_bundle_verifies_and_tells_the_expiry(ca: tuple[trustme.CA, Path], tmp_path: Path) -> None:
    authority, ca_file = ca
    async with ScriptedControlPlane(ssl_context=tls_context(authority)) as cp:
        run, report = await report_of(remote(cp, ca_bundle=str(ca_file)), tmp_path, gateway_env(TUNNEL_API_KEY=KEY))
    assert run.code == 0
    detail = one(report, "tls", "control_plane").detail
    assert f"chain verifies with the system roots and ca_bundle {ca_file}" in detail
    days = int(re.search(r"expires in (\d+) days", detail)[1])  # type: ignore[index]
    assert days > 30


# --------------------------------------------------------------------------- credentials


async def test_a_refused_key_is_named_with_what_to_check(tmp_path: Path) -> None:
    async with ScriptedControlPlane() as cp:
        run, report = await report_of(remote(cp), tmp_path, gateway_env(TUNNEL_API_KEY="not-the-key-0042"))
        assert cp.polls == []
        assert cp.metadata_requests >= 1
    assert run.code == 1
    result = failing(report, "credentials", "control_plane")
    assert (
        result.cause == f"the control plane refused api_key (env:TUNNEL_API_KEY) for tunnel '{cp.tunnel_id}' (HTTP 401)"
    )
    assert "`control_plane.tunnel_id`" in result.mitigation
    assert one(report, "tunnel", "control_plane").status == "skip"
    assert "not-the-key-0042" not in run.stdout


async def test_an_unset_key_is_a_secret_that_does_not_resolve(tmp_path: Path) -> None:
    async with ScriptedControlPlane() as cp:
        run, report = await report_of(remote(cp), tmp_path, gateway_env())
    assert run.code == 1
    result = failing(report, "secret", "control_plane.api_key")
    assert "control_plane.api_key: expected" in result.cause
    assert "TUNNEL_API_KEY" in result.mitigation
    assert one(report, "credentials", "control_plane").status == "skip"


# --------------------------------------------------------------------------- unreachable and broken


async def test_closed_ports_are_named_unreachable(tmp_path: Path) -> None:
    with closed_port() as cp_sock, closed_port() as server_sock, closed_port() as hook_sock:
        cp_port, server_port = cp_sock.getsockname()[1], server_sock.getsockname()[1]
        servers = {"main": stdio("raw_stdio.py"), "gone": {"http": {"url": f"http://127.0.0.1:{server_port}/mcp"}}}
        settings = {"url": f"http://127.0.0.1:{cp_port}", "tunnel_id": "t1", "api_key": "env:TUNNEL_API_KEY"}
        hook = f"http://127.0.0.1:{hook_sock.getsockname()[1]}/hook"
        budget = {"name": "daily", "scope": "channel", "calls": 9, "per": "day", "webhook": {"url": hook}}
        document = json.dumps({**json.loads(routes(servers, control_plane=settings)), "budgets": [budget]})
        run, report = await report_of(document, tmp_path, gateway_env(TUNNEL_API_KEY=KEY))
    assert run.code == 1
    result = failing(report, "connect", "control_plane")
    assert result.cause == f"connection refused by 127.0.0.1:{cp_port}"
    assert "`control_plane.url`" in result.mitigation
    result = failing(report, "connect", "servers.gone")
    assert result.mitigation.startswith("start the server, or correct the host and port in `servers.gone.http.url`")
    assert [one(report, kind, "control_plane").status for kind in ("credentials", "tunnel")] == ["skip", "skip"]
    assert one(report, "server", "servers.gone").status == "skip"
    result = failing(report, "connect", "budgets.daily.webhook")
    assert "`budgets[0].webhook.url`" in result.mitigation


@pytest.fixture
async def answers_500() -> AsyncIterator[str]:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    app = web.Application()
    app.router.add_route("*", "/mcp", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/mcp"
    finally:
        await runner.cleanup()


async def test_broken_servers_are_named_with_their_mitigation(answers_500: str, tmp_path: Path) -> None:
    """A stdio server that exits at once and an HTTP server answering 500 fail with their reasons; a
    working server beside them passes; no process is left."""
    dies = tmp_path / "dies.py"
    dies.write_text("import sys\nsys.exit('cannot load')\n")
    servers = {
        "dies": {"stdio": {"command": "{python}", "args": [str(dies)]}},
        "broken": {"http": {"url": answers_500}},
        "fine": stdio("raw_stdio.py"),
    }
    marker = f"DOCTOR_TEST_{uuid.uuid4().hex}"
    run, report = await report_of(routes(servers), tmp_path, gateway_env(**{marker: "1"}))
    assert run.code == 1
    result = failing(report, "server", "servers.dies")
    assert result.cause == "servers.dies: exited with status 1: cannot load"
    assert result.mitigation.startswith("run `servers.dies.stdio.command` with its args by hand")
    port = answers_500.split(":")[2].split("/")[0]
    result = failing(report, "server", "servers.broken")
    assert result.cause == f"servers.broken: HTTP 500 from 127.0.0.1:{port}"
    assert "read its logs" in result.mitigation
    assert one(report, "server", "servers.fine").detail == "legacy era (2025-11-25), 1 tools"
    assert marked_processes(marker) == []


# --------------------------------------------------------------------------- workload identity


@pytest.mark.parametrize("endpoint_says", ["grant", "refuse"])
async def test_workload_identity_exchange(endpoint_says: str, tmp_path: Path) -> None:
    """The exchange the gateway would run (the same credential object): a granted token is accepted
    by the control plane; a refused exchange is named with the token endpoint's words and what to check."""
    issuer = SubjectIssuer()
    subject = tmp_path / "subject-token"
    subject.write_text(issuer.mint())
    async with TokenEndpoint(issuer) as endpoint, ScriptedControlPlane(authorize=endpoint.valid) as cp:
        if endpoint_says == "refuse":
            endpoint.refuse()
        identity = {
            "token_url": endpoint.url,
            "identity_provider_id": endpoint.identity_provider_id,
            "service_account_id": endpoint.service_account_id,
            "subject_token": f"file:{subject}",
        }
        control = {"url": cp.url, "tunnel_id": cp.tunnel_id, "workload_identity": identity}
        run, report = await report_of(routes({"main": stdio("raw_stdio.py")}, control_plane=control), tmp_path)
        assert cp.polls == []
    assert one(report, "secret", "control_plane.workload_identity.subject_token").status == "ok"
    assert one(report, "connect", "token_endpoint").status == "ok"
    assert issuer.minted[0] not in run.stdout
    if endpoint_says == "grant":
        assert run.code == 0
        assert one(report, "credentials", "control_plane").detail.startswith("workload_identity (identity provider")
        assert one(report, "tunnel", "control_plane").status == "ok"
        return
    assert run.code == 1
    result = failing(report, "credentials", "control_plane")
    assert result.cause.startswith("token exchange refused: invalid_grant")
    assert result.mitigation.startswith("check `control_plane.workload_identity`")
