"""An in-process relay that records what crosses the tunnel API, for tests.

Every poll body it sends and every response body a gateway posts is kept, so
tests can validate them against the contract and count them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.relay import RelayConfig, TunnelSpec, build_relay_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TUNNEL = "tunnel_contract"
KEY = "contract-test-gateway-key"


@dataclass
class Recorded:
    polls: list[bytes] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class RelayUnderTest:
    url: str
    recorded: Recorded

    def mcp(self, channel: str = "main") -> str:
        return f"{self.url}/v1/mcp/{TUNNEL}/{channel}"


@pytest.fixture
async def relay() -> AsyncIterator[RelayUnderTest]:
    async with recording_relay() as under_test:
        yield under_test


@contextlib.asynccontextmanager
async def recording_relay(**settings: object) -> AsyncIterator[RelayUnderTest]:
    """A relay on 127.0.0.1:0 with one tunnel (`TUNNEL`, gateway key `KEY`); `settings` go to RelayConfig."""
    recorded = Recorded()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/response"):
            recorded.posts.append((dict(request.headers), await request.read()))
        response = await handler(request)
        if request.path.endswith("/poll") and response.status == 200 and isinstance(response, web.Response):
            assert isinstance(response.body, bytes)
            recorded.polls.append(response.body)
        return response

    config = RelayConfig(listen="127.0.0.1:0", tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)}, **settings)  # type: ignore[arg-type]
    app = build_relay_app(config)
    app.middlewares.append(record)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RelayUnderTest(f"http://127.0.0.1:{port}", recorded)
    finally:
        await runner.cleanup()
