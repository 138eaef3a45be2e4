"""Enterprise networking on the control-plane channel, with real peers on loopback.

A real forward proxy (`proxy.py` from PyPI, with a witness plugin that writes down every
connection and request it relays) carries the poll channel when routing.yaml names it and
when `HTTPS_PROXY` does, and is bypassed for `NO_PROXY` hosts and `proxy: none`. The
control plane speaks TLS with a certificate from a CA made in the test (`trustme`), which
the gateway trusts only through `ca_bundle`, and can demand a client certificate (mTLS).
The API key rotates without a restart: a `file:` key re-read when the file changes, and an
`exec:` command re-run when its short-lived token expires. Under workload identity the token
endpoint is reached with the control plane's settings.
"""

from __future__ import annotations

import ssl
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme

from tests.support.forward_proxy import Proxy, witnessed_proxy
from tests.support.gateway_process import GatewayProcess, gateway_env, routes, run_gateway, stdio
from tests.support.harness import PYTHON, SERVERS, process
from tests.support.scripted_cp import KEY, ScriptedControlPlane
from tests.support.token_endpoint import SubjectIssuer, TokenEndpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_IDENTITY = "gateway.client.test"


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    client = ca.issue_cert(CLIENT_IDENTITY)
    chain = base / "client.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(base / "client.key"))
    return Pki(ca, base / "ca.pem", chain, base / "client.key")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxy]:
    """proxy.py on 127.0.0.1 with the witness plugin."""
    async with witnessed_proxy(tmp_path_factory.mktemp("proxy")) as proxy:
        yield proxy


def control_plane(cp: ScriptedControlPlane, **settings: Any) -> dict[str, Any]:
    return {"url": cp.url, "tunnel_id": cp.tunnel_id, "api_key": "env:TUNNEL_API_KEY", **settings}


def document(cp: ScriptedControlPlane, **settings: Any) -> str:
    return routes({"main": stdio("raw_stdio.py")}, control_plane=control_plane(cp, **settings))


async def echo(cp: ScriptedControlPlane, text: str) -> str:
    payload = await cp.answer(cp.call("echo", {"text": text}))
    return str(payload["resp_json"]["result"]["content"][0]["text"])


NO_CONTROL_PLANE = r"^waiting: control_plane \((metadata request|poll) failed: .+\)$"
"""What the gateway says while no TLS handshake with the control plane succeeds (it never says ready)."""


async def refused(cp: ScriptedControlPlane, gw: GatewayProcess) -> None:
    """The gateway tried (TLS handshakes began) and never got an HTTP request through."""
    await cp.until(lambda: cp.handshakes >= 3 or gw.proc.returncode is not None, 30, "three TLS handshakes")
    await cp.quiet(0.2)
    assert gw.proc.returncode is None
    assert cp.polls == []
    assert cp.posts == []


# --------------------------------------------------------------------------- proxy


async def test_poll_channel_through_the_proxy_named_in_routing(proxy: Proxy, tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.3) as cp, run_gateway(document(cp, proxy=proxy.url), tmp_path):
        assert await echo(cp, "via proxy") == "via proxy"
        await cp.polls_after(len(cp.polls), 1)
        seen = proxy.lines(cp.port)
        assert any(line.startswith("req GET") and "/poll" in line for line in seen), seen
        assert any(line.startswith("req POST") and line.endswith("/response") for line in seen), seen
        polls_relayed = sum(1 for line in seen if "/poll" in line)
        assert polls_relayed >= len(cp.polls) - 1, "some polls bypassed the proxy"
        assert cp.violations == []


async def test_tls_poll_channel_through_https_proxy_from_the_environment(
    proxy: Proxy, pki: Pki, tmp_path: Path
) -> None:
    env = gateway_env(TUNNEL_API_KEY=KEY, HTTPS_PROXY=proxy.url)
    async with (
        ScriptedControlPlane(ssl_context=pki.server_context(), hold_s=0.3) as cp,
        run_gateway(document(cp, ca_bundle=str(pki.ca_file)), tmp_path, env=env),
    ):
        assert cp.url.startswith("https://")
        assert await echo(cp, "tunnelled") == "tunnelled"
        seen = proxy.lines(cp.port)
        assert any(line == f"conn CONNECT 127.0.0.1:{cp.port}" for line in seen), seen
        assert cp.violations == []


