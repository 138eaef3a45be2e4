"""The secret sweep: a run with distinctive configured secrets, and every byte it put out searched.

Configured secrets: the control-plane `api_key` (as `file:`, rotated mid-run, and as `env:`),
an HTTP server's header values (`env:` and `file:`), the OTLP export headers, the session key,
the embedded relay's `client_token`, and an `Authorization` header a client forwards. The run
makes calls, fails calls (tool errors, unknown tools and channels, a dead process, a
`request_timeout_s`, a refused key), reloads good and bad configurations and starts from a
bad one. Searched: every stdout and stderr line, every OTLP export body (a real OTLP
receiver, `tests/support/otlp_receiver.py`), every `/metrics` text and every answer. No configured
secret may appear anywhere (design.md, Non-negotiables: secrets never reach logs, spans,
metrics or error messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support.gateway_process import GatewayProcess, gateway_env, run_gateway, stdio
from tests.support.harness import PYTHON, ROOT, http_server, legacy_initialize
from tests.support.otlp_receiver import FAST_EXPORT, otlp_receiver
from tests.support.scripted_cp import ScriptedControlPlane
from tests.support.sweep import Sweep

SECRETS = {
    "api_key (file:)": "swp-cpfile-one-Q7xk29fjW",
    "api_key (file:, rotated)": "swp-cpfile-two-Lm83hd0qX",
    "api_key (env:)": "swp-cpenv-Zt62pw5rY",
    "http header (env:)": "swp-webhdr-env-K1c8vb4nZ",
    "http header (file:)": "swp-webhdr-file-Hq02ms7eA",
    "otlp header (env:)": "swp-otlp-Rr55yu1tB",
    "session key (env:)": "swp-sesskey-Aa11bb22cc33dd44C",
    "relay client_token (env:)": "swp-relaytok-Vb90ke3aD",
    "forwarded Authorization": "swp-fwdauth-Pd47nc6wE",
    "literal in a bad reload": "swp-badreload-Tt19ws8qF",
}
URL_PASSWORD = "swp-urlpass-Ee12fg34G"
TOKEN_PRINT = "clients send: Authorization: Bearer "
"""The line the embedded relay printed with its client token before defect 9 was fixed."""


def gateway_output(sweep: Sweep, gw: GatewayProcess, name: str) -> None:
    sweep.add(f"{name} stdout", gw.stdout)
    sweep.add(f"{name} stderr", gw.stderr)


async def scrape(http: httpx2.AsyncClient, gw: GatewayProcess) -> str:
    url = (await gw.wait_for(r"^ops: listening on (\S+)"))[1]
    return (await http.get(f"{url}/metrics")).text


# --------------------------------------------------------------------------- run A: a scripted control plane


def routing(
    cp: ScriptedControlPlane, web: str, receiver: str, *, api_key: str, bad: dict[str, Any] | None = None
) -> str:
    document: dict[str, Any] = {
        "control_plane": {"url": cp.url, "tunnel_id": cp.tunnel_id, "api_key": api_key},
        "servers": {
            "local": stdio(request_timeout_s=2),
            "web": {"http": {"url": web, "headers": {"X-Api-Key": "env:SWEEP_WEB", "X-Web-Secret": "file:web.secret"}}},
        },
        "channels": {"local": ["local"], "web": ["web"]},
        "telemetry": {
            "endpoint": receiver,
            "headers": {"x-otlp-token": "env:SWEEP_OTLP"},
            "capture_arguments": True,
            "service_name": "sweep",
        },
        "sessions": {"key": "env:SWEEP_SESSION"},
        "ops": {"listen": "127.0.0.1:0"},
    }
    for key, value in (bad or {}).items():
        document[key] = {**document.get(key, {}), **value}
    return json.dumps(document, indent=1)


def environment(**extra: str) -> dict[str, str]:
    return gateway_env(
        SWEEP_WEB=SECRETS["http header (env:)"],
        SWEEP_OTLP=SECRETS["otlp header (env:)"],
        SWEEP_SESSION=SECRETS["session key (env:)"],
        **FAST_EXPORT,
        **extra,
    )


def forwarded(**more: list[str]) -> dict[str, list[str]]:
    return {"Authorization": [f"Bearer {SECRETS['forwarded Authorization']}"], **more}


async def reload(gw: GatewayProcess, document: str, outcome: str) -> None:
    """SIGHUP with `document` in place; waits for this reload's own outcome line."""

    def outcomes() -> list[str]:
        # `gateway: reload…` only: `gateway: ready` comes again whenever a restarted server is back
        return [line for line in gw.stdout if line.startswith("gateway: reload")]

    gw.routes_file.write_text(document)
    seen = len(outcomes())
    gw.signal(signal.SIGHUP)
    async with asyncio.timeout(60):
        while len(outcomes()) == seen:
            gw._new_line.clear()
            await gw._new_line.wait()
    assert outcomes()[seen] == f"gateway: {outcome}"


