"""gateway.dispatch.admin with real files: a reload that changes `audit:` moves the call records to the new file and
closes the old one after its queued records; one that changes `budgets:` keeps unchanged budgets' counts; a new
audit file that cannot be opened or a webhook reference that does not resolve rejects the reload (ConfigError
naming the key) and leaves the running controls as they were."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.config.routing import RoutingConfig, parse
from gateway.dispatch.admin import AdminControls
from gateway.dispatch.budgets import Caller
from gateway.observe.hooks import NOOP
from gateway.observe.records import CallRecord
from gateway.protocol.errors import ConfigError, RateLimited

SERVERS = "servers:\n  a: {stdio: {command: cat}}\nchannels:\n  main: [a]\n"


def _config(extra: str) -> RoutingConfig:
    return parse((SERVERS + extra).encode(), "routing.yaml")


def _call(name: str) -> CallRecord:
    return CallRecord(
        time=1_700_000_000.0,
        tunnel="t",
        channel="main",
        method="tools/call",
        name=name,
        outcome="ok",
        status=200,
        duration_s=0.001,
    )


def _names(path: Path) -> list[str]:
    return [json.loads(line)["name"] for line in path.read_text().splitlines()]


async def test_a_changed_audit_file_takes_the_records_from_then_on(tmp_path: Path) -> None:
    routes = tmp_path / "routing.yaml"
    before = _config("audit: {file: first.jsonl}\n")
    async with aiohttp.ClientSession() as http:
        controls = AdminControls.open(before, routes, http, NOOP)
        try:
            controls.records.record(_call("before"))
            assert controls.prepare(before, before) is None
            after = _config("audit: {file: second.jsonl}\n")
            change = controls.prepare(after, before)
            assert change is not None
            assert await controls.apply(change) is None  # budgets unchanged: the dispatcher keeps its own
            controls.records.record(_call("after"))
        finally:
            await controls.close()
    assert _names(tmp_path / "first.jsonl") == ["before"]
    assert _names(tmp_path / "second.jsonl") == ["after"]


async def test_audit_turned_off_and_on_by_reloads(tmp_path: Path) -> None:
    routes = tmp_path / "routing.yaml"
    on, off = _config("audit: {file: calls.jsonl}\n"), _config("")
    async with aiohttp.ClientSession() as http:
        controls = AdminControls.open(on, routes, http, NOOP)
        try:
            change = controls.prepare(off, on)
            assert change is not None
            await controls.apply(change)
            assert not controls.records  # no sink left: the dispatcher builds no record
            change = controls.prepare(on, off)
            assert change is not None
            await controls.apply(change)
            controls.records.record(_call("again"))
        finally:
            await controls.close()
    assert _names(tmp_path / "calls.jsonl") == ["again"]


async def test_a_changed_budget_keeps_its_count_and_refuses_at_its_new_limit(tmp_path: Path) -> None:
    routes = tmp_path / "routing.yaml"
    before = _config("budgets: [{name: b, scope: channel, calls: 10, per: day, refuse: true}]\n")
    async with aiohttp.ClientSession() as http:
        controls = AdminControls.open(before, routes, http, NOOP)
        try:
            for _ in range(3):
                controls.budgets.spend("tools/call", Caller(channel="main"))
            after = _config("budgets: [{name: b, scope: channel, calls: 3, per: day, refuse: true}]\n")
            change = controls.prepare(after, before)
            assert change is not None
            budgets = await controls.apply(change)
            assert budgets is controls.budgets
            with pytest.raises(RateLimited):
                budgets.spend("tools/call", Caller(channel="main"))
        finally:
            await controls.close()


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("audit: {file: blocker/calls.jsonl}\n", "audit.file"),  # `blocker` is a file: no folder there
        (
            "audit: {file: calls.jsonl}\n"
            "budgets: [{name: b, scope: channel, calls: 1, per: day,\n"
            "           webhook: {url: 'http://127.0.0.1:9/h', headers: {X-Token: 'env:ADMIN_TEST_UNSET_VAR'}}}]\n",
            "budgets[0].webhook.headers.X-Token",
        ),
    ],
)
async def test_a_bad_change_is_rejected_and_the_running_controls_stay(tmp_path: Path, extra: str, key: str) -> None:
    routes = tmp_path / "routing.yaml"
    before = _config("audit: {file: calls.jsonl}\n")
    (tmp_path / "blocker").write_text("")
    async with aiohttp.ClientSession() as http:
        controls = AdminControls.open(before, routes, http, NOOP)
        try:
            with pytest.raises(ConfigError) as caught:
                controls.prepare(_config(extra), before)
            assert caught.value.key == key
            controls.records.record(_call("still"))
        finally:
            await controls.close()
    assert _names(tmp_path / "calls.jsonl") == ["still"]
