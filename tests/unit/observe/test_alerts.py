"""gateway.observe.alerts with a real loopback receiver: an alert is logged without the webhook's URL or header
values, POSTed as JSON, retried on 5xx and connection errors but not on other 4xx, and a full queue drops and
counts instead of blocking the call that crossed the threshold; a webhook's `proxy` and `ca_bundle` are used (a real
forward proxy with basic auth, an HTTPS receiver under a private CA)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import aiohttp
import msgspec
import pytest
import trustme
from aiohttp import web

from gateway.config.admin import BudgetSpec, WebhookSpec
from gateway.dispatch.admin import webhook_reach
from gateway.observe.alerts import Alert, BudgetAlerts, Webhook
from tests.support.forward_proxy import forward_proxy
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


async def test_a_webhook_goes_through_its_proxy_and_trusts_its_ca_bundle(tmp_path: Path) -> None:
    """Three budgets, one receiver behind HTTPS under a private CA: only the webhook with the right proxy
    credentials and the CA in `ca_bundle` is delivered; without the bundle TLS fails, and with a wrong
    proxy password the proxy refuses it (407), so the settings are the ones used."""
    authority = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json())["budget"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        async with forward_proxy(tmp_path, basic_auth="hook:right") as port, aiohttp.ClientSession() as http:
            right, wrong = f"http://hook:right@127.0.0.1:{port}", f"http://hook:wrong@127.0.0.1:{port}"
            specs = {
                "through": WebhookSpec(url=url, proxy=right, ca_bundle=str(ca_file), retries=0),
                "untrusted": WebhookSpec(url=url, proxy=right, retries=0),
                "refused": WebhookSpec(url=url, proxy=wrong, ca_bundle=str(ca_file), retries=0),
            }
            budgets = [
                BudgetSpec(name=name, scope="channel", calls=10, per="hour", webhook=spec)
                for name, spec in specs.items()
            ]

            alerts = BudgetAlerts.for_budgets(
                budgets, http, webhook_reach("routing.yaml", tmp_path), file="routing.yaml", base=tmp_path
            )
            alerts.start()
            for name in specs:
                alerts.alert(Alert(**{**msgspec.structs.asdict(ALERT), "budget": name}))
            await until(lambda: alerts.delivered + alerts.failed == 3, within_s=60)
            await alerts.close()
    finally:
        await runner.cleanup()
    assert received == ["through"]
    assert (alerts.delivered, alerts.failed) == (1, 2)
