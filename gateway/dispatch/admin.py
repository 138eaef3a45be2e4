"""The admin controls of a running gateway: the audit log (and its OTLP export), the usage budgets and their
webhook alerts, built from routing.yaml at start and swapped by a reload. Owns their lifetimes and which
call-record sinks are attached; counts and writes nothing itself (`dispatch.budgets`, `observe.audit`).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.config.admin import WebhookSpec
from gateway.config.routing import RoutingConfig
from gateway.dispatch.budgets import Budgets
from gateway.observe.alerts import BudgetAlerts, Reach, Webhook, webhooks
from gateway.observe.audit import AuditLog
from gateway.observe.hooks import Telemetry
from gateway.observe.records import CallSink, CallSinks
from gateway.protocol.errors import ConfigError
from gateway.upstream.egress import egress


def webhook_reach(file: str, base: Path) -> Reach:
    """A budget webhook's `ssl=` and `proxy=` from its egress keys (`budgets[i].webhook.proxy`, ...)."""

    def reach(index: int, hook: WebhookSpec) -> tuple[ssl.SSLContext | bool, str | None]:
        way = egress(hook.url, hook, file=file, key=f"budgets[{index}].webhook", base=base)
        return way.ssl, way.proxy

    return reach


def open_audit(config: RoutingConfig, routes_file: Path) -> AuditLog | None:
    """The audit log's writer, started (its file opened), or None when `audit:` is absent."""
    if config.audit is None:
        return None
    audit = AuditLog(config.audit, routes_file.parent)
    try:
        audit.start()
    except OSError as exc:
        raise ConfigError(str(routes_file), "audit.file", f"a writable file ({exc.strerror})") from None
    return audit


@dataclass(slots=True)
class Change:
    """A reload's new admin controls, prepared (files opened, references resolved) but not yet in force."""

    budgets: Budgets | None
    """None: the budgets are unchanged."""
    hooks: dict[str, Webhook] | None
    audit_changed: bool
    audit: AuditLog | None


class AdminControls:
    """`open()` at start, `prepare()` + `apply()` on a reload, `close()` at the end (after the dispatcher's)."""

    def __init__(
        self,
        records: CallSinks,
        alerts: BudgetAlerts,
        budgets: Budgets,
        audit: AuditLog | None,
        telemetry: Telemetry,
        routes_file: Path,
    ) -> None:
        self.records = records
        self.alerts = alerts
        self.budgets = budgets
        self.audit = audit
        self._telemetry = telemetry
        self._routes_file = routes_file
        self._attach(audit)

    @classmethod
    def open(
        cls, config: RoutingConfig, routes_file: Path, http: aiohttp.ClientSession, telemetry: Telemetry
    ) -> AdminControls:
        """Resolve the webhooks and open the audit file (ConfigError naming the key when either fails)."""
        file, base = str(routes_file), routes_file.parent
        alerts = BudgetAlerts.for_budgets(
            config.budgets, http, webhook_reach(file, base), telemetry=telemetry, file=file, base=base
        )
        budgets = Budgets(config.budgets, clock=time.time, on_alert=alerts.alert)
        controls = cls(CallSinks(), alerts, budgets, open_audit(config, routes_file), telemetry, routes_file)
        alerts.start()
        return controls

    def prepare(self, new: RoutingConfig, old: RoutingConfig) -> Change | None:
        """What a reload to `new` changes (None: nothing); raises ConfigError before anything is opened
        when a webhook reference does not resolve, and when the new audit file cannot be opened."""
        if (new.audit, new.budgets) == (old.audit, old.budgets):
            return None
        hooks: dict[str, Webhook] | None = None
        budgets: Budgets | None = None
        if new.budgets != old.budgets:
            file, base = str(self._routes_file), self._routes_file.parent
            hooks = webhooks(new.budgets, webhook_reach(file, base), file=file, base=base)
            budgets = self.budgets.carried(new.budgets)
        audit_changed = new.audit != old.audit
        audit = open_audit(new, self._routes_file) if audit_changed else self.audit
        return Change(budgets, hooks, audit_changed, audit)

    async def apply(self, change: Change) -> Budgets | None:
        """Put a prepared change in force: the new budgets (returned, for the dispatcher), webhooks and audit
        file; the old audit file is closed after writing the records already queued for it."""
        if change.hooks is not None:
            self.alerts.replace_webhooks(change.hooks)
        if change.budgets is not None:
            self.budgets = change.budgets
        if change.audit_changed:
            retired, self.audit = self.audit, change.audit
            self._detach(retired)
            self._attach(self.audit)
            if retired is not None:
                await retired.close()
        return change.budgets

    async def close(self) -> None:
        await self.alerts.close()
        if self.audit is not None:
            await self.audit.close()

    def _attach(self, audit: AuditLog | None) -> None:
        for sink in self._sinks(audit):
            self.records.add(sink)

    def _detach(self, audit: AuditLog | None) -> None:
        for sink in self._sinks(audit):
            self.records.remove(sink)

    def _sinks(self, audit: AuditLog | None) -> list[CallSink]:
        """The audit file's sink and, with telemetry's logs on, its OTLP export (none without `audit:`)."""
        if audit is None:
            return []
        exported = self._telemetry.call_log()
        return [audit] if exported is None else [audit, exported]
