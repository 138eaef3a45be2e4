"""gateway.config.admin through routing.yaml: `audit:`, `budgets:`, `tenants:` and `allow_tools` load, and a
broken entry fails naming the file, the key and what was expected."""

from __future__ import annotations

import pytest

from gateway.config import routing as config
from gateway.protocol.errors import ConfigError

TWICE = "{name: b, scope: channel, calls: 1, per: hour}"
BASE = "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n"


def test_admin_sections_load() -> None:
    document = (
        BASE
        + "limits: {tenant_header: X-Tenant}\n"
        + "audit: {file: audit.jsonl, max_bytes: 1000, backups: 2, retention_days: 7}\n"
        + "budgets:\n"
        + "  - {name: t, scope: tenant, calls: 100, per: day, refuse: true,\n"
        + "     webhook: {url: 'http://127.0.0.1:9/hook', headers: {Authorization: 'env:HOOK'}, retries: 2}}\n"
        + "  - {name: c, scope: client_token, calls: 10, per: hour, alerts: [50]}\n"
        + "tenants: {acme: {allow_tools: ['echo', 'db_*']}, '*': {allow_tools: []}}\n"
    )
    routes = config.parse(document.encode(), "routing.yaml")
    assert routes.audit is not None
    assert routes.audit.format == "json"
    assert routes.audit.retention_days == 7
    assert [b.name for b in routes.budgets] == ["t", "c"]
    assert routes.budgets[0].alerts == [80, 100]
    assert routes.budgets[1].alerts == [50]
    assert routes.budgets[0].webhook is not None
    assert routes.budgets[0].webhook.timeout_s == 5.0
    assert routes.tenants["*"].allow_tools == []


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("audit: {max_bytes: 10}\n", "audit", "file"),
        ("audit: {file: a, max_bytes: 0}\n", "audit.max_bytes", "at least 1"),
        ("audit: {file: a, backups: 0, retention_days: 1}\n", "audit.retention_days", "backups: 0"),
        ("audit: {file: a, format: xml}\n", "audit.format", "json"),
        ("budgets: [{name: b, scope: user, calls: 1, per: hour}]\n", "budgets[0].scope", "tenant"),
        ("budgets: [{name: b, scope: channel, calls: 1, per: week}]\n", "budgets[0].per", "hour"),
        ("budgets: [{name: b, scope: channel, calls: 0, per: hour}]\n", "budgets[0].calls", "at least 1"),
        ("budgets: [{name: b, scope: channel, calls: 1, per: hour, alerts: [120]}]\n", "budgets[0].alerts[0]", "100"),
        (
            "budgets: [{name: b, scope: channel, calls: 1, per: hour, alerts: [50, 50]}]\n",
            "budgets[0].alerts",
            "distinct",
        ),
        ("budgets: [{name: b, scope: tenant, calls: 1, per: hour}]\n", "budgets[0].scope", "tenant_header"),
        ("budgets: [{name: b, scope: channel, match: nope, calls: 1, per: hour}]\n", "budgets[0].match", "channel"),
        ("budgets: [{name: b, scope: client_token, match: x, calls: 1, per: hour}]\n", "budgets[0].match", "never"),
        (
            "budgets: [{name: b, scope: channel, calls: 1, per: hour},\n"
            "          {name: b, scope: channel, calls: 2, per: day}]\n",
            "budgets[1].name",
            "no other budget",
        ),
        (
            "budgets: [{name: b, scope: channel, calls: 1, per: hour, webhook: {url: 'ftp://x'}}]\n",
            "budgets[0].webhook.url",
            "http(s) URL",
        ),
        (
            "budgets: [{name: b, scope: channel, calls: 1, per: hour,\n"
            "           webhook: {url: 'https://h.example/a', proxy: 'socks5://p:1080'}}]\n",
            "budgets[0].webhook.proxy",
            "http(s) URL",
        ),
        (
            "budgets: [{name: b, scope: channel, calls: 1, per: hour,\n"
            "           webhook: {url: 'https://h.example/a', client_key: k.pem}}]\n",
            "budgets[0].webhook.client_cert",
            "certificate",
        ),
        ("tenants: {acme: {allow_tools: [x]}}\n", "tenants", "tenant_header"),
        ("limits: {tenant_header: T}\ntenants: {acme: {allow_tools: ['[']}}\n", "tenants.acme.allow_tools[0]", "glob"),
        ("limits: {tenant_header: T}\ntenants: {acme: {deny_tools: [x]}}\n", "tenants.acme", "deny_tools"),
    ],
)
def test_bad_admin_entries_name_the_key(extra: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse((BASE + extra).encode(), "routing.yaml")
    assert caught.value.key == key
    assert expected in caught.value.expected


def test_a_bad_channel_allow_list_names_the_channel() -> None:
    document = "servers: {a: {stdio: {command: x}}}\nchannels: {main: {servers: [a], allow_tools: ['a[']}}\n"
    with pytest.raises(ConfigError) as caught:
        config.parse(document.encode(), "routing.yaml")
    assert caught.value.key == "channels.main.allow_tools[0]"
