"""Fixtures of the relay unit tests: a `Harness` over the relay app (support/relay_harness.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.relay import RelayConfig, build_relay_app
from tests.support.relay_harness import Harness, HarnessFactory, RecordingQueue, relay_config


@pytest.fixture
def make_harness(aiohttp_client: Any) -> HarnessFactory:
    async def make(config: RelayConfig | None = None) -> Harness:
        config = config or relay_config()
        queue = RecordingQueue(config)
        client = await aiohttp_client(build_relay_app(config, backend=queue))
        return Harness(client, queue)

    return make


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness()
