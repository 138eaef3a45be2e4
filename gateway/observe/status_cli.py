"""`gateway status`: fetch a running gateway's `/api/status` and print it as a compact terminal view
(or the JSON as it came). Exit 0 all well, 1 problems, 2 unreachable or a bad routing file.
Reads over HTTP only; never starts or changes anything.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final, TextIO

import msgspec

from gateway.config import routing
from gateway.config import secrets as secret_refs
from gateway.config.base import split_listen
from gateway.observe.status import GatewayStatus, ServerStatus
from gateway.protocol.errors import ConfigError
from gateway.protocol.headers import AUTHORIZATION

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_UNREACHABLE: Final = 2
TOKEN_VARIABLE: Final = "GATEWAY_OPS_TOKEN"
"""The ops token, when not read from the routing file's `ops.token`."""
TIMEOUT_S: Final = 10.0


def status_command(routes: Path, ops: str | None, *, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        url, token = _target(routes, ops)
    except ConfigError as exc:
        print(f"gateway status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if url is None:
        print(f"gateway status: {routes} names no fixed ops.listen port: pass --ops URL", file=sys.stderr)
        return EXIT_UNREACHABLE
    body, why = fetch(url, token)
    if body is None:
        print(f"gateway status: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        status = msgspec.json.decode(body, type=GatewayStatus)
    except msgspec.DecodeError as exc:
        print(f"gateway status: {url} did not answer with a gateway status ({exc})", file=sys.stderr)
        return EXIT_UNREACHABLE
    out.write(body.decode() + "\n" if as_json else render(status))
    return EXIT_OK if healthy(status) else EXIT_PROBLEMS


def _target(routes: Path, ops: str | None) -> tuple[str | None, str | None]:
    """The status URL (None: nowhere to ask) and the token to send: `--ops` or the file's
    `ops.listen`; the token from GATEWAY_OPS_TOKEN or the file's `ops.token`."""
    token = os.environ.get(TOKEN_VARIABLE) or None
    config: routing.RoutingConfig | None = None
    if ops is None or routes.exists():
        try:
            config = routing.load(routes)
        except ConfigError:
            if ops is None:
                raise
    if token is None and config is not None and config.ops is not None and config.ops.token:
        try:
            token = secret_refs.resolve(config.ops.token, base=routes.parent).reveal()
        except secret_refs.SecretError as exc:
            raise ConfigError(str(routes), "ops.token", f"a resolvable secret ({exc})") from None
    if ops is None:
        if config is None or config.ops is None:
            return None, token
        host, port = split_listen(config.ops.listen)
        if port == 0:  # a port picked at start: the gateway printed it (`ops: listening on URL`)
            return None, token
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        ops = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return ops.rstrip("/") + "/api/status", token


def fetch(url: str, token: str | None) -> tuple[bytes | None, str]:
    """(body, "") or (None, why not)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header(AUTHORIZATION, f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body: bytes = response.read()
            return body, ""
    except urllib.error.HTTPError as exc:
        hint = f" (set {TOKEN_VARIABLE} or ops.token)" if exc.code == 401 else ""
        return None, f"{url} answered HTTP {exc.code}{hint}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{url} is unreachable ({getattr(exc, 'reason', exc)})"


def healthy(status: GatewayStatus) -> bool:
    """Ready, every server up, the control plane connected."""
    servers_up = all(server.up for channel in status.channels for server in channel.servers)
    link = status.control_plane
    return status.ready and servers_up and link is not None and link.connected


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "none"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _server_line(server: ServerStatus) -> str:
    stats = server.stats
    state = "up" if server.up else "DOWN"
    parts = [
        f"  {server.name:<16} {server.transport:<5} {state:<4} {server.era or '-':<6}",
        f"restarts {server.restarts}",
        f"in-flight {server.inflight}",
        f"{stats.calls_per_s:g}/s",
        f"p50 {_ms(stats.p50_ms)} p99 {_ms(stats.p99_ms)}",
        f"errors: {_counts(stats.errors)}",
        f"rejected {stats.rejections}",
    ]
    line = "  ".join(parts)
    if not server.up and server.problem:
        line += f"\n      down: {server.problem}"
    elif server.last_exit:
        line += f"\n      last exit: {server.last_exit}"
    return line


def render(status: GatewayStatus) -> str:
    """The compact terminal view."""
    lines = [
        f"gateway {status.version}: {'ready' if status.ready else 'NOT ready'}"
        f" (up {_age(status.time - status.started)}, in-flight {status.inflight}/{status.max_inflight})"
    ]
    if status.not_ready:
        lines.append(f"  not ready: {', '.join(status.not_ready)}")
    link = status.control_plane
    if link is not None:
        polled = "never" if link.last_poll_age_s is None else f"{link.last_poll_age_s:.1f}s ago"
        rtt = "-" if link.post_latency_s is None else f"{link.post_latency_s * 1000:.1f}ms"
        lines.append(
            f"control plane  {link.url} {link.tunnel_id}: {'connected' if link.connected else 'NOT connected'},"
            f" last poll {polled}, response round trip {rtt}, errors: {_counts(link.errors)}"
        )
        if link.problem:
            lines.append(f"  problem: {link.problem}")
        credential = link.credential
        lines.append(f"credential     {credential.label}: {credential.state}")
        if credential.problem:
            lines.append(f"  problem: {credential.problem}")
    for channel in status.channels:
        stats = channel.stats
        lines.append(
            f"channel {channel.name}: {stats.calls_per_s:g}/s, p50 {_ms(stats.p50_ms)} p99 {_ms(stats.p99_ms)},"
            f" errors: {_counts(stats.errors)}, rejected {stats.rejections}"
        )
        lines.extend(_server_line(server) for server in channel.servers)
    if status.recent_failures:
        lines.append("recent failures (newest first)")
        for failure in status.recent_failures[:10]:
            when = time.strftime("%H:%M:%S", time.localtime(failure.time))
            what = f"{failure.method} {failure.name}" if failure.name else failure.method
            lines.append(
                f"  {when} {failure.channel}/{failure.server or '-'} {what}:"
                f" {failure.outcome} {failure.error or ''} (HTTP {failure.status})".rstrip()
            )
    return "\n".join(lines) + "\n"
