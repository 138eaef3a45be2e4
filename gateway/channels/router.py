"""Routing and aggregation rules: pure functions and tables, no I/O.

Owns the `routes:` rule matching (globs on method, name and header values,
first match wins), the namespacing of tool and prompt names in an aggregated
channel (`server__name`, `always` or `conditional`, renames) and its reverse
mapping, the ownership of resource URIs, the merging of list pages and
capabilities, and the gateway's own opaque pagination cursors. Sans-IO: it
never awaits, and imports neither asyncio nor aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.config.globs import compile_glob
from gateway.config.routing import RouteSpec
from gateway.protocol.wire import Codec, Headers

PrefixMode = Literal["always", "conditional", "none"]
T = TypeVar("T")

LIST_KEYS: Final = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
"""The list methods an aggregated channel merges, and the result member holding the items."""

ITEM_KEYS: Final = {
    "tools/list": "name",
    "prompts/list": "name",
    "resources/list": "uri",
    "resources/templates/list": "uriTemplate",
}
"""The member of an item that names it."""

CALL_OF_LIST: Final = {"tools/list": "tools/call", "prompts/list": "prompts/get", "resources/list": "resources/read"}
"""The request a listed item is used with (what a deny rule is checked against when lists are filtered)."""

LIST_CHANGED: Final = {
    "notifications/tools/list_changed": "tools/list",
    "notifications/prompts/list_changed": "prompts/list",
    "notifications/resources/list_changed": "resources/list",
}
"""A list_changed notification and the list it invalidates (resources also invalidate templates)."""

MAX_UPSTREAM_PAGES: Final = 1000
"""A server that keeps returning cursors past this many pages is cut off (a loop guard)."""


# --------------------------------------------------------------------------- routing rules


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


# --------------------------------------------------------------------------- names


@dataclass(frozen=True, slots=True)
class Owner:
    """Who serves an exposed name, and the name it knows the item by."""

    server: str
    name: str


class NameTable:
    """Exposed names of one list (tools or prompts) in an aggregated channel, both ways."""

    def __init__(self, owners: Mapping[str, Owner], separator: str, servers: Sequence[str]) -> None:
        self._owners = dict(owners)
        self._exposed = {(owner.server, owner.name): exposed for exposed, owner in owners.items()}
        self._separator = separator
        self._servers = tuple(servers)

    def resolve(self, exposed: str) -> Owner | None:
        """The owner of an exposed name; a `server<sep>name` not (yet) listed resolves by its prefix."""
        owner = self._owners.get(exposed)
        if owner is not None:
            return owner
        for server in self._servers:
            head = f"{server}{self._separator}"
            if exposed.startswith(head) and len(exposed) > len(head):
                return Owner(server, exposed[len(head) :])
        return None

    def exposed(self, server: str, name: str) -> str | None:
        return self._exposed.get((server, name))

    def items(self) -> list[tuple[str, Owner]]:
        return list(self._owners.items())

    def __len__(self) -> int:
        return len(self._owners)


def namespace(
    listed: Mapping[str, Sequence[str]],
    *,
    separator: str,
    mode: PrefixMode,
    rename: Mapping[str, Mapping[str, str]] | None = None,
    servers: Sequence[str] | None = None,
) -> tuple[NameTable, list[str]]:
    """Exposed names for each server's names (in the mapping's order), and warnings about dropped duplicates.

    A renamed item gets exactly its new name. Otherwise `always` exposes
    `server<sep>name`, `none` the name itself, and `conditional` the name
    itself unless another server exposes the same name (then every such
    name is prefixed). When two items still end up with one exposed name,
    the first server's wins and the other is left out (with a warning).
    `servers` (default: the listed ones) are those a `server<sep>name` not
    listed resolves to by its prefix.
    """
    rename = rename or {}
    plain: dict[str, int] = {}
    for server, names in listed.items():
        renames = rename.get(server, {})
        for name in dict.fromkeys(names):
            key = renames.get(name, name)
            plain[key] = plain.get(key, 0) + 1
    owners: dict[str, Owner] = {}
    warnings: list[str] = []
    for server, names in listed.items():
        renames = rename.get(server, {})
        for name in dict.fromkeys(names):
            if name in renames:
                exposed = renames[name]
            elif mode == "always" or (mode == "conditional" and plain[name] > 1):
                exposed = f"{server}{separator}{name}"
            else:
                exposed = name
            if exposed in owners:
                first = owners[exposed].server
                warnings.append(f"{server}'s {name!r} is left out: {first} already exposes {exposed!r}")
                continue
            owners[exposed] = Owner(server, name)
    return NameTable(owners, separator, list(servers if servers is not None else listed)), warnings


class ResourceTable:
    """Which server serves a resource URI: listed URIs first, then URI templates, in server order."""

    def __init__(self, uris: Mapping[str, str], templates: Sequence[tuple[str, str]]) -> None:
        self._uris = dict(uris)
        self._templates = [(template_regex(t), server) for t, server in templates]

    def owner(self, uri: str) -> str | None:
        server = self._uris.get(uri)
        if server is not None:
            return server
        for pattern, owner in self._templates:
            if pattern.fullmatch(uri):
                return owner
        return None


def resource_table(listed: Mapping[str, Sequence[str]], templates: Mapping[str, Sequence[str]]) -> ResourceTable:
    """The first server (in order) listing a URI owns it; templates likewise."""
    uris: dict[str, str] = {}
    for server, names in listed.items():
        for uri in names:
            uris.setdefault(uri, server)
    pairs = [(t, server) for server, ts in templates.items() for t in ts]
    return ResourceTable(uris, pairs)


_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def template_regex(template: str) -> re.Pattern[str]:
    """An RFC 6570 URI template as a regex matching the URIs it can expand to (levels 1 to 4, loosely)."""
    out: list[str] = []
    last = 0
    for found in _EXPRESSION.finditer(template):
        out.append(re.escape(template[last : found.start()]))
        operator = found[1]
        if operator in ("+", "#"):
            out.append(".*")
        elif operator in ("?", "&"):
            out.append(r"(?:[?&][^#]*)?")
        else:
            out.append("[^/?#]*")
        last = found.end()
    out.append(re.escape(template[last:]))
    return re.compile("".join(out), re.S)


# --------------------------------------------------------------------------- list results


def split_page(codec: Codec, method: str, result: Raw | bytes) -> tuple[list[Raw], str | None]:
    """The items and next cursor of one list result (raises msgspec errors when malformed)."""
    members = codec.members(result)
    raw_items = members.get(LIST_KEYS[method])
    items = [] if raw_items is None else msgspec.json.decode(raw_items, type=list[Raw])
    cursor = msgspec.json.decode(members.get("nextCursor", Raw(b"null")), type=str | None)
    return [Raw(bytes(item)) for item in items], cursor


def item_name(codec: Codec, method: str, item: Raw) -> str | None:
    """The name (tools, prompts), URI (resources) or URI template an item goes by."""
    return codec.string_member(item, ITEM_KEYS[method])


def with_member(codec: Codec, obj: Raw | bytes, key: str, value: object) -> Raw:
    """A JSON object with one member replaced (or added)."""
    members = codec.members(obj)
    members[key] = Raw(codec.encode(value))
    return Raw(codec.encode(members))


def string_member(codec: Codec, obj: Raw | UnsetType, key: str) -> str | None:
    """A string member of a JSON object, or None."""
    if obj is UNSET:
        return None
    try:
        raw = codec.members(obj).get(key)
        value = None if raw is None else msgspec.json.decode(raw)
    except msgspec.MsgspecError:
        return None
    return value if isinstance(value, str) else None


def list_result(codec: Codec, method: str, items: Sequence[Raw], next_cursor: str | None) -> dict[str, object]:
    """A merged list result's members."""
    body: dict[str, object] = {LIST_KEYS[method]: list(items)}
    if next_cursor is not None:
        body["nextCursor"] = next_cursor
    return body


