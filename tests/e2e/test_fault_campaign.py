"""The fault campaign: real calls under injected faults, counted lost, duplicated and wrong per fault.

Each test runs the real gateway with a scripted stdio server (`tests/support/servers/raw_stdio.py`,
which logs every spawn and every executed `echo`) and breaks one thing again and again
while waves of calls run: the link to the control plane (a `tests.support.fault_proxy.FaultProxy`
that resets, drops or stalls every connection), the server process (SIGKILL; SIGSTOP then
SIGCONT; a restart that dies in its handshake), or the relay (restarted under an official
MCP SDK client). Counted for each call, from what the control plane accepted and what the
server executed:

- answered: the right result; failed: the contract's -32603 with the `tunnel_failure` the
  fault explains (a server killed mid-call: `transport_closed`), or, through the relay, the
  client told at once that its connection was cut;
- lost: taken by the gateway (the server executed it) and never answered, or a client left
  waiting; duplicated: executed twice, or a second, different terminal frame;
  wrong: any other answer;
- resent: a terminal frame sent again because the fault ate the acknowledgement (the
  contract's retry; the control plane answers it 404, no client sees it);
- in transit: in a poll answer the fault cut before it reached the gateway (never executed,
  never answered: the control plane expires it, as the contract says). Only the faults that
  cut connections can cause it.

`FAULT_CALLS` sets the calls per fault (CI: 120); `scripts/faults.sh` runs a long campaign.
The table of figures is printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import TextContent

from tests.support.fault_proxy import FaultProxy
from tests.support.gateway_process import GatewayProcess, gateway_env, routes, run_gateway, stdio
from tests.support.harness import PYTHON, Process, process, report
from tests.support.openapi import validate_failure
from tests.support.scripted_cp import KEY, ScriptedControlPlane

CALLS = int(os.environ.get("FAULT_CALLS", "120"))
WAVE = 12
MIN_FAULTS = 3
PATIENCE_S = 60.0
"""Longest a wave may take; only reached when something is broken (then counted, not hung)."""
IN_TRANSIT_S = 5.0
"""A handed-out echo neither executed nor answered after this long was never received (one
that arrived runs in milliseconds): `settle` stops waiting for it, `count` names it."""
STARTUP_TIMEOUT_S = 300.0
"""Far beyond any wait in these tests: a recovery that needed it would fail them."""


@dataclass
class Tally:
    fault: str
    calls: int = 0
    answered: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    resent: int = 0
    in_transit: int = 0
    recoveries: list[float] = field(default_factory=list)

    COLUMNS = ("calls", "answered", "failed", "lost", "duplicated", "wrong", "resent", "in_transit")

    def row(self) -> str:
        figures = " ".join(f"{getattr(self, c):>10}" for c in self.COLUMNS)
        recovery = f"{max(self.recoveries):>9.2f}s" if self.recoveries else f"{'-':>10}"
        return f"{self.fault:<34} {figures} {recovery}"

    def assert_clean(self) -> None:
        assert (self.lost, self.duplicated, self.wrong) == (0, 0, 0), self.row()
        assert self.answered + self.failed + self.in_transit == self.calls, self.row()


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest) -> Iterator[list[Tally]]:
    """Collects each fault's figures; prints the table when the module is done."""
    rows: list[Tally] = []
    yield rows
    header = f"{'fault':<34} " + " ".join(f"{c:>10}" for c in Tally.COLUMNS) + f" {'recovery':>10}"
    lines = ["", f"fault campaign: {CALLS} calls per fault", header, *(t.row() for t in rows)]
    report(request, lines)


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    """A scripted control plane, the gateway (through a fault proxy when given) and the server's logs."""

    cp: ScriptedControlPlane
    gw: GatewayProcess
    spawns: Path
    executed: Path
    proxy: FaultProxy | None = None
    ids: list[str] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the campaign's load is over."""

    def server_pid(self) -> int:
        return int(self.spawns.read_text().split()[-1])

    def call(self, label: str) -> str:
        rid = f"req_{label}_{len(self.ids):06d}"
        self.ids.append(rid)
        return self.cp.call("echo", {"text": rid}, channel="raw", request_id=rid)

    async def in_flight(self) -> None:
        """Until calls are in flight at the gateway (or the load is over)."""
        await self.cp.until(lambda: bool(self.cp.outstanding()) or self.finished.is_set(), PATIENCE_S, "calls")

    async def settle(self, ids: list[str]) -> None:
        """Until each call is answered, or in transit, or given up on (counted, not waited for forever)."""
        with contextlib.suppress(AssertionError):
            await self.cp.until(
                lambda: all(self.cp.answered(r) or self.in_transit(r) for r in ids), PATIENCE_S, "a wave"
            )

    def in_transit(self, rid: str) -> bool:
        """Handed out in a poll answer long ago, never executed, never answered: the fault cut it."""
        handed = self.cp.commands[rid].handed_at
        if self.proxy is None or handed is None or time.monotonic() - handed < IN_TRANSIT_S or self.cp.attempts(rid):
            return False
        return rid not in self.executed.read_text().split() if self.executed.exists() else True

    async def probe(self, label: str) -> None:
        """Until a call succeeds (calls that fail while the server restarts are retried)."""
        while True:
            rid = self.call(label)
            await self.settle([rid])
            if self.cp.answered(rid) and "result" in self.cp.payload(rid)["resp_json"]:
                return


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, *, proxied: bool = False, die_in_handshake: str = "", echo_delay_ms: int = 0
) -> AsyncIterator[Rig]:
    spawns, executed = tmp_path / "spawns", tmp_path / "executed"
    args = ["--spawn-log", str(spawns), "--call-log", str(executed), "--echo-delay-ms", str(echo_delay_ms)]
    if die_in_handshake:
        args += ["--die-in-handshake", die_in_handshake]
    server = stdio("raw_stdio.py", *args, startup_timeout_s=STARTUP_TIMEOUT_S, restart_backoff_max_s=0.5)
    async with contextlib.AsyncExitStack() as stack:
        cp = await stack.enter_async_context(ScriptedControlPlane(hold_s=0.3))
        proxy = await stack.enter_async_context(FaultProxy(cp.port)) if proxied else None
        url = proxy.url if proxy is not None else cp.url
        document = routes({"raw": server}, poll_timeout_ms=2000)
        gw = await stack.enter_async_context(
            run_gateway(document, tmp_path, "--control-plane", url, "--tunnel-id", cp.tunnel_id)
        )
        yield Rig(cp, gw, spawns, executed, proxy)


