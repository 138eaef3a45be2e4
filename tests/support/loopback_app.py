"""aiohttp applications served on 127.0.0.1 (a free port): the base of the tests' fake services.
Owns only the listening and the port; what a service answers is its own `routes`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Self

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on loopback for the length of the block; yields `http://127.0.0.1:PORT`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class LoopbackApp:
    """Serves `routes(app)` on a free loopback port from `__aenter__` to `__aexit__`."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.base_url = ""
        self.port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        self.routes(app)
        self.base_url = await self._stack.enter_async_context(serve_app(app))
        self.port = int(self.base_url.rsplit(":", 1)[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
