"""Fixtures of the HTTP upstream tests: the official-SDK probe servers (one process per test module and era), the
bridge, and a factory of `HttpUpstream`s closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.wire import Codec
from gateway.upstream.http import HttpUpstream
from tests.support.http_upstream import MAX_BYTES, PATIENCE_S, Factory, sdk_server


@pytest.fixture(scope="module")
def dual_server() -> Iterator[str]:
    """Dual-era SDK server (2026-07-28 and the handshake era), SSE answers."""
    with sdk_server() as base:
        yield base


@pytest.fixture(scope="module")
def legacy_server() -> Iterator[str]:
    """Handshake-era only: a 2026-07-28 request gets HTTP 400 and a JSON-RPC error."""
    with sdk_server("--legacy-only") as base:
        yield base


@pytest.fixture(scope="module")
def json_server() -> Iterator[str]:
    """Dual-era SDK server answering application/json instead of SSE."""
    with sdk_server("--json-response") as base:
        yield base


@pytest.fixture
def bridge() -> Bridge:
    return Bridge(Codec())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # limit=1: a connection the transport failed to release would block the next request.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


@pytest.fixture
async def upstream(http: aiohttp.ClientSession, bridge: Bridge) -> AsyncIterator[Factory]:
    made: list[HttpUpstream] = []

    def make(
        url: str,
        *,
        max_bytes: int = MAX_BYTES,
        headers: dict[str, str] | None = None,
        ready_timeout_s: float = PATIENCE_S,
        request_timeout_s: float | None = None,
    ) -> HttpUpstream:
        up = HttpUpstream(
            "srv",
            HttpSpec(url=url),
            session=http,
            bridge=bridge,
            max_message_bytes=max_bytes,
            extra_headers=headers or {},
            ready_timeout_s=ready_timeout_s,
            request_timeout_s=request_timeout_s,
        )
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()