async def campaign(rig: Rig, fault: str, inject: Callable[[], Awaitable[None]], failures: frozenset[str]) -> Tally:
    """Waves of calls while `inject()` runs again and again (at least `CALLS` calls and
    `MIN_FAULTS` faults); then each call counted."""
    finished = rig.finished
    injected = 0

    async def load() -> None:
        try:
            while len(rig.ids) < CALLS or injected < MIN_FAULTS:
                await rig.settle([rig.call("load") for _ in range(WAVE)])
        finally:
            finished.set()

    async def faults() -> None:
        nonlocal injected
        while not finished.is_set():
            await inject()
            injected += 1

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(load())
        tasks.create_task(faults())
    await rig.settle(rig.ids)
    return count(rig, fault, failures)


def count(rig: Rig, fault: str, failures: frozenset[str]) -> Tally:
    cp = rig.cp
    assert cp.violations == []
    executed = Counter(rig.executed.read_text().split()) if rig.executed.exists() else Counter[str]()
    tally = Tally(fault, calls=len(rig.ids))
    for rid in rig.ids:
        terminals = cp.terminals(rid)
        resent = cp.redeliveries(rid)
        tally.resent += len(resent)
        if executed[rid] > 1 or len(terminals) > 1 or any(p.body != terminals[0].body for p in resent):
            tally.duplicated += 1
        if not terminals:
            if rig.in_transit(rid):
                tally.in_transit += 1
            else:
                tally.lost += 1
            continue
        outcome = judge(cp.payload(rid), rid, failures)
        setattr(tally, outcome, getattr(tally, outcome) + 1)
    return tally


def judge(payload: dict[str, Any], rid: str, failures: frozenset[str]) -> str:
    """`answered`, `failed` (a failure this fault explains, valid by the contract) or `wrong`."""
    message = payload.get("resp_json", {})
    if payload.get("resp_code") == 200 and message.get("id") == rid and "result" in message:
        content = message["result"].get("content", [])
        return "answered" if content and content[0].get("text") == rid else "wrong"
    error = message.get("error", {})
    if payload.get("resp_code") != 502 or error.get("code") != -32603 or message.get("id") != rid:
        return "wrong"
    try:
        validate_failure(error["data"])
    except Exception:
        return "wrong"
    return "failed" if error["data"]["tunnel_failure"]["source"] in failures else "wrong"


def kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


NO_FAILURE: frozenset[str] = frozenset()
SERVER_DIED = frozenset({"transport_closed"})


# --------------------------------------------------------------------------- faults on the control-plane link


@pytest.mark.parametrize("fault", ["reset", "drop", "stall"])
async def test_control_plane_link_faults(fault: str, tmp_path: Path, summary: list[Tally]) -> None:
    """Every connection to the control plane reset (RST), dropped (closed unanswered, new ones
    too) or stalled (no byte forwarded), over and over, while calls run."""
    async with rig(tmp_path, proxied=True) as r:
        proxy = r.proxy
        assert proxy is not None

        async def inject() -> None:
            await asyncio.sleep(0.3)
            if fault == "reset":
                proxy.reset()
                return
            proxy.drop() if fault == "drop" else proxy.stall()
            await asyncio.sleep(0.5)
            proxy.restore()

        tally = await campaign(r, f"control plane link: {fault}", inject, NO_FAILURE)
        summary.append(tally)
        tally.assert_clean()
        assert proxy.resets + proxy.dropped > 0 or fault == "stall"
        if fault == "stall":
            assert tally.in_transit == 0
        assert tally.in_transit <= 25 * (proxy.resets + proxy.dropped), "more lost in transit than was cut"
        assert tally.answered > 0


# --------------------------------------------------------------------------- faults of the server process


async def test_server_sigkill(tmp_path: Path, summary: list[Tally]) -> None:
    """The stdio server SIGKILLed again and again under load: calls in flight fail with
    `transport_closed`, everything else is answered by the restarted process."""
    async with rig(tmp_path, echo_delay_ms=5) as r:

        async def inject() -> None:
            await asyncio.sleep(0.3)
            await r.in_flight()
            kill(r.server_pid(), signal.SIGKILL)

        tally = await campaign(r, "server SIGKILL", inject, SERVER_DIED)
        summary.append(tally)
        tally.assert_clean()
        assert tally.in_transit == 0
        assert tally.failed > 0, "no call was in flight when the server was killed"
        assert len(r.spawns.read_text().split()) > 1, "the server was not killed and restarted"


async def test_server_sigstop_then_sigcont(tmp_path: Path, summary: list[Tally]) -> None:
    """The stdio server frozen (SIGSTOP) and thawed (SIGCONT) again and again: every call is
    answered, late, by the same process."""
    async with rig(tmp_path, echo_delay_ms=5) as r:
        pid = r.server_pid()
        stops = 0

        async def inject() -> None:
            nonlocal stops
            await asyncio.sleep(0.3)
            await r.in_flight()
            kill(pid, signal.SIGSTOP)
            stops += 1
            try:
                await asyncio.sleep(0.5)
            finally:
                kill(pid, signal.SIGCONT)

        tally = await campaign(r, "server SIGSTOP/SIGCONT", inject, NO_FAILURE)
        summary.append(tally)
        tally.assert_clean()
        assert tally.answered == tally.calls
        assert stops > 0
        assert r.spawns.read_text().split() == [str(pid)], "a frozen server was restarted"


async def test_server_dies_in_its_restart_handshake(tmp_path: Path, summary: list[Tally]) -> None:
    """The server SIGKILLed, and every restart after a kill dies in its `initialize` (MCP
    2025-11-25, Lifecycle: Initialization); the next one lives. Service is back within the
    restart backoff, never after `startup_timeout_s` (300 s, far past this test's patience)."""
    dying = ",".join(str(n) for n in range(2, 10_000, 2))
    async with rig(tmp_path, die_in_handshake=dying) as r:
        recoveries: list[float] = []

        async def inject() -> None:
            await r.probe("probe")  # the process serving now is one that lived
            killed = time.monotonic()
            kill(r.server_pid(), signal.SIGKILL)
            await r.probe("probe")
            recoveries.append(time.monotonic() - killed)

        tally = await campaign(r, "server dies in restart handshake", inject, SERVER_DIED)
        tally.recoveries = recoveries
        summary.append(tally)
        tally.assert_clean()
        assert tally.in_transit == 0
        assert recoveries, "no restart was measured"
        assert max(recoveries) < PATIENCE_S < STARTUP_TIMEOUT_S
        deaths = sum(1 for line in r.gw.stderr if "exited during the MCP handshake" in line)
        assert deaths >= len(recoveries), "the restarts did not die in their handshake"


