"""`gateway status`'s terminal view and verdict from a status document: what a healthy gateway prints, a
down server named with why, the recent failures listed, and exit status 1 for anything unwell."""

from __future__ import annotations

import io
from typing import Any

import msgspec

from gateway.observe.callstats import Failure, WindowFigures
from gateway.observe.status import ChannelStatus, CredentialStatus, GatewayStatus, LinkStatus, ServerStatus
from gateway.observe.status_cli import healthy, render

FIGURES = WindowFigures(
    calls=12, calls_per_s=0.2, p50_ms=9.0, p99_ms=45.0, total=40, errors={"transport_closed": 1}, rejections=2
)


def status(*, up: bool = True, connected: bool = True, **fields: Any) -> GatewayStatus:
    clock = ServerStatus(
        name="clock",
        transport="stdio",
        up=up,
        era="modern" if up else None,
        problem=None if up else "exited with status 1: ImportError",
        restarts=1,
        last_exit="exited with status -9",
        inflight=3,
        stats=FIGURES,
    )
    link = LinkStatus(
        url="https://cp.example",
        tunnel_id="tunnel_1",
        connected=connected,
        last_poll_age_s=1.5,
        poll_round_trip_s=0.01,
        post_latency_s=0.009,
        problem=None if connected else "poll failed: connect refused",
        errors={"http_503": 2},
        credential=CredentialStatus(label="api_key (env:TUNNEL_API_KEY)", state="ok"),
    )
    base: dict[str, Any] = {
        "version": "9.9",
        "time": 1000.0,
        "started": 700.0,
        "ready": up and connected,
        "not_ready": [] if up else ["servers.clock"],
        "inflight": 3,
        "max_inflight": 64,
        "control_plane": link,
        "channels": [ChannelStatus(name="main", servers=[clock], stats=FIGURES)],
        "recent_failures": [
            Failure(
                time=990.0,
                channel="main",
                method="tools/call",
                outcome="error",
                status=502,
                server="clock",
                name="countdown",
                error="transport_closed",
            )
        ],
        "config": {},
        "window_s": 60,
    }
    return GatewayStatus(**{**base, **fields})


def test_a_healthy_gateway() -> None:
    text = render(status())
    assert healthy(status())
    assert text.startswith("gateway 9.9: ready (up 5m, in-flight 3/64)\n")
    assert "control plane  https://cp.example tunnel_1: connected, last poll 1.5s ago" in text
    assert "errors: http_503 2" in text
    assert "credential     api_key (env:TUNNEL_API_KEY): ok" in text
    assert "channel main: 0.2/s, p50 9.0ms p99 45.0ms, errors: transport_closed 1, rejected 2" in text
    assert "clock" in text
    assert "last exit: exited with status -9" in text
    assert "tools/call countdown: error transport_closed (HTTP 502)" in text


def test_a_down_server_or_a_lost_link_is_a_problem() -> None:
    down = status(up=False)
    assert not healthy(down)
    text = render(down)
    assert "NOT ready" in text
    assert "not ready: servers.clock" in text
    assert "DOWN" in text
    assert "down: exited with status 1: ImportError" in text
    lost = status(connected=False)
    assert not healthy(lost)
    assert "problem: poll failed: connect refused" in render(lost)
    assert not healthy(status(control_plane=None))


def test_the_json_round_trips_into_the_view() -> None:
    """What `/api/status` sends is what `gateway status` decodes (the CLI reads the same Structs)."""
    body = msgspec.json.encode(status())
    out = io.StringIO()
    out.write(render(msgspec.json.decode(body, type=GatewayStatus)))
    assert out.getvalue() == render(status())
