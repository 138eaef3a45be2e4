"""A tiny OTLP/HTTP sink on loopback: answers 200 to every export and counts them.

Owns nothing but accepting `POST /v1/traces`, `/v1/metrics`, `/v1/logs` (any
body, not decoded) so that tracing can be switched on without a collector;
it prints `EXPORT <path> <bytes>` per request and `GET /stats` returns the
counts as JSON (the harness uses them to tell whether anything was exported).

    python -m bench.otlp_sink      # prints READY http://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web


class Counts:
    def __init__(self) -> None:
        self.by_key: dict[str, int] = {}

    def add(self, key: str, n: int) -> None:
        self.by_key[key] = self.by_key.get(key, 0) + n


COUNTS = web.AppKey("counts", Counts)


async def export(request: web.Request) -> web.Response:
    body = await request.read()
    counts = request.app[COUNTS]
    counts.add(f"{request.path} requests", 1)
    counts.add(f"{request.path} bytes", len(body))
    print(f"EXPORT {request.path} {len(body)}", flush=True)
    return web.Response(status=200, body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS].by_key)


async def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = Counts()
    app.router.add_post("/{tail:.*}", export)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main())
