"""A delay proxy in front of the relay's tunnel API: simulated control-plane round-trip latency.

Owns forwarding every request (polls, response POSTs, metadata) to one upstream
base URL on loopback, adding half the round trip before forwarding and half
before answering, so each poll and each response exchange costs one RTT more,
as a WAN between the gateway and the control plane would. Changes nothing else.

    python -m bench.delay_proxy --upstream http://127.0.0.1:PORT --rtt-ms 100   # prints READY http://127.0.0.1:P
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
)
UPSTREAM = web.AppKey("upstream", str)
DELAY = web.AppKey("delay", float)
CLIENT = web.AppKey("client", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    half = request.app[DELAY] / 2
    body = await request.read()
    if half:
        await asyncio.sleep(half)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[CLIENT].request(request.method, url, headers=headers, data=body or None) as resp:
        payload = await resp.read()
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        status = resp.status
    if half:
        await asyncio.sleep(half)
    return web.Response(status=status, body=payload, headers=out_headers)


async def _client(app: web.Application):  # type: ignore[no-untyped-def]
    app[CLIENT] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )
    yield
    await app[CLIENT].close()


async def main(upstream: str, rtt_ms: float) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app[DELAY] = rtt_ms / 1000
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY http://127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--rtt-ms", type=float, required=True)
    args = parser.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main(args.upstream, args.rtt_ms))
