"""Routing rules (`routes:` in routing.yaml): which rule a request matches, and what it decides.
Sans-IO: it never awaits, and imports neither asyncio nor aiohttp.

Owns glob matching on method, name and header values (first match wins) and the decision a rule
gives (`to`, `deny`, `limit_key`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gateway.config.globs import compile_glob
from gateway.config.routing import RouteSpec
from gateway.protocol.wire import Headers


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

    def __init__(self, routes: Sequence[RouteSpec] = ()) -> None:
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
        self.specs = tuple(routes)

    def decide(self, channel: str, method: str, name: str | None, headers: Headers) -> Route:
        """The first rule matching the request, or NO_ROUTE."""
        for rule in self._rules:
            if rule.matches(channel, method, name, headers):
                return rule.route
        return NO_ROUTE

    def reshapes(self, channel: str) -> bool:
        """Whether some `to` or `deny` rule can apply to this channel (it then needs the routing channel)."""
        return any(
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
        """Whether list results on this channel must be checked against deny rules."""
        return any(
            rule.route.deny is not None and (rule.channels is None or channel in rule.channels) for rule in self._rules
        )
