"""The console's parts without a process: the config panel masks every secret generically (keys it was never
told about included), the collector chains its observer after telemetry's (once, across re-watches) and keeps
restarts and the last exit reason, the log ring is bounded, redacted and filtered by level, and the token
gate compares the bearer token or the page's cookie."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import routing
from gateway.observe.hooks import Observed, Telemetry
from gateway.observe.logs import Redactor
from gateway.observe.logtail import LogRing
from gateway.observe.ops import Readiness
from gateway.observe.status import _PASSED_ON, StatusCollector, masked_config
from gateway.relay.webconsole import COOKIE, TokenGate

ROUTES = b"""
servers:
  docs:
    http:
      url: http://user:hunter2-password@127.0.0.1:9/mcp
      headers: {Authorization: "Bearer header-literal-secret", X-Ref: "file:/run/secrets/docs"}
  clock:
    stdio:
      command: clock
      args: [--verbose]
      env: {API_TOKEN: env-literal-token-value, DB_PASSWORD: pw-literal-value, DB_PASS: pass-literal, TZ: UTC}
channels:
  main: [clock]
  docs: [docs]
control_plane: {url: "https://cp.example", tunnel_id: t1, api_key: env:TUNNEL_API_KEY}
sessions: {key: session-literal-key-0123456789, previous_keys: [file:/old-key]}
routes:
  - match: {channel: main}
    limit_key: batch
