"""Edge enforcement (`user_auth:` on the relay): users' tokens checked before a request crosses the tunnel.

The same real parts as tests/e2e/test_oauth_e2e.py (the SDK's authorization routes issuing JWTs, the
SDK's resource-server auth, `gateway relay`, the gateway), with the relay's tunnel under `user_auth`
(the authorization server as issuer, its JWKS, scope `notes` required). Tokens a client could
present are minted by the authorization server's test route, with its key or a foreign one. The
protected server counts every request that reaches it, so "never reaches the server" is counted,
not assumed. Each test names the RFC 6750 / RFC 9068 / RFC 9728 / MCP authorization section it checks.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.protocol.oauth import resource_metadata
from tests.e2e.test_oauth_e2e import TUNNEL, Stack, authorized_session, oauth_stack
from tests.support.otlp_receiver import otlp_receiver

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Stack]:
    async with oauth_stack(tmp_path, user_auth=True) as running:
        yield running


async def mint(stack: Stack, **claims: Any) -> str:
    now = int(time.time())
    document = {"sub": "alice", "aud": stack.url("notes"), "exp": now + 600, "iat": now, "scope": "notes", **claims}
    async with httpx2.AsyncClient() as http:
        token: str = (await http.post(f"{stack.issuer}/test/mint", json=document)).json()["token"]
    return token


def tampered(token: str) -> str:
    """The same token with its payload's subject changed and the signature kept."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


async def reached(stack: Stack) -> int:
    async with httpx2.AsyncClient() as http:
        counts: dict[str, int] = (await http.get(f"{stack.server}/test/requests")).json()
    return counts["total"]


async def test_bad_tokens_are_refused_at_the_relay_and_never_reach_the_server(edge: Stack) -> None:
    """RFC 6750 §3 and §3.1 (no credentials: a challenge without an error code; a bad token:
    `invalid_token`; too little scope: 403 `insufficient_scope` with the scope needed), RFC 9068 §4
    (signature by the issuer's key, `iss`, `aud` = this resource, `exp`), RFC 9728 §5.1 (the
    challenge names the channel's metadata at the relay). None of these requests reaches the
    private server: its request count does not move."""
    url = edge.url("notes")
    now = int(time.time())
    valid = await mint(edge)
    cases = {
        "missing": None,
        "expired": await mint(edge, exp=now - 3600, iat=now - 7200),
        "wrong audience": await mint(edge, aud=f"{edge.relay}/v1/mcp/{TUNNEL}/other"),
        "tampered": tampered(valid),
        "foreign key": await mint(edge, foreign=True),
        "other issuer": await mint(edge, iss="https://evil.example"),
        "not a JWT": "opaque-token-123",
        "no scope": await mint(edge, scope="other"),
    }
    before = await reached(edge)
    answers: dict[str, httpx2.Response] = {}
    async with httpx2.AsyncClient() as http:
        for name, token in cases.items():
            headers = {**ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
            answers[name] = await http.post(url, json=LIST, headers=headers)
    assert await reached(edge) == before
    metadata_url = f"{edge.relay}/.well-known/oauth-protected-resource/v1/mcp/{TUNNEL}/notes"
    for name, answer in answers.items():
        challenge = answer.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer "), name
        assert resource_metadata(challenge) == metadata_url, name
        if name == "missing":
            assert answer.status_code == 401
            assert "error=" not in challenge
        elif name == "no scope":
            assert answer.status_code == 403
            assert 'error="insufficient_scope"' in challenge
            assert 'scope="notes"' in challenge
        else:
            assert answer.status_code == 401, name
            assert 'error="invalid_token"' in challenge, name
        for token in cases.values():
            assert token is None or token not in answer.text
    assert "expired" in answers["expired"].headers["WWW-Authenticate"]
    async with httpx2.AsyncClient() as http:
        passed = await http.post(url, json=LIST, headers={**ACCEPT, "Authorization": f"Bearer {valid}"})
    assert passed.status_code == 200
    assert await reached(edge) > before  # the call (and the gateway's era probe with that token)


async def test_the_subject_is_on_the_span_and_the_audit_line_without_the_token(tmp_path: Path) -> None:
    """Issue 18, scope 3: the subject (`sub`) goes on the request's span (`user.id`) and on one audit
    line per request on a checked channel: who, channel, method, tool, outcome, duration; no
    payload, no token. A valid token with too little scope is audited under its subject."""
    async with otlp_receiver() as receiver, oauth_stack(tmp_path, receiver=receiver.url, user_auth=True) as edge:
        token = await mint(edge, sub="bob")
        narrow = await mint(edge, sub="carol", scope="other")
        params = {"name": "echo", "arguments": {"text": "x"}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
        url = edge.url("notes")
        async with httpx2.AsyncClient() as http:
            headers = {**ACCEPT, "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
            assert (await http.post(url, json=call, headers=headers)).status_code == 200
            assert (await http.post(url, json=call, headers=ACCEPT)).status_code == 401
            refused = await http.post(url, json=call, headers={**ACCEPT, "Authorization": f"Bearer {narrow}"})
            assert refused.status_code == 403
        await receiver.wait_for(lambda r: any(span.attributes.get("user.id") == "bob" for span in r.spans))
        await edge.relay_process.stop()
    log = (tmp_path / "relay.err").read_text()
    lines = [line for line in log.splitlines() if "audit " in line]
    audited = r"audit subject=bob tunnel=\S+ channel=notes method=tools/call tool=echo outcome=\d+ duration_ms=\d+"
    assert any(re.search(audited, line) for line in lines), lines
    assert any(re.search(r"audit subject=- .* method=tools/call tool=echo outcome=401 ", line) for line in lines), lines
    assert any(re.search(r"audit subject=carol .* outcome=403 ", line) for line in lines), lines
    assert token not in log
    assert '"text"' not in log


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_the_sdk_client_still_authorizes_and_calls_through_the_edge_check(edge: Stack, mode: str) -> None:
    """MCP authorization, "Authorization Flow Steps", with the relay checking the token: the SDK
    client's token (audience the channel URL, RFC 8707; scope `notes`) passes; its first, tokenless
    request gets the relay's own challenge, which leads it to the same discovery."""
    run = await authorized_session(edge.url("notes"), mode)
    assert run.whoami["subject"] == "alice"
    assert run.echoed == "through the tunnel"