@pytest.mark.parametrize("bypass", ["NO_PROXY", "proxy: none"])
async def test_proxy_bypass(bypass: str, proxy: Proxy, pki: Pki, tmp_path: Path) -> None:
    """A working proxy is configured in the environment, and the control plane must not use it."""
    env = gateway_env(TUNNEL_API_KEY=KEY, HTTPS_PROXY=proxy.url)
    settings: dict[str, Any] = {"ca_bundle": str(pki.ca_file)}
    if bypass == "NO_PROXY":
        env["NO_PROXY"] = "localhost,127.0.0.1"
    else:
        settings["proxy"] = "none"
    async with (
        ScriptedControlPlane(ssl_context=pki.server_context(), hold_s=0.3) as cp,
        run_gateway(document(cp, **settings), tmp_path, env=env),
    ):
        assert await echo(cp, "direct") == "direct"
        assert proxy.lines(cp.port) == []


async def test_http_upstream_through_its_proxy(proxy: Proxy, tmp_path: Path) -> None:
    async with (
        process(PYTHON, SERVERS / "sdk_server.py", "--http", "--port", "0") as server,
        ScriptedControlPlane(hold_s=0.3) as cp,
    ):
        url = (await server.wait_for(r"READY (\S+)"))[1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        servers = {"web": {"http": {"url": url, "proxy": proxy.url}}}
        async with run_gateway(routes(servers, control_plane=control_plane(cp)), tmp_path):
            payload = await cp.answer(cp.call("echo", {"text": "upstream via proxy"}, channel="web"))
            assert payload["resp_json"]["result"]["content"][0]["text"] == "upstream via proxy"
            assert any(line.startswith("req POST") for line in proxy.lines(port)), proxy.lines(port)
            assert proxy.lines(cp.port) == [], "the control plane has no proxy configured"


# --------------------------------------------------------------------------- TLS and mTLS


async def test_control_plane_certificate_needs_the_ca_bundle(pki: Pki, tmp_path: Path) -> None:
    async with (
        ScriptedControlPlane(ssl_context=pki.server_context(), hold_s=0.3) as cp,
        run_gateway(document(cp), tmp_path, ready=NO_CONTROL_PLANE) as gw,
    ):
        await refused(cp, gw)


async def test_mtls_client_certificate(pki: Pki, tmp_path: Path) -> None:
    cert = {"ca_bundle": str(pki.ca_file), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    async with (
        ScriptedControlPlane(ssl_context=pki.server_context(require_client_cert=True), hold_s=0.3) as cp,
        run_gateway(document(cp, **cert), tmp_path),
    ):
        assert await echo(cp, "mutual") == "mutual"
        for record in cp.polls:
            assert record.peer_cert is not None
            assert ("DNS", CLIENT_IDENTITY) in record.peer_cert["subjectAltName"]
        assert cp.violations == []


async def test_mtls_without_a_client_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    async with (
        ScriptedControlPlane(ssl_context=pki.server_context(require_client_cert=True), hold_s=0.3) as cp,
        run_gateway(document(cp, ca_bundle=str(pki.ca_file)), tmp_path, ready=NO_CONTROL_PLANE) as gw,
    ):
        await refused(cp, gw)


# --------------------------------------------------------------------------- key rotation


async def test_key_file_rotation_without_restart(tmp_path: Path) -> None:
    old, new = KEY, "rotated-key-with-another-length"
    key_file = tmp_path / "key"
    key_file.write_text(old + "\n")
    async with ScriptedControlPlane(hold_s=0.2) as cp:
        for endpoint in cp.keys.values():
            endpoint.add(new)
        gateway = run_gateway(document(cp, api_key=f"file:{key_file}"), tmp_path, env=gateway_env())
        async with gateway as gw:
            assert await echo(cp, "before") == "before"
            assert {p.key for p in cp.polls} == {old}
            key_file.write_text(new + "\n")
            rotated = len(cp.polls)
            await cp.until(lambda: any(p.key == new for p in cp.polls), 20, "a poll with the new key")
            first_new = next(p.index for p in cp.polls if p.key == new)
            assert first_new <= rotated + 1, "the rotated key was picked up late"
            for endpoint in cp.keys.values():
                endpoint.discard(old)
            rid = cp.call("echo", {"text": "after"})
            await cp.answer(rid)
            assert {a.key for a in cp.attempts(rid)} == {new}
            assert all(p.key == new for p in cp.polls[first_new:])
            assert gw.proc.returncode is None
            log = "\n".join(gw.stderr)
            assert old not in log, "the key reached the log"
            assert new not in log, "the key reached the log"
        assert cp.violations == []


async def test_exec_key_command_rerun_after_expiry(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "token.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, pathlib
            runs = pathlib.Path({str(counter)!r})
            n = int(runs.read_text()) + 1 if runs.exists() else 1
            runs.write_text(str(n))
            print(json.dumps({{"token": f"tok-{{n}}", "expires_in": 2}}))
            """
        )
    )
    async with ScriptedControlPlane(hold_s=0.1) as cp:
        tokens = {f"tok-{n}" for n in range(1, 200)}
        for endpoint in cp.keys.values():
            endpoint.update(tokens)
        command = f"exec:{sys.executable} {script}"
        async with run_gateway(document(cp, api_key=command), tmp_path, env=gateway_env()):
            await cp.until(lambda: len({p.key for p in cp.polls}) >= 3, 30, "three successive tokens")
            assert await echo(cp, "short-lived") == "short-lived"
            keys = [p.key for p in cp.polls]
            assert all(k in tokens for k in keys)
            numbers = [int(str(k)[4:]) for k in keys]
            assert numbers == sorted(numbers), "an older token came back"
            assert numbers[0] == 1
            runs = int(counter.read_text())
            assert runs < len(keys), "the token command ran for every request instead of being cached"
            assert max(numbers) <= runs
        assert cp.violations == []


# --------------------------------------------------------------------------- workload identity


async def test_token_endpoint_takes_the_control_planes_proxy_ca_bundle_and_client_certificate(
    proxy: Proxy, pki: Pki, tmp_path: Path
) -> None:
    """Workload identity with no egress settings of its own: the token exchange goes through the
    control plane's proxy (CONNECT), trusts its `ca_bundle` and presents its client certificate."""
    issuer = SubjectIssuer()
    subject = tmp_path / "subject-token"
    subject.write_text(issuer.mint())
    async with (
        TokenEndpoint(issuer, ssl_context=pki.server_context(require_client_cert=True)) as endpoint,
        ScriptedControlPlane(ssl_context=pki.server_context(), hold_s=0.3, authorize=endpoint.valid) as cp,
    ):
        identity = {
            "token_url": endpoint.url,
            "identity_provider_id": endpoint.identity_provider_id,
            "service_account_id": endpoint.service_account_id,
            "subject_token": f"file:{subject}",
        }
        settings = {
            "proxy": proxy.url,
            "ca_bundle": str(pki.ca_file),
            "client_cert": str(pki.client_cert),
            "client_key": str(pki.client_key),
        }
        control = {"url": cp.url, "tunnel_id": cp.tunnel_id, "workload_identity": identity, **settings}
        document = routes({"main": stdio("raw_stdio.py")}, control_plane=control)
        async with run_gateway(document, tmp_path, env=gateway_env()):
            assert await echo(cp, "exchanged") == "exchanged"
        assert f"conn CONNECT 127.0.0.1:{endpoint.port}" in proxy.lines(endpoint.port)
        certificate = endpoint.peer_certs[0]
        assert certificate is not None
        assert ("DNS", CLIENT_IDENTITY) in certificate["subjectAltName"]
        assert endpoint.violations == []
        assert cp.violations == []
