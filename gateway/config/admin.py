"""routing.yaml's admin controls: `audit:` (the call log), `budgets:` (usage budgets and their alerts) and
`tenants:` (per-tenant tool allow-lists), as frozen Structs, and their load-time checks.
Builds no runtime objects and resolves no secrets (webhook header values stay references).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Final

from msgspec import Meta, field

from gateway.config.base import Frozen
from gateway.config.egress import Egress
from gateway.config.globs import glob_error
from gateway.protocol.errors import ConfigError

AtLeastOne = Annotated[int, Meta(ge=1)]
Percent = Annotated[int, Meta(ge=1, le=100)]
BUDGET_SCOPES: Final = ("tenant", "client_token", "channel")
BUDGET_PERIODS: Final = ("hour", "day")
AUDIT_FORMATS: Final = ("json", "text")


class AuditSpec(Frozen, frozen=True, kw_only=True):
    """The audit log: one line per call (names, outcome, sizes, times; never arguments or results)."""

    file: Annotated[str, Meta(min_length=1)]
    """Path of the log (relative: to routing.yaml's folder); rotated to `file.1` … `file.N`."""
    max_bytes: AtLeastOne = 10 * 1024 * 1024
    """The file is rotated before it would grow past this size."""
    backups: Annotated[int, Meta(ge=0)] = 5
    """Rotated files kept (`file.1` newest); 0 truncates instead."""
    retention_days: Annotated[float, Meta(gt=0)] | None = None
    """Rotated files last written longer ago than this are deleted (at start and at each rotation)."""
    format: str = "json"
    """`json`: one JSON object a line; `text`: `key=value` pairs a line."""
    queue: AtLeastOne = 10_000
    """Records waiting for the writer; past this they are dropped and counted, never blocking a call."""


class WebhookSpec(Egress, frozen=True, kw_only=True):
    """Where a budget alert is POSTed as JSON, and how to reach it (`proxy`, `ca_bundle`, client certificate)."""

    url: str
    headers: dict[str, str] = {}
    """Sent with each POST; values may be `env:VAR` or `file:/path` references."""
    timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    retries: Annotated[int, Meta(ge=0, le=10)] = 3
    """Further attempts after a failed one (a connection error or a 5xx/429), with doubling backoff."""


class BudgetSpec(Frozen, frozen=True, kw_only=True):
    """Calls allowed per key in each fixed UTC hour or day, with alerts at thresholds and an optional refusal."""

    name: Annotated[str, Meta(min_length=1)]
    scope: str
    """`tenant` (the `limits.tenant_header` value), `client_token` (a SHA-256 of the caller's
    Authorization header; the token itself is never kept) or `channel`."""
    match: str | None = None
    """Only this tenant or channel (absent: every key has its own budget). Not for `client_token`."""
    calls: AtLeastOne
    """`tools/call`, `prompts/get` and `resources/read` requests allowed per window."""
    per: str
    """`hour` or `day` (fixed UTC windows: 14:00 to 15:00, midnight to midnight)."""
    alerts: list[Percent] = field(default_factory=lambda: [80, 100])
    """Percentages of `calls`: crossing one (once per window and key) logs, counts, and calls the webhook."""
    refuse: bool = False
    """At 100 %, refuse further calls with 429 until the window ends."""
    webhook: WebhookSpec | None = None


class TenantSpec(Frozen, frozen=True, kw_only=True):
    """What one tenant (a `limits.tenant_header` value; `*`: any other) may use."""

    allow_tools: list[str] | None = None
    """Globs on tool names as clients see them; others are hidden and refused like a `deny` route."""


def check_admin(
    audit: AuditSpec | None,
    budgets: Sequence[BudgetSpec],
    tenants: Mapping[str, TenantSpec],
    allow_tools: Mapping[str, Sequence[str] | None],
    *,
    tenant_header: str | None,
    channels: Sequence[str],
    file: str,
) -> None:
    """Value checks the Structs cannot express: unique names, globs, matches, the tenant header."""
    if audit is not None and audit.format not in AUDIT_FORMATS:
        raise ConfigError(file, "audit.format", f"`json` or `text` (got {audit.format!r})")
    if audit is not None and audit.backups == 0 and audit.retention_days is not None:
        raise ConfigError(file, "audit.retention_days", "nothing (there are no rotated files with `backups: 0`)")
    seen: set[str] = set()
    for i, budget in enumerate(budgets):
        key = f"budgets[{i}]"
        if budget.name in seen:
            raise ConfigError(file, f"{key}.name", f"a name no other budget has (got {budget.name!r} twice)")
        seen.add(budget.name)
        if budget.scope not in BUDGET_SCOPES:
            raise ConfigError(file, f"{key}.scope", f"one of {', '.join(BUDGET_SCOPES)} (got {budget.scope!r})")
        if budget.per not in BUDGET_PERIODS:
            raise ConfigError(file, f"{key}.per", f"`hour` or `day` (got {budget.per!r})")
        if budget.scope == "tenant" and tenant_header is None:
            raise ConfigError(file, f"{key}.scope", "`limits.tenant_header` set, for a tenant budget")
        if budget.scope == "client_token" and budget.match is not None:
            raise ConfigError(file, f"{key}.match", "nothing on a client_token budget (tokens are never written down)")
        if budget.scope == "channel" and budget.match is not None and budget.match not in channels:
            known = ", ".join(sorted(channels))
            expected = f"a channel defined under `channels` (got {budget.match!r}; known: {known})"
            raise ConfigError(file, f"{key}.match", expected)
        if len(set(budget.alerts)) != len(budget.alerts):
            raise ConfigError(file, f"{key}.alerts", "distinct percentages")
    if tenants and tenant_header is None:
        raise ConfigError(file, "tenants", "`limits.tenant_header` set (it names the tenant)")
    lists: dict[str, Sequence[str] | None] = {
        f"tenants.{name}.allow_tools": spec.allow_tools for name, spec in tenants.items()
    }
    lists.update({f"channels.{name}.allow_tools": globs for name, globs in allow_tools.items()})
    for key, globs in lists.items():
        for j, pattern in enumerate(globs or ()):
            problem = glob_error(pattern)
            if problem is not None:
                raise ConfigError(file, f"{key}[{j}]", f"a glob pattern ({problem})")
