"""Budget alerts: what happens when a usage budget crosses a threshold (`Alert`): a warning in the log, a count
through the telemetry seam, and the budget's webhook POSTed with retries by an owned task from a bounded queue.
Never blocks the call that crossed it; a webhook URL or header value never reaches a log line.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import msgspec

from gateway.config import secrets as secret_refs
from gateway.config.admin import BudgetSpec, WebhookSpec
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PENDING: Final = 1000
"""Webhook deliveries waiting at once; more are dropped and counted."""
FIRST_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 30.0


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One key crossed one threshold of one budget in one fixed window (what budgets report)."""

    budget: str
    scope: str
    key: str
    """The tenant, the channel, or `sha256:…` of a client token (never the token)."""
    threshold: int
    """The percentage crossed."""
    calls: int
    """Calls counted in the window so far, the one that crossed it included."""
    limit: int
    window_start: float
    window_end: float
    """Epoch seconds (UTC hour or day boundaries)."""
    refusing: bool
    """The budget refuses further calls until `window_end`."""


class AlertBody(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON a budget's webhook receives."""

    type: str
    budget: str
    scope: str
    key: str
    threshold_percent: int
    calls: int
    limit: int
    window_start: str
    window_end: str
    refusing: bool


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where one budget's alerts go: the URL and header values resolved (secrets: never logged)."""

    url: str
    headers: dict[str, str]
    timeout_s: float
    retries: int
    ssl: ssl.SSLContext | bool = True
    """The system trust roots, or a context with the webhook's `ca_bundle` and client certificate."""
    proxy: str | None = None
    """The webhook's `proxy`, else the environment's (HTTPS_PROXY/HTTP_PROXY/NO_PROXY)."""


Reach = Callable[[int, WebhookSpec], tuple[ssl.SSLContext | bool, str | None]]
"""A webhook's (`ssl=`, `proxy=`) from its egress settings and routing.yaml index (`gateway.upstream.egress`)."""


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat().replace("+00:00", "Z")


def alert_body(alert: Alert) -> bytes:
    body = AlertBody(
        type="budget.threshold",
        budget=alert.budget,
        scope=alert.scope,
        key=alert.key,
        threshold_percent=alert.threshold,
        calls=alert.calls,
        limit=alert.limit,
        window_start=_iso(alert.window_start),
        window_end=_iso(alert.window_end),
        refusing=alert.refusing,
    )
    return msgspec.json.encode(body)


def webhooks(budgets: Sequence[BudgetSpec], reach: Reach, *, file: str, base: Path) -> dict[str, Webhook]:
    """Each budget's webhook, header references resolved and egress settings built by `reach` (ConfigError
    when a reference does not resolve or a PEM file is unreadable)."""
    hooks: dict[str, Webhook] = {}
    for i, budget in enumerate(budgets):
        spec = budget.webhook
        if spec is None:
            continue
        headers: dict[str, str] = {}
        for name, value in spec.headers.items():
            try:
                headers[name] = secret_refs.resolve(value, base=base).reveal()  # a literal stays itself
            except secret_refs.SecretError as exc:
                key = f"budgets[{i}].webhook.headers.{name}"
                raise ConfigError(file, key, f"a resolvable secret ({exc})") from None
        hooks[budget.name] = Webhook(spec.url, headers, spec.timeout_s, spec.retries, *reach(i, spec))
    return hooks


class BudgetAlerts:
    """`alert()` is the budgets' callback; `start()`/`close()` own the webhook task."""

    def __init__(
        self,
        hooks: Mapping[str, Webhook],
        http: aiohttp.ClientSession | None,
        *,
        telemetry: Telemetry = NOOP,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._hooks = dict(hooks)
        self._http = http
        self._telemetry = telemetry
        self._first_backoff_s = first_backoff_s
        self._queue: asyncio.Queue[tuple[Webhook, Alert]] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        """Webhook deliveries dropped: the queue was full."""
        self.delivered = 0
        self.failed = 0
        """Webhook deliveries given up after every retry."""

    @classmethod
    def for_budgets(
        cls,
        budgets: Sequence[BudgetSpec],
        http: aiohttp.ClientSession | None,
        reach: Reach,
        *,
        telemetry: Telemetry = NOOP,
        file: str,
        base: Path,
    ) -> BudgetAlerts:
        """The alerts of these budgets (`webhooks` says what can fail)."""
        return cls(webhooks(budgets, reach, file=file, base=base), http, telemetry=telemetry)

    def replace_webhooks(self, hooks: Mapping[str, Webhook]) -> None:
        """Alerts from now on go to these webhooks (a reload); deliveries already queued keep theirs."""
        self._hooks = dict(hooks)
        self.start()

    def start(self) -> None:
        if self._hooks and self._task is None:
            self._task = asyncio.create_task(self._deliver(), name="budget-webhooks")

    async def close(self) -> None:
        """Stop delivering (alerts still queued are not sent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def alert(self, alert: Alert) -> None:
        """Log, count, and queue the webhook; never blocks, never raises."""
        per = "hour" if alert.window_end - alert.window_start <= 3600 else "day"
        log.warning(
            "budget %r: %s %s reached %d%% (%d of %d calls this %s)%s",
            alert.budget,
            alert.scope,
            alert.key,
            alert.threshold,
            alert.calls,
            alert.limit,
            per,
            "; further calls are refused until the window ends" if alert.refusing else "",
        )
        self._telemetry.budget_alert(alert.budget, alert.scope, alert.threshold)
        hook = self._hooks.get(alert.budget)
        if hook is None:
            return
        try:
            self._queue.put_nowait((hook, alert))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("budget %r: webhook queue full; alert dropped (%d so far)", alert.budget, self.dropped)

    async def _deliver(self) -> None:
        while True:
            hook, alert = await self._queue.get()
            if await self._post(hook, alert):
                self.delivered += 1
            else:
                self.failed += 1
                log.warning("budget %r: webhook not delivered after %d attempts", alert.budget, hook.retries + 1)

    async def _post(self, hook: Webhook, alert: Alert) -> bool:
        """POST with retries: a connection error, a timeout, 429 or 5xx is retried with doubling backoff."""
        assert self._http is not None
        body = alert_body(alert)
        headers = {**hook.headers, "Content-Type": "application/json"}
        delay = self._first_backoff_s
        for attempt in range(hook.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            try:
                timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
                async with self._http.post(
                    hook.url, data=body, headers=headers, timeout=timeout, ssl=hook.ssl, proxy=hook.proxy
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("budget %r: webhook attempt %d failed (%s)", alert.budget, attempt + 1, type(exc).__name__)
                continue
            if status < 300:
                return True
            log.info("budget %r: webhook attempt %d answered HTTP %d", alert.budget, attempt + 1, status)
            if status != 429 and status < 500:
                return False
        return False
