"""Command line: argv, logging, signals, uvloop, and the start/stop order. Holds no logic.

gateway --routes routing.yaml [--control-plane URL] [--tunnel-id ID]
gateway check --routes routing.yaml
gateway relay --config relay.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path

import uvloop

from gateway import __version__, config
from gateway.app import Overrides, provision
from gateway.errors import ConfigError
from gateway.relay import RelayConfigError, load_relay_config, serve_relay

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="MCP tunnel gateway")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--routes", type=Path, default=Path("routing.yaml"), help="routing file (routing.yaml)")
    parser.add_argument("--control-plane", metavar="URL", help="control plane base URL (overrides the file)")
    parser.add_argument("--tunnel-id", metavar="ID", help="tunnel id (overrides the file)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="validate a routing file and exit")
    check.add_argument("--routes", type=Path, default=Path("routing.yaml"))
    relay = sub.add_parser("relay", help="run the self-hosted control plane (relay)")
    relay.add_argument("--config", type=Path, required=True, help="relay configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "check":
            routes = config.load(args.routes)
            print(f"{args.routes}: OK ({len(routes.servers)} servers, {len(routes.channels)} channels)")
            return 0
        if args.command == "relay":
            return _run(_relay(args.config))
        routes = config.load(args.routes)
        overrides = Overrides(control_plane=args.control_plane, tunnel_id=args.tunnel_id)
        return _run(_gateway(routes, args.routes, overrides))
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _run(main: Coroutine[object, object, int]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _gateway(routes: config.RoutingConfig, file: Path, overrides: Overrides) -> int:
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    async with provision(routes, routes_file=file, overrides=overrides) as runtime:
        if runtime.endpoint is not None:
            for channel, url in runtime.endpoint.urls.items():
                print(f"MCP endpoint (channel {channel}): {url}")
            if runtime.endpoint.client_token:
                print(f"clients send: Authorization: Bearer {runtime.endpoint.client_token}")
        print("gateway: ready", flush=True)
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                ok = await runtime.reload()
                print(f"gateway: {'reloaded' if ok else 'reload rejected'}", flush=True)
        print("gateway: stopping", flush=True)
    return 0


async def _relay(path: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve_relay(load_relay_config(path), stop, on_ready=lambda url: print(f"relay: ready {url}", flush=True))
    except RelayConfigError as exc:
        print(f"gateway relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
