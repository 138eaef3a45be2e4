"""The operator console in a real headless Chromium (Debian's /usr/bin/chromium, driven by the `playwright`
package; no browser is ever downloaded): the page of a gateway on the shipped routing.yaml shows both
channels, shows the clock server down within 2 s of `/api/status` saying so when its process is killed, and
up again after the restart, lists the failed call; no console errors; screenshots (desk and phone) go to
`test-artifacts/`. `scripts/browser-tools.sh` installs the browser (the test command runs it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.console import default_routes, killed_mid_call, server, until_status
from tests.support.harness import ROOT, gateway
from tests.support.ops import ops_url

CHROMIUM: Final = Path("/usr/bin/chromium")
ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS: Final = ROOT / "test-artifacts"
SHOWN_WITHIN_MS: Final = 2000
"""The acceptance bound: the page shows what `/api/status` reports within 2 s (it updates every 0.5 s)."""
LONG_MS: Final = 60_000
"""For what depends on the gateway (a restart), not on the page."""

if not CHROMIUM.exists():  # pragma: no cover - scripts/browser-tools.sh installs it
    pytest.fail("no /usr/bin/chromium: run scripts/browser-tools.sh", pytrace=False)

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright  # noqa: E402


def _state(name: str, state: str) -> str:
    return f'[data-server="{name}"] [data-state="{state}"]'


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, launched by playwright (which never fetches a browser of its own)."""
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser, errors: list[str], **options: Any) -> Page:
    """A page whose console errors and uncaught exceptions are collected into `errors`."""
    page = await browser.new_page(**options)
    watch(page, errors)
    return page


async def test_the_page_follows_a_killed_server_and_a_failed_call(tmp_path: Path) -> None:
    errors: list[str] = []
    hold_down = tmp_path / "clock-held-down"
    async with gateway(default_routes(hold_down=hold_down), tmp_path) as gw, chromium() as browser:
        ops = ops_url(gw.process)
        await until_status(ops, lambda s: s["ready"])
        page = await new_page(browser, errors, viewport={"width": 1280, "height": 900})
        await page.goto(f"{ops}/ui")
        for channel in ("main", "notes"):
            await page.wait_for_selector(f'[data-channel="{channel}"]', timeout=LONG_MS)
        await page.wait_for_selector(_state("clock", "up"), timeout=LONG_MS)
        await page.wait_for_selector(_state("notes", "up"), timeout=LONG_MS)
        assert await page.text_content("#ready") == "ready"

        async with killed_mid_call(gw.urls["main"], ops, hold_down) as call:
            await until_status(ops, lambda s: not server(s, "clock")["up"])
            await page.wait_for_selector(_state("clock", "down"), timeout=SHOWN_WITHIN_MS)
            await call
            await page.screenshot(path=str(ARTIFACTS / "console-server-down.png"), full_page=True)
        await page.wait_for_selector(_state("clock", "up"), timeout=LONG_MS)
        await page.wait_for_selector('#failures [data-failure="tools/call"]', timeout=LONG_MS)
        failure = await page.text_content("#failures tbody tr")
        assert failure is not None
        assert "countdown" in failure
        assert "transport_closed" in failure
        await page.wait_for_selector('#logs [data-level="INFO"]', timeout=LONG_MS)
        await page.screenshot(path=str(ARTIFACTS / "console-gateway.png"), full_page=True)

        phone = await new_page(browser, errors, viewport={"width": 390, "height": 844}, is_mobile=True)
        await phone.goto(f"{ops}/")
        await phone.wait_for_selector(_state("clock", "up"), timeout=LONG_MS)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways on a phone (only tables may)"
        await phone.screenshot(path=str(ARTIFACTS / "console-phone.png"), full_page=True)
        await phone.close()
        await page.close()
    assert errors == []


async def test_the_relay_page_shows_its_tunnel_and_the_gateway(tmp_path: Path) -> None:
    """The embedded relay serves the relay console on its own (loopback) listener."""
    errors: list[str] = []
    async with gateway(default_routes(), tmp_path) as gw, chromium() as browser:
        relay = gw.urls["main"].split("/v1/")[0]
        page = await new_page(browser, errors, viewport={"width": 1024, "height": 768})
        await page.goto(f"{relay}/ui")
        await page.wait_for_selector('[data-tunnel="tunnel_local"]', timeout=LONG_MS)
        row = await page.wait_for_selector("#gateways tbody tr", timeout=LONG_MS)
        assert row is not None
        assert "mcp-tunnel-gateway" in (await row.text_content() or "")
        assert await page.text_content("#title") == "Relay"
        await page.screenshot(path=str(ARTIFACTS / "console-relay.png"), full_page=True)
        await page.close()
    assert errors == []


def watch(page: Page, errors: list[str]) -> None:
    """Collect the page's console errors and uncaught exceptions."""

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    def on_error(error: Any) -> None:
        errors.append(f"page error: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