async def run_a(tmp_path: Path, sweep: Sweep) -> None:
    """Calls, failures, a key rotation and reloads against the scripted control plane."""
    (tmp_path / "cp.key").write_text(SECRETS["api_key (file:)"] + "\n")
    (tmp_path / "web.secret").write_text(SECRETS["http header (file:)"])
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(otlp_receiver())
        web = await stack.enter_async_context(http_server())
        cp = await stack.enter_async_context(ScriptedControlPlane(key=SECRETS["api_key (file:)"], hold_s=0.3))
        http = await stack.enter_async_context(httpx2.AsyncClient())
        document = routing(cp, web, receiver.url, api_key="file:cp.key")
        gw = await stack.enter_async_context(run_gateway(document, tmp_path, env=environment()))
        ids = [cp.call("echo", {"text": f"l{i}"}, channel="local", headers=forwarded()) for i in range(3)]
        ids += [cp.call("echo", {"text": f"w{i}"}, channel="web", headers=forwarded()) for i in range(3)]
        ids += [
            cp.call("fail", {"message": "as asked"}, channel="local", headers=forwarded()),
            cp.call("no_such_tool", channel="web", headers=forwarded()),
            cp.call("echo", {"text": "x"}, channel="nochannel", headers=forwarded()),
            cp.call("sleep_ms", {"ms": 10_000}, channel="local"),  # past request_timeout_s
            cp.enqueue(
                {
                    "jsonrpc": "2.0",
                    "id": "init",
                    "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}},
                },
                channel="web",
                headers=forwarded(**{"MCP-Protocol-Version": ["2025-11-25"]}),
            ),
        ]
        await cp.answers(ids)
        ids.append(cp.call("crash", channel="local"))  # the process dies mid-call
        await cp.answers(ids)

        # The key is rotated: the control plane refuses the old one, the gateway reads the file again.
        rotated = SECRETS["api_key (file:, rotated)"]
        cp.keys = {endpoint: {rotated} for endpoint in cp.keys}
        (tmp_path / "cp.key").write_text(rotated + "\n")
        ids.append(cp.call("echo", {"text": "after rotation"}, channel="local", headers=forwarded()))
        await cp.answers(ids)

        literal = SECRETS["literal in a bad reload"]
        bad_reloads = [
            {"servers": {"web": {"http": {"url": web, "headers": {"X-Api-Key": literal}}, "bogus": literal}}},
            {"sessions": {"key": literal[:12]}},
            {"control_plane": {"url": cp.url, "tunnel_id": cp.tunnel_id, "api_key": literal, "extra": literal}},
        ]
        for bad in bad_reloads:
            await reload(gw, routing(cp, web, receiver.url, api_key="file:cp.key", bad=bad), "reload rejected")
        # A header value no HTTP request can carry: refused at load, not a traceback on every call.
        unsendable = {"servers": {"web": {"http": {"url": web, "headers": {"X-Api-Key": literal + "\r\nX: y"}}}}}
        await reload(gw, routing(cp, web, receiver.url, api_key="file:cp.key", bad=unsendable), "reload rejected")
        ids.append(cp.call("echo", {"text": "unsendable"}, channel="web", headers=forwarded()))
        await cp.answers(ids)
        assert cp.text(ids[-1]) == "unsendable"
        await reload(gw, routing(cp, web, receiver.url, api_key="env:SWEEP_CP"), "reloaded")
        ids.append(cp.call("echo", {"text": "after reloads"}, channel="web", headers=forwarded()))
        await cp.answers(ids)
        await receiver.wait_for(lambda r: bool(r.spans) and bool(r.points))
        sweep.add("ops /metrics (run A)", [await scrape(http, gw)])
        assert await gw.stop() == 0
        gateway_output(sweep, gw, "gateway (run A)")
        sweep.add("answers (run A)", [post.body for post in cp.posts])
        sweep.add("OTLP exports (run A)", receiver.raw)
        assert cp.violations == []
        assert [cp.text(i) for i in ids[:6]] == ["l0", "l1", "l2", "w0", "w1", "w2"]
        assert cp.text(ids[-1]) == "after reloads"
        assert any(p.key == rotated for p in cp.polls), "the rotation was not exercised"
        assert len(receiver.raw) > 1


