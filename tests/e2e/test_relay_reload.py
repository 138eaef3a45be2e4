"""`SIGHUP` to a real `gateway relay` process: relay.yaml read again and applied without closing the
listener, a waiting poll or a waiting caller; a change that needs a restart, or a broken file, is
rejected with the reason and the running settings keep serving; no secret the new file brings is
ever printed.

The gateway side is played over raw HTTP (the Secure MCP Tunnel v1 poll/response API), so each test
decides exactly when a poll or a caller is waiting; the MCP side POSTs JSON-RPC to the relay's
Streamable HTTP endpoint (MCP spec 2025-06-18, Basic > Transports > Streamable HTTP, "Sending
Messages to the Server": a request answered with one JSON object). Readiness comes from printed
lines and `/api/status`, never from a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from tests.support.harness import PYTHON, Process, process
from tests.support.identity import (
    SUBJECT,
    IssuerKey,
    access_token,
    claims,
    identity_yaml,
    jwks_server,
    write_signing_key,
)
from tests.support.openapi import validate
from tests.support.sweep import Sweep
from tests.support.waiting import until

TUNNEL = "t_reload"
KEY_A = "rl-gwkey-A-Hn38dk20Qz"
KEY_B = "rl-gwkey-B-Wq71bz04Lm"
TOKEN_1 = "rl-client-1-Pp09xa55Rt"
TOKEN_2 = "rl-client-2-Jd62mc18Ks"
SECRETS = {
    "gateway key B (rotated in)": KEY_B,
    "client token 2 (rotated in)": TOKEN_2,
    "ops token (added)": "rl-opstok-Ux45ne92Vb",
    "literal in a rejected reload": "rl-rejected-Gg27hy63Nc",
    "literal in a broken file": "rl-broken-Zr84fs31Ye",
    "gateway key of an added tunnel": "rl-added-Tq52vw87Hd",
}
LIST_TOOLS = {"jsonrpc": "2.0", "id": "rpc-1", "method": "tools/list", "params": {}}


def relay_yaml(
    *,
    key: str = KEY_A,
    tokens: tuple[str, ...] = (),
    listen: str = "127.0.0.1:0",
    extra: dict[str, Any] | None = None,
    **tunnels: str,
) -> str:
    """A relay.yaml (JSON is YAML) with tunnel `TUNNEL` and any further `tunnels` (id -> gateway key)."""
    document: dict[str, Any] = {
        "listen": listen,
        "tunnels": {
            TUNNEL: {"gateway_key": key, "client_tokens": list(tokens)},
            **{tunnel_id: {"gateway_key": other} for tunnel_id, other in tunnels.items()},
        },
        "client_seen_grace_s": 1,
        **(extra or {}),
    }
    return json.dumps(document, indent=1)


@dataclass
class RunningRelay:
    """A `gateway relay` process, its base URL, and its config file and stderr log."""

    process: Process
    url: str
    file: Path
    log: Path
    http: aiohttp.ClientSession

    async def reload(self, document: str, outcome: str) -> str:
        """SIGHUP with `document` in place; this reload's own outcome line, which must start with `outcome`."""
        self.file.write_text(document)
        seen = len(self.process.lines)
        self.process.proc.send_signal(signal.SIGHUP)
        line = (await self.process.wait_for(r"^relay: reload", after=seen)).string
        assert line.startswith(f"relay: {outcome}"), line
        assert self.process.proc.returncode is None, "SIGHUP ended the relay"
        return line

    # the gateway side (Secure MCP Tunnel v1)
    async def poll(self, key: str, *, timeout_ms: int = 1, tunnel: str = TUNNEL) -> tuple[int, Any]:
        params = {"timeout_ms": str(timeout_ms)}
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.get(f"{self.url}/v1/tunnels/{tunnel}/poll", params=params, headers=headers) as resp:
            body = await resp.read()
            return resp.status, json.loads(body) if body else None

    async def respond(self, key: str, command: dict[str, Any], result: object, *, tunnel: str = TUNNEL) -> int:
        payload = {
            "request_id": command["request_id"],
            "resp_code": 200,
            "resp_type": "jsonrpc_response",
            "resp_json": {"jsonrpc": "2.0", "id": "rpc-1", "result": result},
        }
        validate("TunnelResponsePayload", payload)
        headers = {"Authorization": f"Bearer {key}", "X-Tunnel-Shard-Token": command["shard_token"]}
        async with self.http.post(f"{self.url}/v1/tunnels/{tunnel}/response", json=payload, headers=headers) as resp:
            return resp.status

    # the MCP side
    async def call(self, token: str | None, *, tunnel: str = TUNNEL) -> tuple[int, Any]:
        headers = {"Accept": "application/json, text/event-stream"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.post(f"{self.url}/v1/mcp/{tunnel}", json=LIST_TOOLS, headers=headers) as resp:
            body = await resp.read()
            return resp.status, json.loads(body) if body else None

    async def status(self, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(f"{self.url}/api/status", headers=headers) as resp:
            return resp.status, (await resp.json()) if resp.status == 200 else None

    async def polls_waiting(self, tunnel: str = TUNNEL) -> int:
        _, status = await self.status()
        return int(next(row["polls_waiting"] for row in status["tunnels"] if row["id"] == tunnel))

    async def tunnels(self) -> list[str]:
        """The tunnels the relay's status lists (the ones it serves now)."""
        _, status = await self.status()
        return [row["id"] for row in status["tunnels"]]

    def output(self) -> Sweep:
        sweep = Sweep()
        sweep.add("relay stdout", self.process.lines)
        sweep.add("relay stderr", self.log.read_text(errors="replace").splitlines())
        return sweep


@contextlib.asynccontextmanager
async def running_relay(tmp_path: Path, document: str) -> AsyncIterator[RunningRelay]:
    """`gateway relay --config relay.yaml` at DEBUG (the most it ever logs), ready once it says so."""
    file, log = tmp_path / "relay.yaml", tmp_path / "relay.stderr"
    file.write_text(document)
    with log.open("wb") as stderr:
        args = ("-m", "gateway.cli", "--log-level", "DEBUG", "relay", "--config", file)
        async with process(PYTHON, *args, stderr=stderr) as proc, aiohttp.ClientSession() as http:
            url = (await proc.wait_for(r"relay: ready (\S+)"))[1]
            yield RunningRelay(proc, url, file, log, http)


async def refused_at_start(file: Path) -> str:
    """What `gateway relay --config file` says on stderr when it refuses to start (exit status 2)."""
    args = ("-m", "gateway.cli", "relay", "--config", str(file))
    proc = await asyncio.create_subprocess_exec(PYTHON, *args, stdout=PIPE, stderr=PIPE, stdin=DEVNULL)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    return err.decode().strip().removeprefix("gateway relay: ")


async def answered_call(
    relay: RunningRelay, token: str | None, key: str, result: object, *, tunnel: str = TUNNEL
) -> tuple[int, Any]:
    """One MCP call the gateway side (polling with `key`) takes and answers with `result`."""
    caller = asyncio.ensure_future(relay.call(token, tunnel=tunnel))
    try:
        status, body = await relay.poll(key, timeout_ms=30_000, tunnel=tunnel)
        assert status == 200, (status, body)
        assert await relay.respond(key, body["commands"][0], result, tunnel=tunnel) == 200
        return await caller
    finally:
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller


async def test_gateway_key_rotated_while_a_poll_waits(tmp_path: Path) -> None:
    """Key A -> B with SIGHUP while a poll holds open with A: that poll is answered normally (it
    brings the next command), then A gets 401 and B is accepted."""
    async with running_relay(tmp_path, relay_yaml(key=KEY_A)) as relay:
        held = asyncio.ensure_future(relay.poll(KEY_A, timeout_ms=120_000))
        try:
            await until(lambda: _waiting(relay, held))
            await relay.reload(relay_yaml(key=KEY_B), "reloaded")
            assert not held.done(), "the reload ended the waiting poll"
            caller = asyncio.ensure_future(relay.call(None))
            status, body = await held
            assert status == 200, (status, body)  # the poll admitted with A ran on and got the command
            validate("PolledCommandList", body)
            assert await relay.respond(KEY_B, body["commands"][0], {"tools": []}) == 200
            assert await caller == (200, {"jsonrpc": "2.0", "id": "rpc-1", "result": {"tools": []}})
        finally:
            held.cancel()
        assert (await relay.poll(KEY_A))[0] == 401
        assert (await relay.poll(KEY_B))[0] == 204
        assert await relay.reload(relay_yaml(key=KEY_B), "reloaded")  # the same file again: nothing changes


async def _waiting(relay: RunningRelay, held: asyncio.Future[Any], tunnel: str = TUNNEL) -> bool:
    assert not held.done(), held.result()
    return await relay.polls_waiting(tunnel) == 1


async def test_client_tokens_rotated_while_a_caller_waits(tmp_path: Path) -> None:
    """client_tokens [1] -> [2] while a caller admitted with token 1 waits for its answer: it gets the
    answer; afterwards token 1 gets 401 and token 2 is let through."""
    async with running_relay(tmp_path, relay_yaml(tokens=(TOKEN_1,))) as relay:
        caller = asyncio.ensure_future(relay.call(TOKEN_1))
        try:
            status, body = await relay.poll(KEY_A, timeout_ms=30_000)
            assert status == 200, (status, body)  # the command is out: its caller is waiting
            await relay.reload(relay_yaml(tokens=(TOKEN_2,)), "reloaded")
            assert not caller.done(), "the reload ended the waiting caller"
            assert await relay.respond(KEY_A, body["commands"][0], {"tools": [], "n": 1}) == 200
            assert await caller == (200, {"jsonrpc": "2.0", "id": "rpc-1", "result": {"tools": [], "n": 1}})
        finally:
            caller.cancel()
        status, body = await relay.call(TOKEN_1)
        assert status == 401, body
        assert await answered_call(relay, TOKEN_2, KEY_A, {"n": 2}) == (
            200,
            {"jsonrpc": "2.0", "id": "rpc-1", "result": {"n": 2}},
        )


async def test_a_change_that_needs_a_restart_is_rejected(tmp_path: Path) -> None:
    """A new `listen` beside an added tunnel and a new key: rejected, naming `listen`; the old key keeps
    working, and neither the new file's key nor its tunnel does (nothing of it was applied)."""
    async with running_relay(tmp_path, relay_yaml(key=KEY_A)) as relay:
        literal = SECRETS["literal in a rejected reload"]
        document = relay_yaml(key=KEY_B, listen="127.0.0.1:1", t_new=literal)
        line = await relay.reload(document, "reload rejected")
        assert line == "relay: reload rejected: listen takes effect on restart"
        assert (await relay.poll(KEY_A))[0] == 204
        assert (await relay.poll(KEY_B))[0] == 401
        assert (await relay.poll(literal, tunnel="t_new"))[0] == 401
        assert await relay.tunnels() == [TUNNEL]
        assert await answered_call(relay, None, KEY_A, {}) == (200, {"jsonrpc": "2.0", "id": "rpc-1", "result": {}})
        assert relay.output().leaks(SECRETS) == []


async def test_a_tunnel_added_and_another_removed_while_calls_wait(tmp_path: Path) -> None:
    """Tunnels come and go with SIGHUP, and the others serve on: a tunnel added serves its gateway and
    callers at once while a call on the first tunnel stays in flight across the reload. Removing it
    again answers its waiting poll with nothing and its waiting caller with 404 at once (not at their
    timeouts); its gateway key is refused from then on, its MCP URL answers 404, and the status lists
    only the tunnel kept. The log names each tunnel added and removed."""
    added, key = "t_added", SECRETS["gateway key of an added tunnel"]
    async with running_relay(tmp_path, relay_yaml(key=KEY_A)) as relay:
        first = asyncio.ensure_future(relay.call(None))
        removed_caller: asyncio.Future[tuple[int, Any]] | None = None
        held: asyncio.Future[tuple[int, Any]] | None = None
        try:
            status, body = await relay.poll(KEY_A, timeout_ms=30_000)
            assert status == 200, (status, body)  # the first tunnel's call is in flight
            await relay.reload(relay_yaml(key=KEY_A, t_added=key), "reloaded")
            assert await answered_call(relay, None, key, {"on": added}, tunnel=added) == (
                200,
                {"jsonrpc": "2.0", "id": "rpc-1", "result": {"on": added}},
            )
            assert sorted(await relay.tunnels()) == sorted([TUNNEL, added])
            assert f"relay: tunnel(s) added: {added}" in relay.log.read_text()

            removed_caller = asyncio.ensure_future(relay.call(None, tunnel=added))
            status, taken = await relay.poll(key, timeout_ms=30_000, tunnel=added)
            assert status == 200, (status, taken)  # its command is out: the caller waits for the answer
            held = asyncio.ensure_future(relay.poll(key, timeout_ms=120_000, tunnel=added))
            await until(lambda: _waiting(relay, held, added))
            await relay.reload(relay_yaml(key=KEY_A), "reloaded")
            async with asyncio.timeout(30):  # a bound, far below the waits' own timeouts
                assert await held == (204, None)
                status, refusal = await removed_caller
            assert status == 404, refusal
            assert "removed" in json.dumps(refusal), refusal
            assert await relay.respond(key, taken["commands"][0], {}, tunnel=added) == 401
            assert (await relay.poll(key, tunnel=added))[0] == 401
            assert (await relay.call(None, tunnel=added))[0] == 404
            assert await relay.tunnels() == [TUNNEL]
            assert f"relay: tunnel(s) removed: {added}" in relay.log.read_text()

            assert not first.done(), "a reload ended the first tunnel's waiting caller"
            assert await relay.respond(KEY_A, body["commands"][0], {"n": 1}) == 200
            assert await first == (200, {"jsonrpc": "2.0", "id": "rpc-1", "result": {"n": 1}})
        finally:
            for waiting in (first, removed_caller, held):
                if waiting is not None:
                    waiting.cancel()
        assert relay.output().leaks(SECRETS) == []


async def test_a_broken_file_is_rejected_with_file_key_and_expectation(tmp_path: Path) -> None:
    """Bad YAML, an unknown key and a secret reference that does not resolve: each rejected with the
    file, the key and what was expected, as at start; the relay serves on with its old settings."""
    async with running_relay(tmp_path, relay_yaml(key=KEY_A)) as relay:
        literal = SECRETS["literal in a broken file"]
        file = str(relay.file)
        line = await relay.reload(f"tunnels: {{{TUNNEL}: {{gateway_key: '{literal}'", "reload rejected")
        assert line.startswith(f"relay: reload rejected: {file}: $: not valid YAML"), line
        unknown = relay_yaml(key=literal, extra={"bogus": literal})
        line = await relay.reload(unknown, "reload rejected")
        assert line == f"relay: reload rejected: {file}: $: Object contains unknown field `bogus`", line
        unresolved = relay_yaml(key="env:RELAY_RELOAD_TEST_UNSET_VARIABLE")
        line = await relay.reload(unresolved, "reload rejected")
        assert line.startswith(f"relay: reload rejected: {file}: $.tunnels.{TUNNEL}.gateway_key: "), line
        assert "RELAY_RELOAD_TEST_UNSET_VARIABLE" in line
        assert await refused_at_start(relay.file) == line.removeprefix("relay: reload rejected: ")  # the same words
        assert (await relay.poll(KEY_A))[0] == 204
        assert (await relay.poll(literal))[0] == 401
        assert relay.output().leaks(SECRETS) == []


async def test_no_secret_a_reload_brings_is_printed(tmp_path: Path) -> None:
    """Good and rejected reloads bringing new keys, client tokens and an ops token, and calls made with
    right and wrong ones: no such value appears on the relay's stdout or stderr (at DEBUG). The ops
    token applies too: the console needs it after the reload."""
    async with running_relay(tmp_path, relay_yaml(key=KEY_A, tokens=(TOKEN_1,))) as relay:
        assert (await relay.status())[0] == 200  # loopback, no token: the console is open
        ops = SECRETS["ops token (added)"]
        await relay.reload(relay_yaml(key=KEY_B, tokens=(TOKEN_2,), extra={"ops": {"token": ops}}), "reloaded")
        await relay.reload(
            relay_yaml(key=SECRETS["literal in a rejected reload"], listen="127.0.0.1:1"), "reload rejected"
        )
        await relay.reload(
            relay_yaml(key=SECRETS["literal in a broken file"], extra={"queue_max": -1}), "reload rejected"
        )
        assert (await relay.status())[0] == 401
        assert (await relay.status(ops))[0] == 200
        assert (await relay.call(TOKEN_1))[0] == 401
        assert (await relay.call(KEY_B))[0] == 401
        assert (await relay.poll(TOKEN_2))[0] == 401
        assert (await answered_call(relay, TOKEN_2, KEY_B, {}))[0] == 200
        sweep = relay.output()
        assert any("relay: reloaded" in line for line in sweep.texts["relay stdout"])
        assert sweep.leaks(SECRETS) == []


def identity_relay(jwks_url: str, keys: list[Path], tunnels: list[str], **options: Any) -> str:
    """A relay.yaml whose tunnels the subject's access tokens (`POST /oauth/token`) may poll as `tunnels` say."""
    return (
        f"listen: 127.0.0.1:0\ntunnels:\n  {TUNNEL}: {{gateway_key: {KEY_A}}}\n  t_other: {{gateway_key: k}}\n"
        + identity_yaml(jwks_url, keys, {SUBJECT: tunnels}, **options)
    )


async def test_identity_signing_keys_rotated_and_subjects_changed(tmp_path: Path) -> None:
    """`identity:` applies at run time (RFC 8693 exchange at `POST /oauth/token`): a new signing key
    put first signs the next tokens while the old one, kept second, still verifies those it signed;
    dropping it refuses them; a subject losing a tunnel loses it at once. Moving an issuer's key
    source is rejected as taking effect on restart."""
    old, new = write_signing_key(tmp_path / "old.pem"), write_signing_key(tmp_path / "new.pem")
    issuer = IssuerKey.ec()
    async with (
        jwks_server([issuer]) as jwks,
        running_relay(tmp_path, identity_relay(jwks.url, [old], [TUNNEL])) as relay,
    ):
        token_old = await access_token(relay.http, relay.url, issuer.sign(claims()))
        assert (await relay.poll(token_old))[0] == 204
        await relay.reload(identity_relay(jwks.url, [new, old], [TUNNEL], token_ttl_s=600), "reloaded")
        token_new = await access_token(relay.http, relay.url, issuer.sign(claims()))
        assert jwt.get_unverified_header(token_new)["kid"] != jwt.get_unverified_header(token_old)["kid"]
        assert (await relay.poll(token_old))[0] == 204
        assert (await relay.poll(token_new))[0] == 204
        await relay.reload(identity_relay(jwks.url, [new], [TUNNEL]), "reloaded")
        assert (await relay.poll(token_old))[0] == 401
        assert (await relay.poll(token_new))[0] == 204
        await relay.reload(identity_relay(jwks.url, [new], ["t_other"]), "reloaded")
        assert (await relay.poll(token_new))[0] == 401
        moved = identity_relay(jwks.url + "?moved", [new], [TUNNEL])
        line = await relay.reload(moved, "reload rejected")
        assert line == "relay: reload rejected: identity.issuers takes effect on restart"
        assert (await relay.poll(token_new))[0] == 401  # the rejected file's subjects were not applied
