"""The control-plane client with a credential that can be missing or refused (gateway/tunnel/client.py
through the `Credential` interface), against a tunnel API on loopback: a terminal frame waits for a
credential within its budget, a notification is dropped, and a 401 tells the credential which token
was refused and whether a new one is coming."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from gateway.protocol.errors import ControlPlaneError, CredentialsUnavailable
from gateway.protocol.wire import Codec
from gateway.tunnel.client import ControlPlane, Identity

TUNNEL = "tunnel_t"


@dataclass
class Credential:
    """Our `Credential` interface: `missing` calls without a token, then `tokens` in turn."""

    tokens: list[str]
    missing: int = 0
    renews: bool = True
    rejected: list[str | None] = field(default_factory=list)
    label: str = "a test credential"

    async def get(self) -> str:
        if self.missing:
            self.missing -= 1
            raise CredentialsUnavailable("token exchange refused: invalid_grant (identity provider idp_t)", 0.01)
        return self.tokens[0]

    def invalidate(self, rejected: str | None = None) -> bool:
        self.rejected.append(rejected)
        if self.renews and len(self.tokens) > 1:
            self.tokens.pop(0)
        return self.renews

    def status(self) -> str | None:
        return None

    def problem(self) -> str | None:
        return None


@dataclass
class TunnelApi:
    """The two endpoints, recording the bearer token of each request; `refuse` tokens get 401."""

    refuse: set[str] = field(default_factory=set)
    seen: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def _bearer(self, request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    async def poll(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        self.seen.append(("poll", token))
        return web.Response(status=401 if token in self.refuse else 204)

    async def response(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        self.seen.append(("post", token))
        if token in self.refuse:
            return web.json_response({"error": {"message": "no"}}, status=401)
        return web.json_response({"status": "ok"})


@contextlib.asynccontextmanager
async def tunnel_api() -> AsyncIterator[TunnelApi]:
    api = TunnelApi()
    app = web.Application()
    app.router.add_get(f"/v1/tunnels/{TUNNEL}/poll", api.poll)
    app.router.add_post(f"/v1/tunnels/{TUNNEL}/response", api.response)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        api.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield api
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def client(api: TunnelApi, credential: Credential) -> AsyncIterator[ControlPlane]:
    async with aiohttp.ClientSession() as session:
        cp = ControlPlane(session, api.url, TUNNEL, credential, Identity.new(None), Codec())
        try:
            yield cp
        finally:
            cp.close()


async def test_a_terminal_frame_waits_for_a_credential() -> None:
    async with tunnel_api() as api, client(api, Credential(["tok-1"], missing=2)) as cp:
        assert await cp.post(b"{}", "shard", terminal=True) is True
        assert api.seen == [("post", "tok-1")]


async def test_a_notification_without_a_credential_is_dropped() -> None:
    async with tunnel_api() as api, client(api, Credential(["tok-1"], missing=1)) as cp:
        assert await cp.post(b"{}", "shard", terminal=False) is False
        assert api.seen == []


async def test_a_refused_post_is_sent_again_with_the_renewed_token() -> None:
    credential = Credential(["old", "new"])
    async with tunnel_api() as api, client(api, credential) as cp:
        api.refuse.add("old")
        assert await cp.post(b"{}", "shard", terminal=True) is True
        assert api.seen == [("post", "old"), ("post", "new")]
        assert credential.rejected == ["old"]


@pytest.mark.parametrize("renews", [True, False])
async def test_a_refused_poll_names_the_token_and_says_whether_one_is_coming(renews: bool) -> None:
    credential = Credential(["old", "new"], renews=renews)
    async with tunnel_api() as api, client(api, credential) as cp:
        api.refuse.add("old")
        with pytest.raises(ControlPlaneError) as refused:
            await cp.poll(1, 1)
        assert (refused.value.status, refused.value.renewed) == (401, renews)
        assert credential.rejected == ["old"]
        if renews:
            await cp.poll(1, 1)
            assert api.seen[-1] == ("poll", "new")


async def test_failed_polls_are_counted_by_kind_for_the_status_page() -> None:
    """The console's "errors by kind": a credential that is not there, an HTTP refusal by its status,
    a poll with no answer in its bound (flagged where it is raised, not read from the message), a network failure."""
    async with tunnel_api() as api, client(api, Credential(["tok-1"])) as cp:
        cp.count_error(CredentialsUnavailable("no token yet"))
        cp.count_error(ControlPlaneError("refused", status=503))
        cp.count_error(ControlPlaneError("poll got no answer within 40s", timed_out=True))
        cp.count_error(ControlPlaneError("no answer within sight, but a reset"))  # the words do not decide
        assert cp.errors == {"credentials": 1, "http_503": 1, "timeout": 1, "network": 1}
