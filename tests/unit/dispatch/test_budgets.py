"""gateway.dispatch.budgets with plain calls and an injected clock: fixed UTC windows, thresholds crossed once per
window and key, the refusal at 100 % with a retry-after until the window ends, keys that expire with their window,
and client tokens known only by their hash."""

from __future__ import annotations

import hashlib

import pytest

from gateway.config.admin import BudgetSpec
from gateway.dispatch import budgets as budgets_module
from gateway.dispatch.budgets import Budgets, Caller, token_key
from gateway.observe.alerts import Alert
from gateway.protocol.errors import RateLimited

HOUR = 3600.0
DAY = 86400.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % DAY)  # a UTC midnight


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _budgets(clock: Clock, *specs: BudgetSpec) -> tuple[Budgets, list[Alert]]:
    alerts: list[Alert] = []
    return Budgets(specs, clock=clock, on_alert=alerts.append), alerts


def _spend(budgets: Budgets, times: int, caller: Caller, method: str = "tools/call") -> None:
    for _ in range(times):
        budgets.spend(method, caller)


def test_thresholds_are_crossed_once_per_window_and_key() -> None:
    clock = Clock(T0 + 10)
    spec = BudgetSpec(name="ch", scope="channel", calls=10, per="hour", alerts=[50, 80, 100])
    budgets, alerts = _budgets(clock, spec)
    main = Caller(channel="main")
    _spend(budgets, 4, main)
    assert alerts == []
    budgets.spend("tools/call", main)
    assert [(a.threshold, a.calls, a.key) for a in alerts] == [(50, 5, "main")]
    _spend(budgets, 10, main)  # past 100 %: each threshold once, no refusal configured
    assert [a.threshold for a in alerts] == [50, 80, 100]
    assert not any(a.refusing for a in alerts)
    assert alerts[0].window_start == T0
    assert alerts[0].window_end == T0 + HOUR
    _spend(budgets, 5, Caller(channel="other"))  # another key has its own count
    assert [(a.threshold, a.key) for a in alerts[3:]] == [(50, "other")]


def test_a_new_window_starts_from_zero_and_drops_the_old_keys() -> None:
    clock = Clock(T0 + HOUR - 1)
    budgets, alerts = _budgets(clock, BudgetSpec(name="ch", scope="channel", calls=2, per="hour", alerts=[100]))
    _spend(budgets, 2, Caller(channel="a"))
    _spend(budgets, 1, Caller(channel="b"))
    assert budgets.keys() == 2
    assert [a.key for a in alerts] == ["a"]
    clock.now = T0 + HOUR  # the next UTC hour
    budgets.spend("tools/call", Caller(channel="a"))
    assert budgets.keys() == 1
    assert len(alerts) == 1
    budgets.spend("tools/call", Caller(channel="a"))
    assert [(a.key, a.window_start) for a in alerts] == [("a", T0), ("a", T0 + HOUR)]


def test_refusal_at_100_percent_retries_after_the_window_ends() -> None:
    clock = Clock(T0 + 5 * HOUR + 0.25)
    spec = BudgetSpec(name="tenant-day", scope="tenant", calls=3, per="day", alerts=[100], refuse=True)
    budgets, alerts = _budgets(clock, spec)
    acme = Caller(channel="main", tenant="acme")
    _spend(budgets, 3, acme)
    assert [(a.threshold, a.refusing) for a in alerts] == [(100, True)]
    with pytest.raises(RateLimited) as refused:
        budgets.spend("tools/call", acme)
    assert refused.value.status == 429
    assert refused.value.limit == "budget:tenant-day"
    assert refused.value.retry_after_ms == (DAY - 5 * HOUR - 0.25) * 1000
    budgets.spend("tools/call", Caller(channel="main", tenant="other"))  # other tenants still pass
    budgets.spend("tools/call", Caller(channel="main"))  # no tenant: not under a tenant budget
    clock.now = T0 + DAY
    budgets.spend("tools/call", acme)  # a new day


def test_a_refused_call_is_counted_nowhere() -> None:
    clock = Clock(T0)
    hard = BudgetSpec(name="hard", scope="channel", calls=1, per="hour", alerts=[100], refuse=True)
    soft = BudgetSpec(name="soft", scope="channel", calls=2, per="hour", alerts=[100])
    budgets, alerts = _budgets(clock, soft, hard)
    budgets.spend("tools/call", Caller(channel="main"))
    with pytest.raises(RateLimited):
        budgets.spend("tools/call", Caller(channel="main"))
    assert [a.budget for a in alerts] == ["hard"]  # `soft` stayed at 1 of 2