async def run_env_key(tmp_path: Path, sweep: Sweep) -> None:
    """`api_key: env:`: calls, then the control plane refuses the key (the operator's error)."""
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(otlp_receiver())
        web = await stack.enter_async_context(http_server())
        cp = await stack.enter_async_context(ScriptedControlPlane(key=SECRETS["api_key (env:)"], hold_s=0.3))
        (tmp_path / "web.secret").write_text(SECRETS["http header (file:)"])
        env = environment(SWEEP_CP=SECRETS["api_key (env:)"])
        document = routing(cp, web, receiver.url, api_key="env:SWEEP_CP")
        gw = await stack.enter_async_context(run_gateway(document, tmp_path, env=env))
        rid = cp.call("echo", {"text": "env"}, channel="web", headers=forwarded())
        await cp.answer(rid)
        assert cp.text(rid) == "env"
        cp.keys = {endpoint: {"someone-else"} for endpoint in cp.keys}
        polls = len(cp.polls)
        await cp.until(lambda: any(p.status == 401 for p in cp.polls[polls:]), what="a refused key")
        await gw.wait_for("rejected the tunnel credentials", stream="stderr")
        await gw.stop()
        gateway_output(sweep, gw, "gateway (env: key)")
        sweep.add("answers (env: key)", [post.body for post in cp.posts])
        sweep.add("OTLP exports (env: key)", receiver.raw)


# --------------------------------------------------------------------------- run B: the embedded relay


@contextlib.asynccontextmanager
async def embedded_relay(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    document = json.dumps(
        {
            "relay": {"listen": "127.0.0.1:0", "client_token": "env:SWEEP_RELAY"},
            "servers": {"local": stdio()},
            "channels": {"main": ["local"]},
            "sessions": {"key": "env:SWEEP_SESSION"},
            "ops": {"listen": "127.0.0.1:0"},
        }
    )
    env = environment(SWEEP_RELAY=SECRETS["relay client_token (env:)"])
    async with run_gateway(document, tmp_path, env=env) as gw:
        yield gw


async def run_b(tmp_path: Path, sweep: Sweep) -> None:
    """An official SDK client through the embedded relay with its client token; one without it."""
    token = SECRETS["relay client_token (env:)"]
    answers: list[str] = []
    async with embedded_relay(tmp_path) as gw, httpx2.AsyncClient() as http:
        url = (await gw.wait_for(r"MCP endpoint \(channel main\): (\S+)"))[1]
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as authorized,
            Client(streamable_http_client(url, http_client=authorized), mode="legacy") as client,  # type: ignore[arg-type]
        ):
            answers.append(repr(await client.call_tool("echo", {"text": "through the relay"})))
            answers.append(repr(await client.call_tool("fail", {"message": "as asked"})))
            with pytest.raises(MCPError) as unknown:
                await client.get_prompt("no-such-prompt", {})
            answers.append(repr(unknown.value))
        refused = await legacy_initialize(http, url)
        assert refused.status_code == 401
        answers += [refused.text, json.dumps(dict(refused.headers))]
        wrong = await http.post(url, json={}, headers={"Authorization": f"Bearer {token}x"})
        answers += [wrong.text, json.dumps(dict(wrong.headers))]
        sweep.add("ops /metrics (run B)", [await scrape(http, gw)])
        await gw.stop()
    sweep.add("gateway (run B) stdout", [line for line in gw.stdout if not line.startswith(TOKEN_PRINT)])
    sweep.add("gateway (run B) stderr", gw.stderr)
    sweep.add("answers (run B)", answers)
    assert "through the relay" in answers[0]


