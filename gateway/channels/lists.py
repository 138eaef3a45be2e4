"""Merged lists on an aggregated channel: list results taken apart and put together, capabilities merged.
Sans-IO: it never awaits, and imports neither asyncio nor aiohttp.

Owns the list methods and their item members, the JSON members the channel reads or rewrites, and the
union of several servers' capabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.protocol.wire import Codec

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
