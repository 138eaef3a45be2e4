"""The load generator: many concurrent MCP client sessions, closed loop, measured in windows.

Owns the benchmark's own asyncio MCP client (Streamable HTTP over aiohttp, with
JSON and SSE answers, handshake-era `initialize` + `notifications/initialized`
or 2026-07-28 `server/discover` + the `_meta` envelope; or stdio straight to a
server process it spawns), the warm-up, the measured runs, and the CPU/RSS
readings of the processes it is told about, taken at the window edges.
Run by the harness as a separate process:

    python -m bench.load SPEC_JSON      # prints one line: RESULT {...}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import procstat

LEGACY_VERSION = "2025-06-18"
MODERN_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "bench-load", "version": "1.0"}
ACCEPT = "application/json, text/event-stream"


class CallFailed(Exception):
    """One call did not produce a successful result; the message is its error kind."""


@dataclass
class Window:
    """One measured run."""

    started: float = 0.0
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)
    busy_before: float = 0.0
    busy_after: float = 0.0


def _meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
    }


def parse_answer(content_type: str, body: bytes, rpc_id: int) -> dict[str, Any]:
    """The JSON-RPC response for `rpc_id` from a JSON body or an SSE stream (notifications skipped)."""
    if content_type.startswith("text/event-stream"):
        for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            if not data:
                continue
            message = orjson.loads(data)
            if isinstance(message, dict) and message.get("id") == rpc_id and "method" not in message:
                return message
        raise CallFailed("sse without answer")
    message = orjson.loads(body)
    if not isinstance(message, dict):
        raise CallFailed("not an object")
    return message


def check_result(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        code = message["error"].get("code") if isinstance(message["error"], dict) else None
        raise CallFailed(f"rpc error {code}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise CallFailed("no result")
    if result.get("isError"):
        raise CallFailed("tool isError")
    return result


class HttpSession:
    """One MCP client session over Streamable HTTP."""

    def __init__(self, http: aiohttp.ClientSession, url: str, era: str, headers: dict[str, str]) -> None:
        self.http = http
        self.url = url
        self.era = era
        self.base_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **headers}
        self.session_id: str | None = None
        self.ids = itertools.count(1)

    async def _post(self, payload: dict[str, Any], extra: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        headers = dict(self.base_headers)
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if extra:
            headers.update(extra)
        async with self.http.post(self.url, data=orjson.dumps(payload), headers=headers) as resp:
            body = await resp.read()
            if self.session_id is None and "Mcp-Session-Id" in resp.headers:
                self.session_id = resp.headers["Mcp-Session-Id"]
            return resp.status, resp.headers.get("Content-Type", ""), body

    async def request(self, method: str, params: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, Any]:
        rpc_id = next(self.ids)
        status, ctype, body = await self._post(
            {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}, extra
        )
        if status != 200:
            raise CallFailed(f"http {status}")
        return check_result(parse_answer(ctype, body, rpc_id))

    async def initialize(self) -> None:
        if self.era == "modern":
            await self.request(
                "server/discover",
                {"_meta": _meta()},
                {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "server/discover"},
            )
            return
        await self.request(
            "initialize", {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
        )
        if self.session_id:
            self.base_headers["Mcp-Session-Id"] = self.session_id
        self.base_headers["MCP-Protocol-Version"] = LEGACY_VERSION
        status, _, _ = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if status not in (200, 202, 204):
            raise CallFailed(f"initialized: http {status}")

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.era == "modern":
            return await self.request(
                "tools/call",
                {"name": tool, "arguments": arguments, "_meta": _meta()},
                {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "tools/call", "Mcp-Name": tool},
            )
        return await self.request("tools/call", {"name": tool, "arguments": arguments})

    async def list_tools(self) -> list[str]:
        extra = {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "tools/list"} if self.era == "modern" else None
        params = {"_meta": _meta()} if self.era == "modern" else {}
        result = await self.request("tools/list", params, extra)
        return [t["name"] for t in result.get("tools", [])]

    async def close(self) -> None:
        if self.era == "legacy" and self.session_id:
            with contextlib.suppress(Exception):
                async with self.http.delete(self.url, headers=self.base_headers) as resp:
                    await resp.read()


class StdioConnection:
    """One server process on a pipe, shared by every session (ids are unique across them)."""

    def __init__(self, command: list[str], env: dict[str, str] | None) -> None:
        self.command = command
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.reader: asyncio.Task[None] | None = None

    async def start(self, era: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            limit=64 * 1024 * 1024,
        )
        self.reader = asyncio.create_task(self._read())
        if era == "modern":
            await self.request("server/discover", {"_meta": _meta()})
        else:
            await self.request(
                "initialize", {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
            )
            self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _write(self, message: dict[str, Any]) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rpc_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rpc_id] = future
        self._write({"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params})
        assert self.proc is not None
        assert self.proc.stdin is not None
        await self.proc.stdin.drain()
        return check_result(await future)

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and "method" not in message:
                future = self.pending.pop(message.get("id"), None)  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(message)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(CallFailed("server exited"))

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()


class StdioSession:
    def __init__(self, conn: StdioConnection, era: str) -> None:
        self.conn = conn
        self.era = era

    async def initialize(self) -> None:
        return None  # the connection's handshake covers every session on the pipe

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if self.era == "modern":
            params["_meta"] = _meta()
        return await self.conn.request("tools/call", params)

    async def list_tools(self) -> list[str]:
        params = {"_meta": _meta()} if self.era == "modern" else {}
        result = await self.conn.request("tools/list", params)
        return [t["name"] for t in result.get("tools", [])]

    async def close(self) -> None:
        return None


async def _init_with_retry(session: HttpSession | StdioSession, deadline: float) -> None:
    """Initialize; a relay that has not seen the gateway yet answers 503 for a moment."""
    delay = 0.05
    while True:
        try:
            await session.initialize()
            return
        except (CallFailed, aiohttp.ClientError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    concurrency = int(spec["concurrency"])
    era = spec.get("era", "legacy")
    tool = spec.get("tool", "echo")
    arguments = {"message": "x" * int(spec.get("payload", 100))}
    warmup_s, duration_s, runs = float(spec["warmup_s"]), float(spec["duration_s"]), int(spec["runs"])
    call_timeout = float(spec.get("call_timeout_s", 60))
    roles: dict[str, list[int]] = {k: list(v) for k, v in spec.get("roles", {}).items()}
    roles["client"] = [os.getpid()]
    target = spec["target"]

    http: aiohttp.ClientSession | None = None
    conn: StdioConnection | None = None
    sessions: list[HttpSession | StdioSession]
    if target["kind"] == "stdio":
        conn = StdioConnection(target["command"], target.get("env"))
        await conn.start(era)
        assert conn.proc is not None
        roles["upstream"] = [conn.proc.pid]
        sessions = [StdioSession(conn, era) for _ in range(concurrency)]
    else:
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=call_timeout),
            auto_decompress=False,
        )
        # Several relay replicas (Redis backend): session i talks to replica i % N, no stickiness needed.
        urls = target.get("urls") or [target["url"]]
        headers = target.get("headers", {})
        sessions = [HttpSession(http, urls[i % len(urls)], era, headers) for i in range(concurrency)]

    init_started = time.monotonic()
    init_deadline = init_started + float(spec.get("init_timeout_s", 60))
    init_errors: Counter[str] = Counter()
    # Open sessions a batch at a time: a peer that spawns a process per session needs the pacing.
    batch = int(spec.get("init_batch", 32))
    ready: list[HttpSession | StdioSession] = []
    for start in range(0, len(sessions), batch):
        group = sessions[start : start + batch]
        results = await asyncio.gather(*(_init_with_retry(s, init_deadline) for s in group), return_exceptions=True)
        for session, outcome in zip(group, results, strict=True):
            if isinstance(outcome, BaseException):
                init_errors[f"{type(outcome).__name__}: {outcome}"[:120]] += 1
            else:
                ready.append(session)
    init_s = time.monotonic() - init_started
    for role, parent in spec.get("children_of", {}).items():
        # Processes spawned by a bridge (one per session for some peers) exist only now.
        roles[role] = procstat.children(int(parent))

    windows = [Window() for _ in range(runs)]
    current: list[Window | None] = [None]
    stop = asyncio.Event()
    warm_calls = [0]

    tools = [tool]
    if spec.get("discover_tools") and ready:
        # An aggregated channel namespaces tool names (`server__echo`): take every `echo` it lists.
        listed = await ready[0].list_tools()
        tools = sorted(n for n in listed if n == tool or n.endswith("__" + tool)) or [tool]

    async def worker(session: HttpSession | StdioSession, index: int) -> None:
        name = tools[index % len(tools)]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with asyncio.timeout(call_timeout):
                    await session.call(name, arguments)
                failure = None
            except CallFailed as exc:
                failure = str(exc)
            except TimeoutError:
                failure = "timeout"
            except (aiohttp.ClientError, OSError) as exc:
                failure = type(exc).__name__
            elapsed = time.perf_counter() - started
            window = current[0]
            if window is None:
                warm_calls[0] += 1
            elif failure is None:
                window.latencies.append(elapsed)
            else:
                window.errors[failure] += 1
            if failure is not None and window is None:
                await asyncio.sleep(0.01)  # keep a failing warm-up from spinning

    tasks = [asyncio.create_task(worker(s, i)) for i, s in enumerate(ready)]
    rss_before = {role: [procstat.rss_mib(p) for p in pids] for role, pids in roles.items()}
    if ready:
        await asyncio.sleep(warmup_s)
        for window in windows:
            window.cpu_before = procstat.snapshot(roles)
            window.busy_before = procstat.machine_busy_seconds()
            window.started = time.perf_counter()
            current[0] = window
            await asyncio.sleep(duration_s)
            window.ended = time.perf_counter()
            window.cpu_after = procstat.snapshot(roles)
            window.busy_after = procstat.machine_busy_seconds()
    current[0] = None
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), call_timeout + 5)
    for task in tasks:
        task.cancel()
    peaks = procstat.peaks(roles)
    await asyncio.gather(*(s.close() for s in ready), return_exceptions=True)
    if http is not None:
        await http.close()
    if conn is not None:
        await conn.close()

    out_runs = []
    for window in windows:
        calls = len(window.latencies)
        elapsed = max(window.ended - window.started, 1e-9)
        lat = sorted(window.latencies)
        cpu = {role: round(window.cpu_after.get(role, 0) - window.cpu_before.get(role, 0), 3) for role in roles}
        out_runs.append(
            {
                "calls": calls,
                "errors": sum(window.errors.values()),
                "error_kinds": dict(window.errors.most_common(5)),
                "seconds": round(elapsed, 3),
                "throughput": round(calls / elapsed, 1),
                "p50_ms": _pct(lat, 0.50),
                "p90_ms": _pct(lat, 0.90),
                "p99_ms": _pct(lat, 0.99),
                "mean_ms": round(1000 * sum(lat) / calls, 3) if calls else None,
                "cpu_s": cpu,
                "other_cpu_s": round(max(0.0, window.busy_after - window.busy_before - sum(cpu.values())), 2),
                "cpu_ms_per_1k": {r: round(1000 * v / calls * 1000, 1) if calls else None for r, v in cpu.items()},
            }
        )
    return {
        "sessions": len(ready),
        "init_s": round(init_s, 2),
        "init_errors": dict(init_errors.most_common(5)),
        "warmup_calls": warm_calls[0],
        "tools": tools,
        "runs": out_runs,
        "peak_rss_mib": peaks,
        "rss_before_mib": {r: round(sum(v for v in vals if v), 1) for r, vals in rss_before.items()},
        "roles": roles,
    }


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return round(1000 * sorted_values[index], 3)


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        result = runner.run(run(spec))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
