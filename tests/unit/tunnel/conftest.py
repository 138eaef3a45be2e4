"""Fixtures of the HTTP/1.1 client tests: the scripted server (support/http1_server.py) and clients for it, all
closed before the server stops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.tunnel.http1 import H1Client
from tests.support.http1_server import MakeClient, ScriptedServer, spin


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    try:
        yield scripted
    finally:
        await scripted.stop()


@pytest.fixture
async def make_client(server: ScriptedServer) -> AsyncIterator[MakeClient]:
    """H1Clients for the scripted server (or any URL), all closed before the server stops."""
    clients: list[H1Client] = []

    def make(url: str | None = None, **settings: object) -> H1Client:
        client = H1Client(url or f"http://127.0.0.1:{server.port}/v1/response", **settings)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    await spin()
