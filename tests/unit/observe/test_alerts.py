"""gateway.observe.alerts with a real loopback receiver: an alert is logged without the webhook's URL or header
values, POSTed as JSON, retried on 5xx and connection errors but not on other 4xx, and a full queue drops and
counts instead of blocking the call that crossed the threshold."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from gateway.observe.alerts import Alert, BudgetAlerts, Webhook
from tests.support.loopback_app import serve_app
from tests.support.waiting import until

ALERT = Alert(
    budget="b",
    scope="channel",
    key="main",
    threshold=80,
    calls=8,
    limit=10,
    window_start=1_700_000_000.0 - 1_700_000_000.0 % 3600,
    window_end=1_700_000_000.0 - 1_700_000_000.0 % 3600 + 3600,
    refusing=False,
)


async def test_webhook_retries_then_gives_up_and_never_logs_the_url(caplog: pytest.LogCaptureFixture) -> None:
    statuses = [503, 503, 503, 400, 204]
    seen: list[tuple[dict[str, object], str | None]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("X-Secret")))
        return web.Response(status=statuses[len(seen) - 1])

    app = web.Application()
    app.router.add_post("/hook/s3cr3t-path", hook)
    async with serve_app(app) as base, aiohttp.ClientSession() as http:
        url = f"{base}/hook/s3cr3t-path"
        alerts = BudgetAlerts({"b": Webhook(url, {"X-Secret": "hdr-value"}, 5.0, 2)}, http, first_backoff_s=0.01)
        alerts.start()
        with caplog.at_level(logging.INFO, logger="gateway.observe.alerts"):
            alerts.alert(ALERT)  # 503, 503, 503: given up after 1 + 2 retries
            alerts.alert(ALERT)  # 400: not retried
            alerts.alert(ALERT)  # 204
            await until(lambda: alerts.delivered == 1, within_s=30)
        await alerts.close()
    assert len(seen) == 5
    assert (alerts.failed, alerts.delivered, alerts.dropped) == (2, 1, 0)
    body, secret = seen[0]
    assert secret == "hdr-value"
    assert body["type"] == "budget.threshold"
    assert (body["budget"], body["key"], body["threshold_percent"], body["calls"], body["limit"]) == (
        "b",
        "main",
        80,
        8,
        10,
    )
    assert str(body["window_start"]).endswith(":00:00Z")
    assert "budget 'b': channel main reached 80% (8 of 10 calls this hour)" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert "hdr-value" not in caplog.text


async def test_a_full_queue_drops_and_counts() -> None:
    alerts = BudgetAlerts({"b": Webhook("http://127.0.0.1:9/never", {}, 1.0, 0)}, None, max_pending=2)
    for _ in range(5):  # not started: nothing drains the queue, and nothing blocks
        alerts.alert(ALERT)
    assert alerts.dropped == 3
    await alerts.close()