# --------------------------------------------------------------------------- the relay restarted


@dataclass
class RelayProcess:
    """`gateway relay` on a fixed loopback port once the first start picked one."""

    config: Path
    proc: Process | None = None
    url: str = ""

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self.proc = await stack.enter_async_context(
            process(PYTHON, "-m", "gateway.cli", "relay", "--config", self.config)
        )
        self.url = (await self.proc.wait_for(r"relay: ready (\S+)"))[1]
        self.config.write_text(self.config.read_text().replace("127.0.0.1:0", self.url.removeprefix("http://")))


async def test_relay_restart_under_sdk_clients(tmp_path: Path, summary: list[Tally]) -> None:
    """`gateway relay` restarted while official MCP SDK clients (2026-07-28) call through it:
    a call in flight is answered or its client told at once; the gateway polls the new relay
    and every later call is answered, executed once."""
    tunnel = "tunnel_faults"
    relay_file = tmp_path / "relay.yaml"
    relay_file.write_text(f"listen: '127.0.0.1:0'\ntunnels: {{{tunnel}: {{gateway_key: {KEY}}}}}\n")
    executed = tmp_path / "executed"
    server = stdio("raw_stdio.py", "--call-log", str(executed))
    tally = Tally("relay restart (SDK clients)")
    outcomes: Counter[str] = Counter()
    recovered: Counter[str] = Counter()
    """Outcomes of the calls after each recovery."""
    restarts = max(1, CALLS // 120)
    async with contextlib.AsyncExitStack() as outer:
        relay = RelayProcess(relay_file)
        first = contextlib.AsyncExitStack()
        await relay.start(first)
        plane = {"url": relay.url, "tunnel_id": tunnel, "api_key": "env:FAULTS_KEY"}
        document = routes({"main": server}, control_plane=plane, poll_timeout_ms=2000)
        await outer.enter_async_context(run_gateway(document, tmp_path, env=gateway_env(FAULTS_KEY=KEY)))
        endpoint = f"{relay.url}/v1/mcp/{tunnel}"
        sent = 0

        async def wave(size: int) -> Counter[str]:
            """`size` concurrent calls on one new client; their outcomes, also added to `outcomes`."""
            nonlocal sent
            texts = [f"relay-{sent + i:06d}" for i in range(size)]
            sent += size
            results: dict[str, str] = {}

            async def one(client: Client, text: str) -> None:
                try:
                    async with asyncio.timeout(PATIENCE_S):
                        result = await client.call_tool("echo", {"text": text})
                except TimeoutError:
                    results[text] = "lost"
                    return
                content = result.content[0] if result.content else None
                ok = isinstance(content, TextContent) and content.text == text and not result.is_error
                results[text] = "answered" if ok else "wrong"

            with contextlib.suppress(Exception):  # a client whose connection the restart cut, or refused
                async with Client(endpoint, mode="2026-07-28") as client:
                    await asyncio.gather(*(one(client, t) for t in texts), return_exceptions=True)
            counted = Counter(results.get(text, "failed") for text in texts)
            outcomes.update(counted)
            return counted

        stacks = [first]

        async def restart() -> None:
            await asyncio.sleep(0.05)  # let the wave's calls reach the gateway first
            await stacks[-1].aclose()
            stacks.append(contextlib.AsyncExitStack())
            await relay.start(stacks[-1])

        await wave(WAVE)  # the gateway polls this relay
        for n in range(restarts):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(wave(WAVE))  # answered before the restart, or its client told
                tasks.create_task(restart())
            began = time.monotonic()
            while not (await wave(1))["answered"]:  # refused (503) until the gateway polls again
                pass
            tally.recoveries.append(time.monotonic() - began)
            while sent < (n + 1) * CALLS // restarts:
                recovered.update(await wave(min(WAVE, (n + 1) * CALLS // restarts - sent)))
        await stacks[-1].aclose()
    tally.calls = sent
    tally.answered, tally.failed = outcomes["answered"], outcomes["failed"]
    tally.lost, tally.wrong = outcomes["lost"], outcomes["wrong"]
    ran = Counter(executed.read_text().split()) if executed.exists() else Counter[str]()
    tally.duplicated = sum(1 for n in ran.values() if n > 1)
    summary.append(tally)
    tally.assert_clean()
    assert recovered["answered"] == recovered.total(), "a call after the gateway polled again was not answered"