ops: {listen: "127.0.0.1:0", token: ops-literal-token-value}
"""


def test_the_config_panel_masks_every_secret() -> None:
    config = routing.parse(ROUTES, "routing.yaml")
    redactor = Redactor()
    redactor.add("registered-secret-value")
    shown = masked_config(config, redactor.redact)
    text = repr(shown)
    for secret in (
        "hunter2-password",
        "header-literal-secret",
        "env-literal-token-value",
        "pw-literal-value",
        "pass-literal",
        "session-literal-key-0123456789",
        "ops-literal-token-value",
    ):
        assert secret not in text
    docs = shown["servers"]["docs"]["http"]
    assert docs["headers"] == {"Authorization": "[REDACTED]", "X-Ref": "file:/run/secrets/docs"}
    assert "hunter2" not in docs["url"]
    assert docs["url"].endswith("@127.0.0.1:9/mcp")
    env = shown["servers"]["clock"]["stdio"]["env"]
    assert env == {"API_TOKEN": "[REDACTED]", "DB_PASSWORD": "[REDACTED]", "DB_PASS": "[REDACTED]", "TZ": "UTC"}
    assert shown["control_plane"]["api_key"] == "env:TUNNEL_API_KEY"  # a reference says where, not what
    assert shown["sessions"]["previous_keys"] == ["file:/old-key"]
    assert shown["routes"][0]["limit_key"] == "batch"  # not a secret, though named `key`
    assert shown["ops"]["token"] == "[REDACTED]"
    assert shown["control_plane"]["workload_identity"] is None
    assert shown["channels"] == {"main": ["clock"], "docs": ["docs"]}


def test_the_config_panel_is_generic_and_redacts_other_strings() -> None:
    """Render from plain data: a key added to the config later (an allow-list) appears as it is, and a
    registered secret that turns up in an ordinary value is still masked."""
    config = routing.parse(ROUTES.replace(b"args: [--verbose]", b"args: [--key=registered-secret-value]"), "f")
    redactor = Redactor()
    redactor.add("registered-secret-value")
    shown = masked_config(config, redactor.redact)
    assert shown["servers"]["clock"]["stdio"]["args"] == ["--key=[REDACTED]"]
    assert set(shown) == set(routing.RoutingConfig.__struct_fields__)


def test_allow_lists_show_in_the_config_panel() -> None:
    """Keys the console never names (the admin controls' allow-lists) appear as configured."""
    routes = ROUTES.replace(b"  docs: [docs]\n", b"  docs: {servers: [docs], allow_tools: [search, 'read_*']}\n")
    routes += b"limits: {tenant_header: X-Tenant}\ntenants:\n  acme: {allow_tools: ['*search']}\n"
    shown = masked_config(routing.parse(routes, "routing.yaml"), Redactor().redact)
    assert shown["channel_specs"]["docs"]["allow_tools"] == ["search", "read_*"]
    assert shown["tenants"]["acme"]["allow_tools"] == ["*search"]


# --------------------------------------------------------------------------- observers


class FakeUpstream:
    transport = "stdio"

    def __init__(self, name: str) -> None:
        self.name = name
        self.observer: Callable[[str, str], None] | None = None
        self.ready = True
        self.problem: str | None = None
        self.info = None


class RecordingTelemetry(Telemetry):
    """What the OTel telemetry does in `watch`: sets its own observer on every upstream."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def watch(self, upstreams: Mapping[str, Observed], specs: Mapping[str, routing.ServerSpec]) -> None:
        for upstream in upstreams.values():
            upstream.observer = self._event

    def _event(self, server: str, event: str) -> None:
        self.events.append((server, event))


def test_the_collector_chains_after_telemetry_and_survives_rewatching() -> None:
    inner = RecordingTelemetry()
    collector = StatusCollector(Readiness(max_poll_age_s=10, clock=lambda: 0.0))
    telemetry = collector.telemetry(inner)
    upstream = FakeUpstream("clock")
    upstreams: dict[str, Any] = {"clock": upstream}
    telemetry.watch(upstreams, {})
    telemetry.watch(upstreams, {})  # a reload: telemetry sets its observer again
    collector.watch(upstreams)  # and a second chain by the collector alone is not doubled either
    assert upstream.observer is not None

    upstream.ready, upstream.problem = False, "exited with status 1: boom"
    upstream.observer("clock", "down")
    upstream.observer("clock", "restart")
    upstream.ready, upstream.problem = True, None
    upstream.observer("clock", "up")
    assert inner.events == [("clock", "down"), ("clock", "restart"), ("clock", "up")]
    state = collector._servers["clock"]
    assert state.restarts == 1
    assert state.last_exit == "exited with status 1: boom"


def test_the_collector_passes_every_other_hook_through() -> None:
    """A hook added to `Telemetry` later must be listed, or the wrapper would answer it with the no-op."""
    hooks = {name for name, value in vars(Telemetry).items() if callable(value) and not name.startswith("_")}
    assert hooks - {"exchange", "watch"} == set(_PASSED_ON)
    inner = RecordingTelemetry()
    telemetry = StatusCollector(Readiness(max_poll_age_s=10, clock=lambda: 0.0)).telemetry(inner)
    assert telemetry.enabled is inner.enabled
    for hook in _PASSED_ON:
        assert getattr(telemetry, hook) == getattr(inner, hook)


# --------------------------------------------------------------------------- the log ring


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", level, __file__, 1, message, None, None)


def test_the_log_ring_is_bounded_redacted_and_filtered() -> None:
    redactor = Redactor()
    redactor.add("ring-secret-value")
    ring = LogRing(redactor, capacity=5)
    for index in range(8):
        ring.handle(_record(logging.INFO, f"line {index} with ring-secret-value"))
    ring.handle(_record(logging.WARNING, "Authorization: Bearer abcdefghijkl"))
    lines = ring.since(0)
    assert len(lines) == 5
    assert [line.seq for line in lines] == [5, 6, 7, 8, 9]
    assert all("ring-secret-value" not in line.message for line in lines)
    assert "abcdefghijkl" not in lines[-1].message
    assert [line.level for line in ring.since(0, "WARNING")] == ["WARNING"]
    assert [line.seq for line in ring.since(8)] == [9]
    assert ring.last_seq == 9


# --------------------------------------------------------------------------- the token gate


def test_without_a_token_everyone_on_the_listener_may_look() -> None:
    gate = TokenGate(None)
    assert not gate.required
    assert gate.allowed(make_mocked_request("GET", "/api/status"))


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, False),
        ({"Authorization": "Bearer the-ops-token"}, True),
        ({"Authorization": "bearer the-ops-token"}, True),
        ({"Authorization": "Bearer the-ops-toke"}, False),
        ({"Authorization": "Basic the-ops-token"}, False),
        ({"Cookie": f"{COOKIE}=the-ops-token"}, True),
        ({"Cookie": f"{COOKIE}=something-else"}, False),
    ],
)
def test_the_token_gate(headers: dict[str, str], allowed: bool) -> None:
    gate = TokenGate("the-ops-token")
    request = make_mocked_request("GET", "/api/status", headers=headers)
    assert gate.allowed(request) is allowed
    if not allowed:
        with pytest.raises(web.HTTPUnauthorized) as refused:
            gate.check(request)
        assert "the-ops-token" not in (refused.value.text or "")


def test_the_page_takes_the_token_once_into_a_strict_cookie() -> None:
    gate = TokenGate("the-ops-token")
    gate.page_login(make_mocked_request("GET", "/ui?token=wrong"))  # a wrong one: nothing happens
    with pytest.raises(web.HTTPSeeOther) as redirect:
        gate.page_login(make_mocked_request("GET", "/ui?token=the-ops-token"))
    assert redirect.value.location == "/ui"
    morsel = redirect.value.cookies[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