def test_only_calls_count_and_match_narrows_the_keys() -> None:
    clock = Clock(T0)
    spec = BudgetSpec(name="one", scope="channel", match="main", calls=1, per="hour", alerts=[100], refuse=True)
    budgets, _ = _budgets(clock, spec)
    for method in ("initialize", "tools/list", "ping", "resources/list"):
        _spend(budgets, 5, Caller(channel="main"), method)
    _spend(budgets, 5, Caller(channel="docs"))
    for method in ("tools/call", "prompts/get", "resources/read"):
        fresh, _ = _budgets(clock, spec)
        fresh.spend(method, Caller(channel="main"))
        with pytest.raises(RateLimited):
            fresh.spend(method, Caller(channel="main"))
    budgets.spend("tools/call", Caller(channel="main"))
    with pytest.raises(RateLimited):
        budgets.spend("tools/call", Caller(channel="main"))


def test_client_tokens_are_counted_by_hash_only() -> None:
    token = "Bearer sk-very-secret-token"
    key = token_key(token)
    assert key is not None
    assert "secret" not in key
    assert key == "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    assert token_key(None) is None
    assert token_key("") is None
    clock = Clock(T0)
    budgets, alerts = _budgets(clock, BudgetSpec(name="tok", scope="client_token", calls=1, per="hour"))
    budgets.spend("tools/call", Caller(channel="main", client_token=key))
    budgets.spend("tools/call", Caller(channel="main"))  # no Authorization: not counted
    assert [(a.key, a.threshold) for a in alerts] == [(key, 80), (key, 100)]


def test_keys_past_the_cap_share_one_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets_module, "MAX_KEYS", 3)
    clock = Clock(T0)
    budgets, alerts = _budgets(clock, BudgetSpec(name="t", scope="tenant", calls=2, per="day", alerts=[100]))
    for tenant in ("a", "b", "c", "d", "e"):
        budgets.spend("tools/call", Caller(channel="main", tenant=tenant))
    assert budgets.keys() == 4  # a, b, c and the shared `(other)`
    assert [a.key for a in alerts] == [budgets_module.OTHER]


def test_a_reload_keeps_the_counts_of_unchanged_budgets_and_applies_new_limits() -> None:
    """`carried`: same name, scope, match and period keep the window's counts and alerted thresholds (a
    lower limit refuses at once); a budget whose period changed, or a new one, starts from zero."""
    clock = Clock(T0 + 10)
    kept = BudgetSpec(name="ch", scope="channel", calls=10, per="hour", alerts=[50, 100])
    regrouped = BudgetSpec(name="daily", scope="channel", calls=10, per="hour", alerts=[50])
    budgets, alerts = _budgets(clock, kept, regrouped)
    main = Caller(channel="main")
    _spend(budgets, 5, main)
    assert [(a.budget, a.threshold) for a in alerts] == [("ch", 50), ("daily", 50)]
    lowered = BudgetSpec(name="ch", scope="channel", calls=5, per="hour", alerts=[50, 100], refuse=True)
    per_day = BudgetSpec(name="daily", scope="channel", calls=10, per="day", alerts=[50])
    new = BudgetSpec(name="new", scope="channel", calls=2, per="hour", alerts=[100])
    reloaded = budgets.carried([lowered, per_day, new])
    with pytest.raises(RateLimited):  # 5 counted before the reload: at the new limit of 5
        reloaded.spend("tools/call", main)
    assert [(a.budget, a.threshold) for a in alerts[2:]] == []  # refused calls count nowhere
    plain = budgets.carried([BudgetSpec(name="ch", scope="channel", calls=10, per="hour", alerts=[50])])
    _spend(plain, 5, main)
    assert [(a.budget, a.threshold, a.calls) for a in alerts[2:]] == []  # 50 % was already alerted
    fresh = budgets.carried([per_day, new])
    _spend(fresh, 5, main)
    assert [(a.budget, a.threshold, a.calls) for a in alerts[2:]] == [("new", 100, 2), ("daily", 50, 5)]


def test_check_refuses_at_the_limit_and_counts_nothing() -> None:
    clock = Clock(T0 + 10)
    budgets, alerts = _budgets(clock, BudgetSpec(name="b", scope="channel", calls=2, per="hour", refuse=True))
    main = Caller(channel="main")
    for _ in range(5):
        budgets.check("tools/call", main)
    assert budgets.keys() == 0
    assert alerts == []
    _spend(budgets, 2, main)
    with pytest.raises(RateLimited):
        budgets.check("tools/call", main)
