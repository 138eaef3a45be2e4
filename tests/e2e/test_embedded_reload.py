"""`SIGHUP` and the relay embedded in the gateway (no `control_plane:`): the `relay:` section reloads with
routing.yaml. A rotated `client_token` applies without a restart (the old token is refused, the new one
served, on the same listener); a changed `listen` is refused naming the key while the rest of the file
applies; a token that does not resolve rejects the reload, naming `relay.client_token` and no value. And
the secrets a reloaded file names are masked in the log from a new server's first stderr line on."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx2

from tests.support.harness import PYTHON, SERVERS, Gateway, gateway, legacy_initialize, stdio_server
from tests.support.waiting import until

TOKEN_A = "embedded-token-a-4f1c9e"
TOKEN_B = "embedded-token-b-8d2a7b"
ENV = {"MCP_TOKEN_A": TOKEN_A, "MCP_TOKEN_B": TOKEN_B}


def routes(client_token: str, listen: str = "127.0.0.1:0") -> str:
    return (
        f"relay: {{listen: '{listen}', client_token: '{client_token}'}}\n"
        f"servers:\n  srv: {stdio_server()}\nchannels:\n  main: [srv]\n"
    )


async def status_with(url: str, token: str | None) -> int:
    """The HTTP status of an `initialize` sent with `token` as the bearer (MCP 2025-11-25, basic/authorization:
    a request without a valid token is answered 401)."""
    async with httpx2.AsyncClient() as http:
        bearer = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return (await legacy_initialize(http, url, **bearer)).status_code


async def reload(gw: Gateway, file: Path, document: str) -> str:
    """Write `document`, send SIGHUP, and return the gateway's verdict line."""
    after = len(gw.process.lines)
    await asyncio.to_thread(file.write_text, document)
    gw.process.proc.send_signal(signal.SIGHUP)
    return (await gw.process.wait_for(r"^gateway: reload.*", after=after))[0]


async def test_a_rotated_client_token_applies_without_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    file = tmp_path / "routing.yaml"
    with log.open("wb") as stderr:
        async with gateway(routes("env:MCP_TOKEN_A"), tmp_path, env=ENV, stderr=stderr) as gw:
            url = gw.urls["main"]
            assert await status_with(url, TOKEN_A) == 200
            assert await status_with(url, None) == 401

            assert await reload(gw, file, routes("env:MCP_TOKEN_B")) == "gateway: reloaded"
            await until(lambda: "embedded relay applied" in log.read_text(), within_s=10)
            assert await status_with(url, TOKEN_B) == 200  # the same listener, the new token
            assert await status_with(url, TOKEN_A) == 401

            # `listen` is fixed at start: named, not applied; the token change beside it waits too
            moved = routes("env:MCP_TOKEN_A", listen="127.0.0.1:1")
            assert await reload(gw, file, moved) == "gateway: reloaded"
            await until(lambda: "relay.listen takes effect on restart only" in log.read_text(), within_s=10)
            assert await status_with(url, TOKEN_B) == 200
            assert await status_with(url, TOKEN_A) == 401

            # back to the running listen: compared with what runs, not with the refused file, the token applies
            assert await reload(gw, file, routes("env:MCP_TOKEN_A")) == "gateway: reloaded"
            await until(lambda: log.read_text().count("embedded relay applied") == 2, within_s=10)
            assert await status_with(url, TOKEN_A) == 200
            assert await status_with(url, TOKEN_B) == 401

            # a token that does not resolve: the whole reload is rejected, the running one keeps serving
            assert await reload(gw, file, routes("env:MCP_TOKEN_MISSING")) == "gateway: reload rejected"
            assert await status_with(url, TOKEN_A) == 200
    text = log.read_text()
    assert "relay.client_token" in text
    assert "MCP_TOKEN_MISSING" in text
    assert TOKEN_A not in text
    assert TOKEN_B not in text


LEAK = "leak-7f3a9c2e1b5d"
LEAKY = """
import os, runpy, sys

sys.stderr.write("my token is " + os.environ["LEAK"] + "\\n")
sys.stderr.flush()
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


async def test_a_secret_a_reload_brings_is_masked_from_the_first_line(tmp_path: Path) -> None:
    """A server added by a reload, with a secret in its `env`, that prints it to stderr: the gateway logs the
    line with the secret masked (the redactor learns a reloaded file's secrets before its servers start)."""
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    log = tmp_path / "gateway.log"
    file = tmp_path / "routing.yaml"
    leaky = (
        f'{{stdio: {{command: "{PYTHON}", args: ["{script}", "{SERVERS / "sdk_server.py"}"], '
        "env: {LEAK: 'env:LEAK_SECRET'}}}"
    )
    with log.open("wb") as stderr:
        async with gateway(routes("env:MCP_TOKEN_A"), tmp_path, env={**ENV, "LEAK_SECRET": LEAK}, stderr=stderr) as gw:
            document = (
                "relay: {listen: '127.0.0.1:0', client_token: 'env:MCP_TOKEN_A'}\n"
                f"servers:\n  srv: {stdio_server()}\n  leaky: {leaky}\n"
                "channels:\n  main: [srv]\n  more: [leaky]\n"
            )
            assert await reload(gw, file, document) == "gateway: reloaded"
            await until(lambda: "my token is" in log.read_text(), within_s=30)
    text = log.read_text()
    assert "my token is [REDACTED]" in text
    assert LEAK not in text