# --------------------------------------------------------------------------- a bad configuration at start


async def start_from_a_bad_file(tmp_path: Path, sweep: Sweep) -> None:
    """`gateway --routes` and `gateway check` on files that are wrong next to configured secrets."""
    literal = SECRETS["literal in a bad reload"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        json.dumps(
            {
                "control_plane": {"url": "http://127.0.0.1:9", "tunnel_id": "t", "api_key": literal, "extra": literal},
                "servers": {"s": stdio()},
                "channels": {"main": ["s"]},
            }
        )
    )
    for args in (["--routes", str(bad)], ["check", str(bad)]):
        await refused_at_start(sweep, f"gateway {args[0]} on a bad file", *args)


async def refused_at_start(sweep: Sweep, where: str, *args: str) -> None:
    """`python -m gateway.cli ARGS` exits with the configuration error status; its output is swept."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "gateway.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await proc.communicate()
    assert proc.returncode == 2
    sweep.add(where, [out, err])


async def test_no_configured_secret_reaches_output_telemetry_metrics_or_answers(tmp_path: Path) -> None:
    sweep = Sweep()
    for name, run in (("a", run_a), ("env", run_env_key), ("b", run_b), ("bad", start_from_a_bad_file)):
        folder = tmp_path / name
        folder.mkdir()
        await run(folder, sweep)
    assert sweep.leaks(SECRETS) == []
    assert sweep.searched() > 100, "the sweep searched too little to mean anything"


# --------------------------------------------------------------------------- defect 9


async def test_configured_client_token_and_url_passwords_stay_out_of_output(tmp_path: Path) -> None:
    """Defect 9 (issue 14): the embedded relay printed a configured client token on stdout, and a
    configuration error echoed a URL's password."""
    sweep = Sweep()
    async with embedded_relay(tmp_path) as gw:
        await gw.stop()
    sweep.add("gateway stdout (embedded relay)", [line for line in gw.stdout if line.startswith(TOKEN_PRINT)])
    bad = tmp_path / "bad.yaml"
    url = f"ftp://user:{URL_PASSWORD}@127.0.0.1/mcp"
    bad.write_text(json.dumps({"servers": {"s": {"http": {"url": url}}}, "channels": {"main": ["s"]}}))
    await refused_at_start(sweep, "gateway on a bad URL", "--routes", str(bad))
    assert sweep.leaks({**SECRETS, "URL password": URL_PASSWORD}) == []


# ---------------------------------------------------------- the embedded relay's client token (issue 14, defect 9)


async def test_the_embedded_relay_never_prints_a_configured_client_token(tmp_path: Path) -> None:
    """Defect 9: the embedded relay printed its client token on stdout (journals keep it)."""
    token = "SECRET-client-token-0042"
    document = {
        "servers": {"main": stdio()},
        "channels": {"main": ["main"]},
        "relay": {"listen": "127.0.0.1:0", "client_token": "env:MCP_CLIENT_TOKEN"},
    }
    async with run_gateway(json.dumps(document), tmp_path, env=gateway_env(MCP_CLIENT_TOKEN=token)) as gw:
        await gw.wait_for(r"^clients send: Authorization: Bearer <")
    assert not [line for line in gw.stdout + gw.stderr if token in line]
