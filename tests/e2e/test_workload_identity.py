"""Workload identity end to end: the real gateway process, the scripted control plane accepting only
access tokens the token-endpoint double issued and that have not expired, and subject tokens that
are real signed JWTs (tests/support/token_endpoint.py).

The gateway polls and answers with exchanged tokens, refreshes them ahead of expiry under load with
no failed poll or post, reads a rotated subject-token file (kubelet-style symlink swap), names a
refused exchange in its start-up output, its log and `/readyz` and recovers once the endpoint
accepts again, exchanges once more after a 401 and then backs off, and gets its subject token from
Google's and Azure's metadata servers. Configuration mistakes stop it at start with the key named.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from tests.support.gateway_process import GatewayProcess, gateway_env, run_gateway, stdio
from tests.support.harness import PYTHON, ROOT
from tests.support.metadata_servers import AZURE_ISSUER, GOOGLE_ISSUER, AzureIdentityServer, GcpMetadataServer
from tests.support.otlp_receiver import FAST_EXPORT, otlp_receiver
from tests.support.scripted_cp import ScriptedControlPlane
from tests.support.sweep import Sweep
from tests.support.token_endpoint import SubjectIssuer, TokenEndpoint

IDP = "idp_test_0001"
REFUSED = rf"token exchange refused: invalid_grant \(identity provider {IDP}\)"


def routes(cp: ScriptedControlPlane, endpoint: TokenEndpoint, *, subject: Path | None = None, **identity: Any) -> str:
    """routing.yaml with workload identity against the doubles (ids from the OpenAI variables)."""
    settings: dict[str, Any] = {
        "token_url": endpoint.url,
        "identity_provider_id": "env:OPENAI_IDENTITY_PROVIDER_ID",
        "service_account_id": "env:OPENAI_SERVICE_ACCOUNT_ID",
    }
    if subject is not None:
        settings["subject_token"] = f"file:{subject}"
    document = {
        "control_plane": {"url": cp.url, "tunnel_id": cp.tunnel_id, "workload_identity": {**settings, **identity}},
        "servers": {"main": stdio()},
        "channels": {"main": ["main"]},
        "ops": {"listen": "127.0.0.1:0"},
    }
    return json.dumps(document, indent=1)


def environment(endpoint: TokenEndpoint, **extra: str) -> dict[str, str]:
    """No TUNNEL_API_KEY anywhere: the exchanged tokens are the only credential."""
    env = gateway_env(
        OPENAI_IDENTITY_PROVIDER_ID=endpoint.identity_provider_id,
        OPENAI_SERVICE_ACCOUNT_ID=endpoint.service_account_id,
        **extra,
    )
    env.pop("TUNNEL_API_KEY", None)
    return env


@contextlib.asynccontextmanager
async def doubles(
    lifetime_s: float = 3600, *, issuer: SubjectIssuer | None = None
) -> AsyncIterator[tuple[SubjectIssuer, TokenEndpoint, ScriptedControlPlane]]:
    issuer = issuer or SubjectIssuer()
    async with contextlib.AsyncExitStack() as stack:
        endpoint = await stack.enter_async_context(TokenEndpoint(issuer, lifetime_s=lifetime_s))
        cp = await stack.enter_async_context(ScriptedControlPlane(hold_s=0.3, authorize=endpoint.valid))
        yield issuer, endpoint, cp


async def echo(cp: ScriptedControlPlane, text: str) -> str:
    rid = cp.call("echo", {"text": text})
    await cp.answer(rid)
    return cp.text(rid)


def jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def unfailed(cp: ScriptedControlPlane) -> None:
    """No poll and no response POST was refused (or failed) at the control plane."""
    assert [(p.index, p.status) for p in cp.polls if p.status not in (None, 200, 204)] == []  # None: still held
    assert [(p.index, p.status) for p in cp.posts if p.status != 200] == []
    assert cp.violations == []


async def readyz(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    url = (await gw.wait_for(r"^ops: listening on (\S+)"))[1]
    async with httpx2.AsyncClient() as http:
        answer = await http.get(f"{url}/readyz")
    return answer.status_code, answer.json()


async def line_after(gw: GatewayProcess, pattern: str, after: int, within_s: float = 60.0) -> re.Match[str]:
    """The first stdout line from index `after` on matching `pattern`."""
    regex = re.compile(pattern)
    async with asyncio.timeout(within_s):
        while True:
            for line in gw.stdout[after:]:
                if match := regex.search(line):
                    return match
            gw._new_line.clear()
            await gw._new_line.wait()


# --------------------------------------------------------------------------- serving and refreshing


async def test_polls_and_answers_with_exchanged_tokens_refreshed_ahead_of_expiry_under_load(tmp_path: Path) -> None:
    """Four-second access tokens: refreshed half-way (refresh_before_s 1200 is clamped), one exchange
    at a time, while calls keep polls and posts busy; nothing is refused, nothing is lost."""
    async with doubles(lifetime_s=4) as (issuer, endpoint, cp):
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        async with run_gateway(routes(cp, endpoint, subject=subject), tmp_path, env=environment(endpoint)) as gw:
            ids: list[str] = []
            rounds = 0
            while len(endpoint.granted()) < 5:  # four refreshes, with calls in flight across each
                batch = [cp.call("sleep_ms", {"ms": 150}) for _ in range(6)]
                batch += [cp.call("echo", {"text": f"r{rounds}-{i}"}) for i in range(6)]
                await cp.answers(batch)
                ids += batch
                rounds += 1
            assert all(len(cp.terminals(rid)) == 1 for rid in ids)
            assert [cp.text(rid) for rid in ids if rid.startswith("req_echo")][:6] == [f"r0-{i}" for i in range(6)]
            unfailed(cp)
            granted = endpoint.granted()
            assert endpoint.max_in_flight == 1, "two exchanges ran at once"
            assert all(e.status == 200 for e in endpoint.exchanges), "an exchange was refused"
            for before, after in itertools.pairwise(granted):
                assert before.access_token is not None
                assert after.arrived < endpoint.issued[before.access_token], "refreshed only after expiry"
            used = {p.key for p in cp.polls} | {p.key for p in cp.posts}
            assert len(used) >= 4, "the refreshed tokens were not used"
            assert used <= set(endpoint.issued)
            assert {e.subject_token_type for e in endpoint.exchanges} == {"jwt"}
            assert endpoint.violations == []
            log = "\n".join(gw.stderr)
            assert f"credentials: access token for identity provider {IDP}" in log
            assert not [token for token in [*endpoint.issued, *issuer.minted] if token in log]


async def test_a_rotated_subject_token_file_is_read_for_every_exchange(tmp_path: Path) -> None:
    """The kubelet's atomic update: the token lives under a timestamped folder behind the `..data`
    symlink, which is swapped; the next exchange presents the new token."""
    async with doubles(lifetime_s=3) as (issuer, endpoint, cp):
        tokens = tmp_path / "tokens"
        first, second = issuer.mint(), issuer.mint()
        kubelet_write(tokens, "..2026_01_01_00_00_00.000000001", first)
        (tokens / "token").symlink_to("..data/token")
        async with run_gateway(routes(cp, endpoint, subject=tokens / "token"), tmp_path, env=environment(endpoint)):
            assert await echo(cp, "before") == "before"
            rotated_at = len(endpoint.exchanges)
            kubelet_write(tokens, "..2026_01_01_00_48_00.000000002", second)
            await endpoint.until(lambda: any(e.jti == jti(second) for e in endpoint.exchanges), what="the new token")
            after = endpoint.exchanges[rotated_at:]
            assert after[0].jti == jti(second), "an exchange after the rotation presented the old token"
            assert {e.jti for e in endpoint.exchanges[:rotated_at]} == {jti(first)}
            assert await echo(cp, "after") == "after"
            unfailed(cp)


def kubelet_write(folder: Path, timestamp: str, token: str) -> None:
    """What the kubelet does to a projected volume: a new timestamped folder, then `..data` swapped to it."""
    (folder / timestamp).mkdir(parents=True)
    (folder / timestamp / "token").write_text(token)
    link = folder / "..data_tmp"
    link.symlink_to(timestamp)
    os.replace(link, folder / "..data")


# --------------------------------------------------------------------------- refusals


async def test_a_refused_exchange_is_named_at_start_in_logs_and_readyz_then_recovers(tmp_path: Path) -> None:
    async with doubles() as (issuer, endpoint, cp):
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        endpoint.refuse("invalid_grant", "audience not accepted")
        waiting = rf"^waiting: credentials \({REFUSED}: audience not accepted\), control_plane \(waiting for an access"
        document = routes(cp, endpoint, subject=subject)
        async with run_gateway(document, tmp_path, env=environment(endpoint), ready=waiting) as gw:
            status, body = await readyz(gw)
            assert status == 503
            assert body["not_ready"][:2] == ["credentials", "control_plane"]  # (and the server, if not up yet)
            assert re.fullmatch(f"{REFUSED}: audience not accepted", body["checks"]["credentials"])
            await endpoint.until(lambda: len(endpoint.exchanges) >= 3, what="exchanges tried again")
            logged = [line for line in gw.stderr if re.search(f" ERROR .*credentials: {REFUSED}", line)]
            assert len(logged) == 1, "a refusal is logged once, not at every retry"
            assert cp.polls == [], "a poll went out with no credential"
            mark = len(gw.stdout)
            endpoint.accept()
            await line_after(gw, r"^gateway: ready$", mark)
            assert await echo(cp, "recovered") == "recovered"
            assert (await readyz(gw))[0] == 200
            unfailed(cp)
            assert any("credentials: access token again" in line for line in gw.stderr)


async def test_the_endpoint_refusing_for_longer_than_a_token_lives_loses_nothing(tmp_path: Path) -> None:
    """Three-second tokens; the endpoint refuses for a while; calls queued meanwhile are served once it
    accepts again, and no request ever carried an expired token (the control plane refused none)."""
    async with doubles(lifetime_s=3) as (issuer, endpoint, cp):
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        async with run_gateway(routes(cp, endpoint, subject=subject), tmp_path, env=environment(endpoint)) as gw:
            assert await echo(cp, "first") == "first"
            mark = len(gw.stdout)
            endpoint.refuse()
            await line_after(gw, rf"^gateway: NOT ready: credentials \({REFUSED}: subject token not accepted\)", mark)
            queued = [cp.call("echo", {"text": f"q{i}"}) for i in range(5)]
            mark = len(gw.stdout)
            endpoint.accept()
            await line_after(gw, r"^gateway: ready$", mark)
            assert [cp.text(p["request_id"]) for p in await cp.answers(queued)] == [f"q{i}" for i in range(5)]
            unfailed(cp)


async def test_a_401_is_answered_with_one_exchange_then_a_back_off(tmp_path: Path) -> None:
    """The control plane stops taking the token: one exchange, the same call goes through with the
    new token. Then it refuses the new one too: no exchange loop, the poll backs off, one error line."""
    async with doubles() as (issuer, endpoint, cp):
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        async with run_gateway(routes(cp, endpoint, subject=subject), tmp_path, env=environment(endpoint)) as gw:
            assert await echo(cp, "one") == "one"
            assert len(endpoint.exchanges) == 1
            endpoint.revoke()  # the control plane stops taking the token it holds
            assert await echo(cp, "two") == "two"
            assert len(endpoint.exchanges) == 2, "a 401 is answered with exactly one exchange"
            refused = [p for p in [*cp.polls, *cp.posts] if p.status == 401]
            assert refused
            assert {p.key for p in refused} == {endpoint.granted()[0].access_token}

            # Now the control plane refuses the fresh token too: that is not the token's fault, so
            # no exchange follows, and the poll backs off hard.
            cp.authorize = lambda token: False
            polls = len(cp.polls)
            await cp.until(lambda: any(p.status == 401 for p in cp.polls[polls:]), what="a refused poll")
            await cp.quiet(3.0)
            assert len(endpoint.exchanges) == 2, "exchanged again for a token refused right after an exchange"
            assert sum(p.status == 401 for p in cp.polls[polls:]) == 1, "polled again within 3 s after a second 401"
            label = f"workload_identity \\(identity provider {IDP}, service account {endpoint.service_account_id}\\)"
            hint = rf" ERROR .*rejected the tunnel credentials \(HTTP 401\): check tunnel_id and {label}"
            assert len([line for line in gw.stderr if re.search(hint, line)]) == 1
            assert cp.violations == []


# --------------------------------------------------------------------------- metadata-server providers


async def test_google_metadata_server_provides_the_subject_token(tmp_path: Path) -> None:
    audience = "https://api.openai.com/v1"
    issuer = SubjectIssuer(GOOGLE_ISSUER, audience=audience)
    async with doubles(issuer=issuer) as (_, endpoint, cp), GcpMetadataServer(issuer) as metadata:
        provider = {"gcp_metadata": {"audience": audience}}
        document = routes(cp, endpoint, provider=provider, subject_token_type="id_token")
        env = environment(endpoint, GCE_METADATA_HOST=metadata.host)
        async with run_gateway(document, tmp_path, env=env):
            assert await echo(cp, "google") == "google"
            unfailed(cp)
        exchange = endpoint.granted()[0]
        assert (exchange.subject, exchange.subject_token_type) == (metadata.subject, "id_token")
        asked = metadata.requests[0]
        assert (asked.headers["Metadata-Flavor"], asked.query) == ("Google", {"audience": audience, "format": "full"})


async def test_azure_managed_identity_provides_the_subject_token(tmp_path: Path) -> None:
    resource = "api://openai-workload-identity"
    issuer = SubjectIssuer(AZURE_ISSUER, audience=resource)
    async with doubles(issuer=issuer) as (_, endpoint, cp), AzureIdentityServer(issuer) as imds:
        azure = {"resource": resource, "client_id": imds.client_id, "base_url": imds.base_url}
        document = routes(cp, endpoint, provider={"azure_managed_identity": azure})
        async with run_gateway(document, tmp_path, env=environment(endpoint)):
            assert await echo(cp, "azure") == "azure"
            unfailed(cp)
        assert endpoint.granted()[0].subject == "0b2a3c4d-aaaa-bbbb-cccc-ddddeeeeffff"
        asked = imds.requests[0]
        assert asked.headers["Metadata"] == "true"
        assert asked.query == {"api-version": "2018-02-01", "resource": resource, "client_id": imds.client_id}


# --------------------------------------------------------------------------- turning it on from the environment


async def test_the_openai_variables_turn_it_on_and_the_token_endpoint_honours_the_proxy(tmp_path: Path) -> None:
    """No `workload_identity` in routing.yaml: OPENAI_IDENTITY_PROVIDER_ID, OPENAI_SERVICE_ACCOUNT_ID and
    OPENAI_IDENTITY_TOKEN_FILE turn it on against OpenAI's token endpoint, reached through the
    HTTPS_PROXY the environment names (here a closed loopback port: nothing leaves this host)."""
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        subject = tmp_path / "token"
        subject.write_text(SubjectIssuer().mint())
        document = json.dumps(
            {
                "control_plane": {"url": cp.url, "tunnel_id": cp.tunnel_id},
                "servers": {"main": stdio()},
                "channels": {"main": ["main"]},
            }
        )
        env = gateway_env(
            OPENAI_IDENTITY_PROVIDER_ID="idp_from_env",
            OPENAI_SERVICE_ACCOUNT_ID="svcacct_from_env",
            OPENAI_IDENTITY_TOKEN_FILE=str(subject),
            HTTPS_PROXY="http://127.0.0.1:9",
        )
        unreachable = (
            r"^waiting: credentials \(token endpoint auth\.openai\.com unreachable "
            r"\(ClientProxyConnectionError; identity provider idp_from_env\)\)"
        )
        async with run_gateway(document, tmp_path, env=env, ready=unreachable):
            assert cp.polls == []


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"OPENAI_IDENTITY_TOKEN_FILE": "/var/run/secrets/tokens/openai"},
            "control_plane (environment): expected all of OPENAI_IDENTITY_PROVIDER_ID, OPENAI_SERVICE_ACCOUNT_ID, "
            "OPENAI_IDENTITY_TOKEN_FILE for workload identity "
            "(OPENAI_IDENTITY_PROVIDER_ID, OPENAI_SERVICE_ACCOUNT_ID not set)",
        ),
        (
            {
                "OPENAI_IDENTITY_PROVIDER_ID": "idp",
                "OPENAI_SERVICE_ACCOUNT_ID": "sa",
                "OPENAI_IDENTITY_TOKEN_FILE": "/t",
                "TUNNEL_API_KEY": "k",
            },
            "control_plane (environment): expected TUNNEL_API_KEY or the OPENAI_IDENTITY_* variables "
            "(workload identity), not both",
        ),
    ],
)
async def test_an_ambiguous_environment_stops_the_gateway_at_start(
    env: dict[str, str], words: str, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routing.yaml"
    routes_file.write_text(
        json.dumps(
            {
                "control_plane": {"url": "http://127.0.0.1:9", "tunnel_id": "tunnel_x"},
                "servers": {"main": stdio()},
                "channels": {"main": ["main"]},
            }
        )
    )
    names = ("OPENAI_IDENTITY_PROVIDER_ID", "OPENAI_SERVICE_ACCOUNT_ID", "OPENAI_IDENTITY_TOKEN_FILE", "TUNNEL_API_KEY")
    environ = {k: v for k, v in gateway_env(**env).items() if k not in names or k in env}
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway.cli",
        "--routes",
        str(routes_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=ROOT,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == f"gateway: {routes_file}: {words}"


# --------------------------------------------------------------------------- the secret sweep


async def test_no_subject_or_access_token_reaches_output_telemetry_metrics_or_answers(tmp_path: Path) -> None:
    """A run through every workload-identity path, with an endpoint careless enough to quote the
    subject token in its refusals; every byte the gateway put out is searched for every subject
    token (and its signature alone) and every access token (tests/test_secret_sweep.py's method)."""
    sweep = Sweep()
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(otlp_receiver())
        issuer, endpoint, cp = await stack.enter_async_context(doubles(lifetime_s=3))
        http = await stack.enter_async_context(httpx2.AsyncClient())
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        endpoint.echo_subject = True
        endpoint.refuse("invalid_grant", "this subject token is not accepted")
        document = json.loads(routes(cp, endpoint, subject=subject))
        document["telemetry"] = {"endpoint": receiver.url, "capture_arguments": True, "service_name": "wif-sweep"}
        env = environment(endpoint, **FAST_EXPORT)
        waiting = rf"^waiting: credentials \({REFUSED}: this subject token is not accepted: \[REDACTED\]\)"
        gw = await stack.enter_async_context(run_gateway(json.dumps(document), tmp_path, env=env, ready=waiting))
        sweep.add("/readyz while refused", [json.dumps(await readyz(gw))])
        mark = len(gw.stdout)
        endpoint.accept()
        await line_after(gw, r"^gateway: ready$", mark)
        ids = [cp.call("echo", {"text": f"e{i}"}) for i in range(3)]
        ids.append(cp.call("fail", {"message": "as asked"}))
        await cp.answers(ids)
        endpoint.revoke()  # a 401, answered with an exchange
        ids.append(cp.call("echo", {"text": "after the 401"}))
        await cp.answers(ids)
        subject.write_text(issuer.mint())  # rotated; the next refreshes present it
        granted = len(endpoint.granted())
        await endpoint.until(lambda: len(endpoint.granted()) >= granted + 2, what="refreshes after the rotation")
        ids.append(cp.call("echo", {"text": "after the rotation"}))
        await cp.answers(ids)
        await receiver.wait_for(lambda r: bool(r.spans) and bool(r.points))
        url = (await gw.wait_for(r"^ops: listening on (\S+)"))[1]
        sweep.add("/metrics", [(await http.get(f"{url}/metrics")).text])
        sweep.add("/readyz", [json.dumps(await readyz(gw))])
        assert await gw.stop() == 0
        sweep.add("gateway stdout", gw.stdout)
        sweep.add("gateway stderr", gw.stderr)
        sweep.add("answers", [post.body for post in cp.posts])
        sweep.add("OTLP exports", receiver.raw)
        assert cp.text(ids[-1]) == "after the rotation"
    secrets = {f"access token {i}": token for i, token in enumerate(endpoint.issued)}
    for i, token in enumerate(issuer.minted):
        secrets[f"subject token {i}"] = token
        secrets[f"subject token {i} signature"] = token.rsplit(".", 1)[1]
    assert len(issuer.minted) == 2
    assert len(endpoint.issued) >= 4
    assert any(e.error == "invalid_grant" for e in endpoint.exchanges), "the careless refusal was not exercised"
    assert sweep.leaks(secrets) == []
    assert sweep.searched() > 50
