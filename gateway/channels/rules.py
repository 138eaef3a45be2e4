"""Routing rules (`routes:` in routing.yaml): which rule a request matches, and what it decides.
Sans-IO: it never awaits, and imports neither asyncio nor aiohttp.

Owns glob matching on method, name and header values (first match wins), the decision a rule
gives (`to`, `deny`, `limit_key`), and the tool allow-lists (`channels.NAME.allow_tools`,
`tenants:`), which refuse a tool outside them as a `deny` rule would, before any rule is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.config.globs import compile_glob
from gateway.config.routing import RouteSpec, RoutingConfig
from gateway.protocol.wire import Headers, header_value


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision for one request.

    `rule` is the index of the matching rule in `routes` (None: no rule
    matched, the channel's own servers serve it); `to`, `deny` and
    `limit_key` are that rule's action; `server` is the server that will
    serve the request when the channel knows it (None: answered locally or
    fanned out over several servers).
    """

    rule: int | None = None
    to: str | None = None
    deny: str | None = None
    limit_key: str | None = None
    server: str | None = None


NO_ROUTE: Final = Route()
NOT_ALLOWED: Final = Route(deny="this tool is not on the allow-list")
"""The decision for a `tools/call` outside an allow-list (and for such a tool in `tools/list`)."""
ANY_TENANT: Final = "*"
"""The `tenants:` entry for a tenant not named (and for a request without the tenant header)."""


@dataclass(frozen=True, slots=True)
class Allowed:
    """Tool allow-lists: per channel, and per tenant (named by the `tenant_header` request header)."""

    channels: Mapping[str, tuple[re.Pattern[str], ...]]
    tenants: Mapping[str, tuple[re.Pattern[str], ...]]
    tenant_header: str | None = None

    @classmethod
    def compile(
        cls,
        channels: Mapping[str, Sequence[str] | None],
        tenants: Mapping[str, Sequence[str] | None],
        tenant_header: str | None,
    ) -> Allowed:
        def globs(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
            return tuple(compile_glob(p) for p in patterns)

        return cls(
            {name: globs(p) for name, p in channels.items() if p is not None},
            {name: globs(p) for name, p in tenants.items() if p is not None},
            tenant_header,
        )

    def applies(self, channel: str) -> bool:
        return channel in self.channels or bool(self.tenants)

    def allows(self, channel: str, tool: str | None, headers: Headers) -> bool:
        """Whether a tool (by the name clients see) passes the channel's and the caller's tenant's lists."""
        lists = [self.channels.get(channel)]
        if self.tenants:
            tenant = header_value(headers, self.tenant_header) if self.tenant_header else None
            lists.append(self.tenants.get(tenant or ANY_TENANT, self.tenants.get(ANY_TENANT)))
        for patterns in lists:
            if patterns is not None and (tool is None or not any(p.fullmatch(tool) for p in patterns)):
                return False
        return True


NOTHING_LISTED: Final = Allowed({}, {})


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    channels: frozenset[str] | None
    method: re.Pattern[str] | None
    name: re.Pattern[str] | None
    headers: tuple[tuple[str, re.Pattern[str]], ...]
    route: Route

    def matches(self, channel: str, method: str, name: str | None, headers: Headers) -> bool:
        if self.channels is not None and channel not in self.channels:
            return False
        if self.method is not None and not self.method.fullmatch(method):
            return False
        if self.name is not None and (name is None or not self.name.fullmatch(name)):
            return False
        for header, pattern in self.headers:
            values = [v for k, vs in headers.items() if k.lower() == header for v in vs]
            if not any(pattern.fullmatch(value) for value in values):
                return False
        return True


class Router:
    """The ordered `routes:` rules of one configuration, compiled once."""

    def __init__(self, routes: Sequence[RouteSpec] = (), allowed: Allowed = NOTHING_LISTED) -> None:
        self.allowed = allowed
        rules = []
        for index, spec in enumerate(routes):
            match = spec.match
            channel = match.channel
            channels = None if channel is None else frozenset([channel] if isinstance(channel, str) else channel)
            rules.append(
                _Rule(
                    index,
                    channels,
                    compile_glob(match.method) if match.method is not None else None,
                    compile_glob(match.name) if match.name is not None else None,
                    tuple((k.lower(), compile_glob(v)) for k, v in match.headers.items()),
                    Route(index, spec.to, spec.deny, spec.limit_key),
                )
            )
        self._rules: tuple[_Rule, ...] = tuple(rules)
        self.specs = (tuple(routes), allowed)
        """What the router was built from: equal specs decide alike (a reload keeps channels that agree)."""

    @classmethod
    def for_config(cls, config: RoutingConfig) -> Router:
        """The routes and allow-lists of a configuration."""
        channels = {name: spec.allow_tools for name, spec in config.channel_specs.items()}
        tenants = {name: spec.allow_tools for name, spec in config.tenants.items()}
        return cls(config.routes, Allowed.compile(channels, tenants, config.limits.tenant_header))

    def decide(self, channel: str, method: str, name: str | None, headers: Headers) -> Route:
        """NOT_ALLOWED for a tool outside an allow-list, else the first rule matching the request, or NO_ROUTE."""
        if method == "tools/call" and self.allowed.applies(channel) and not self.allowed.allows(channel, name, headers):
            return NOT_ALLOWED
        for rule in self._rules:
            if rule.matches(channel, method, name, headers):
                return rule.route
        return NO_ROUTE

    def concerns(self, channel: str) -> bool:
        """Whether any rule or allow-list can match a request on this channel (if none, every request's
        decision is NO_ROUTE, whatever it carries)."""
        return self.allowed.applies(channel) or any(
            rule.channels is None or channel in rule.channels for rule in self._rules
        )

    def reshapes(self, channel: str) -> bool:
        """Whether some `to` or `deny` rule or an allow-list can apply to this channel (it then needs the
        routing channel)."""
        return self.allowed.applies(channel) or any(
            (rule.route.to is not None or rule.route.deny is not None)
            and (rule.channels is None or channel in rule.channels)
            for rule in self._rules
        )

    def targets(self, channel: str) -> list[str]:
        """Servers `to` rules may send this channel's requests to, in rule order."""
        found: list[str] = []
        for rule in self._rules:
            to = rule.route.to
            if to is not None and (rule.channels is None or channel in rule.channels) and to not in found:
                found.append(to)
        return found

    def filters(self, channel: str) -> bool:
        """Whether list results on this channel must be checked against deny rules and allow-lists."""
        return self.allowed.applies(channel) or any(
            rule.route.deny is not None and (rule.channels is None or channel in rule.channels) for rule in self._rules
        )