# --------------------------------------------------------------------------- pagination


class InvalidCursor(ValueError):
    """A cursor the gateway did not issue, or one for a list that has changed since."""


def digest(items: Iterable[bytes]) -> str:
    """A short fingerprint of a merged list (cursors are only valid for the list they were made for)."""
    h = hashlib.blake2b(digest_size=8)
    for item in items:
        h.update(len(item).to_bytes(4, "big"))
        h.update(item)
    return h.hexdigest()


def encode_cursor(fingerprint: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"gw1:{fingerprint}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("not a cursor this gateway issued") from None
    version, _, rest = text.partition(":")
    fingerprint, _, offset = rest.partition(":")
    if version != "gw1" or not fingerprint or not offset.isdigit():
        raise InvalidCursor("not a cursor this gateway issued")
    return fingerprint, int(offset)


def page(items: Sequence[T], fingerprint: str, cursor: str | None, size: int | None) -> tuple[Sequence[T], str | None]:
    """One page of a merged list: from the cursor's offset, `size` items, and the next cursor."""
    start = 0
    if cursor is not None:
        found, start = decode_cursor(cursor)
        if found != fingerprint or start > len(items):
            raise InvalidCursor("the list changed since this cursor was issued; list again from the start")
    if size is None:
        return items[start:], None
    end = start + size
    return items[start:end], encode_cursor(fingerprint, end) if end < len(items) else None


# --------------------------------------------------------------------------- capabilities


_OR_FLAGS: Final = ("listChanged", "subscribe")


def merge_capabilities(codec: Codec, capabilities: Sequence[Raw], *, list_changed: bool = True) -> Raw:
    """Server capabilities of several servers as one: every feature any of them has.

    `listChanged` is announced for each list feature when `list_changed` (the
    gateway itself tells clients when its merged view changes).
    """
    merged: dict[str, object] = {}
    for raw in capabilities:
        try:
            caps = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(caps, dict):
            continue
        for feature, value in caps.items():
            if not isinstance(value, dict):
                merged.setdefault(feature, value)
                continue
            into = merged.setdefault(feature, {})
            if not isinstance(into, dict):
                continue
            for key, flag in value.items():
                if key in _OR_FLAGS:
                    into[key] = bool(into.get(key)) or bool(flag)
                elif isinstance(flag, dict) and isinstance(into.get(key, {}), dict):
                    into[key] = {**flag, **into.get(key, {})}
                else:
                    into.setdefault(key, flag)
    if list_changed:
        for feature in ("tools", "prompts", "resources"):
            entry = merged.get(feature)
            if isinstance(entry, dict):
                entry["listChanged"] = True
    return Raw(codec.encode(merged))


def has_capability(codec: Codec, capabilities: Raw, feature: str) -> bool:
    try:
        return feature in codec.members(capabilities)
    except msgspec.MsgspecError:
        return False


# --------------------------------------------------------------------------- ids of server-to-client requests
