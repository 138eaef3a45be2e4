"""An aiohttp application on 127.0.0.1:0 as an async context manager: the base of the test's fake services.
Owns only the listening and the port; what the service answers is each subclass's `routes`."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class LoopbackApp:
    """Serves `routes(app)` on a free loopback port from `__aenter__` to `__aexit__`."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
