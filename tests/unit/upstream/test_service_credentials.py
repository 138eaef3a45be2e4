"""`ServiceCredentials` (gateway/upstream/service_credentials.py) against a real token endpoint on loopback
(tests/support/oauth_token_service.py): one request in flight per key, the 401-then-retry-once rule, the
bounded per-user cache, and what a caller is answered when no token can be had. The MCP server side is
a `send` function of the test's (the transport's own interface), so a refusal can be scripted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from msgspec import Raw

from gateway.config.secrets import Secret
from gateway.protocol.errors import ServiceCredentialRefused, UpstreamHttpError, UpstreamUnavailable
from gateway.protocol.mcp import Call, Frame, Reply
from gateway.protocol.service_tokens import bearer_token
from gateway.upstream.service_credentials import ServiceCredentials, ServiceCredentialSettings
from tests.support.oauth_token_service import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, TokenService

SECRET = "unit-secret-0042"
CHALLENGE = {"WWW-Authenticate": ['Bearer resource_metadata="https://relay.example/.well-known/x"']}


@pytest.fixture
async def idp() -> AsyncIterator[TokenService]:
    async with TokenService(client_id="gw", client_secret=SECRET) as service:
        yield service


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def credentials(
    idp: TokenService,
    session: aiohttp.ClientSession,
    *,
    on_behalf_of: bool,
    token_url: str | None = None,
    learn_secret: Callable[[str], None] | None = None,
    **extra: object,
) -> ServiceCredentials:
    settings = ServiceCredentialSettings(
        token_url=token_url or idp.token_url,
        on_behalf_of=on_behalf_of,
        client_id="gw",
        client_secret=Secret(SECRET, "env:S"),
        audience="api://notes",
        **extra,  # type: ignore[arg-type]
    )
    return ServiceCredentials("notes", settings, session, failure_pause_s=600, learn_secret=learn_secret)


def user(token: str) -> dict[str, list[str]]:
    return {"Authorization": [f"Bearer {token}"]}


class Server:
    """The server side of a call: answers with the token it got; refuses the tokens in `refuse`."""

    def __init__(self, *, refuse: int = 0, as_reply: bool = False) -> None:
        self.refuse = refuse
        self.as_reply = as_reply
        self.seen: list[str | None] = []

    async def send(self, call: Call) -> AsyncIterator[Frame]:
        token = bearer_token(call.headers)
        self.seen.append(token)
        if self.refuse:
            self.refuse -= 1
            if self.as_reply:
                yield Reply(401, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"no"}}')
                return
            raise UpstreamHttpError("notes", 401, {"WWW-Authenticate": ["Bearer"]})
        yield Reply(200, str(token).encode())


async def run(service: ServiceCredentials, server: Server, headers: dict[str, list[str]]) -> list[Frame]:
    call = Call("tools/call", Raw(b"1"), headers=headers)
    return [frame async for frame in service.calls(call, server.send, CHALLENGE)]


async def test_concurrent_callers_share_one_client_credentials_request(
    idp: TokenService, session: aiohttp.ClientSession
) -> None:
    service = credentials(idp, session, on_behalf_of=False)
    try:
        found = await asyncio.gather(*(service.authorize({}, CHALLENGE) for _ in range(10)))
    finally:
        await service.close()
    assert len({a.token for a in found}) == 1
    assert idp.counted(CLIENT_CREDENTIALS) == 1


@pytest.mark.parametrize("on_behalf_of", [False, True])
async def test_each_token_obtained_is_told_to_the_log_redactor_before_it_is_sent(
    idp: TokenService, session: aiohttp.ClientSession, on_behalf_of: bool
) -> None:
    learnt: list[str] = []
    server = Server()
    sent_before: list[int] = []

    def learn(token: str) -> None:
        learnt.append(token)
        sent_before.append(len(server.seen))

    service = credentials(idp, session, on_behalf_of=on_behalf_of, learn_secret=learn)
    headers = user(idp.user_token("alice")) if on_behalf_of else {}
    try:
        await run(service, server, headers)
        await run(service, server, headers)  # the cached token: nothing new to learn
    finally:
        await service.close()
    assert learnt == [server.seen[0]]
    assert sent_before == [0]
    assert SECRET not in learnt  # the configured secret is the redactor's already


@pytest.mark.parametrize("as_reply", [False, True])
async def test_a_401_drops_the_token_and_the_call_is_sent_once_more(
    idp: TokenService, session: aiohttp.ClientSession, as_reply: bool
) -> None:
    service, server = credentials(idp, session, on_behalf_of=True), Server(refuse=1, as_reply=as_reply)
    alice = idp.user_token("alice")
    try:
        frames = await run(service, server, user(alice))
    finally:
        await service.close()
    assert len(server.seen) == 2
    assert server.seen[0] != server.seen[1]  # a fresh exchange, not the refused token again
    assert frames == [Reply(200, str(server.seen[1]).encode())]
    assert idp.counted(TOKEN_EXCHANGE) == 2
    assert alice not in server.seen


async def test_a_second_401_reaches_the_caller(idp: TokenService, session: aiohttp.ClientSession) -> None:
    service, server = credentials(idp, session, on_behalf_of=False), Server(refuse=2)
    try:
        with pytest.raises(UpstreamHttpError) as caught:
            await run(service, server, {})
    finally:
        await service.close()
    assert caught.value.resp_code == 401
    assert len(server.seen) == 2


async def test_each_user_is_cached_apart_and_the_cache_is_bounded(
    idp: TokenService, session: aiohttp.ClientSession
) -> None:
    service = credentials(idp, session, on_behalf_of=True, max_cached_users=2)
    tokens = {name: idp.user_token(name) for name in ("alice", "bob", "carol")}
    try:
        for name in ("alice", "bob", "alice", "bob"):
            await service.authorize(user(tokens[name]), CHALLENGE)
        assert idp.counted(TOKEN_EXCHANGE) == 2
        await service.authorize(user(tokens["carol"]), CHALLENGE)  # the least recently used (alice) goes
        await service.authorize(user(tokens["bob"]), CHALLENGE)
        assert idp.counted(TOKEN_EXCHANGE) == 3
        await service.authorize(user(tokens["alice"]), CHALLENGE)
        assert idp.counted(TOKEN_EXCHANGE) == 4
    finally:
        await service.close()


async def test_no_user_token_is_a_401_with_the_servers_challenge_and_asks_nothing(
    idp: TokenService, session: aiohttp.ClientSession
) -> None:
    service = credentials(idp, session, on_behalf_of=True)
    with pytest.raises(UpstreamHttpError) as caught:
        await service.authorize({"Authorization": ["Basic dTpw"]}, CHALLENGE)
    assert (caught.value.resp_code, caught.value.headers) == (401, CHALLENGE)
    with pytest.raises(UpstreamHttpError) as bare:
        await service.authorize({}, {})
    assert bare.value.headers == {"WWW-Authenticate": ["Bearer"]}
    assert idp.requests == []


async def test_a_refusal_names_the_oauth_error_and_never_the_token(
    idp: TokenService, session: aiohttp.ClientSession
) -> None:
    idp.refused_subjects.add("mallory")
    mallory = idp.user_token("mallory")
    service = credentials(idp, session, on_behalf_of=True)
    with pytest.raises(ServiceCredentialRefused) as caught:
        await service.authorize(user(mallory), CHALLENGE)
    assert caught.value.error == "invalid_grant"
    assert "invalid_grant" in str(caught.value)
    assert mallory not in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ServiceCredentialRefused):  # at once again: the same answer, no second request
        await service.authorize(user(mallory), CHALLENGE)
    assert idp.counted(TOKEN_EXCHANGE) == 1
    alice = idp.user_token("alice")
    await service.authorize(user(alice), CHALLENGE)  # another user is not held back
    assert idp.counted(TOKEN_EXCHANGE) == 2


async def test_a_wrong_client_secret_is_refused_as_invalid_client(
    idp: TokenService, session: aiohttp.ClientSession
) -> None:
    idp.client_secret = "another-secret"
    service = credentials(idp, session, on_behalf_of=False)
    with pytest.raises(ServiceCredentialRefused) as caught:
        await service.authorize({}, CHALLENGE)
    assert caught.value.error == "invalid_client"


async def test_an_unreachable_endpoint_is_a_connect_failure(idp: TokenService, session: aiohttp.ClientSession) -> None:
    with socket.socket() as refused:
        refused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{refused.getsockname()[1]}/token"
        service = credentials(idp, session, on_behalf_of=False, token_url=url)
        with pytest.raises(UpstreamUnavailable) as caught:
            await service.authorize({}, CHALLENGE)
    assert caught.value.failure.source == "connect"
    assert caught.value.resp_code == 502
    assert "token endpoint" in str(caught.value)
