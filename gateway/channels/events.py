"""What an aggregated channel tells its clients about changes on its servers, in either MCP era.
In-process and bounded; knows nothing of servers beyond the `watch` callback it is given.

Owns the channel's change events (a server's list changed, or it left or
rejoined the merged view; a resource was updated) and their delivery to both
eras: `subscriptions/listen` streams of 2026-07-28 clients (acknowledged, each
notification tagged with the subscription id, ended gracefully after
`listen_timeout_s` or when the gateway stops), and notifications sent to
handshake-era sessions ahead of their next answer (list changes they have not
seen, updates of resources they subscribed to).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.channels.lists import LIST_KEYS
from gateway.protocol.eras import META
from gateway.protocol.mcp import Frame, Notify, Reply
from gateway.protocol.wire import Codec, json_headers

SUBSCRIPTION_ID_KEY: Final = "io.modelcontextprotocol/subscriptionId"
UPDATED: Final = "notifications/resources/updated"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
CHANGED_NOTIFICATION: Final = {
    "tools/list": "notifications/tools/list_changed",
    "prompts/list": "notifications/prompts/list_changed",
    "resources/list": "notifications/resources/list_changed",
    "resources/templates/list": "notifications/resources/list_changed",
}
LIST_FLAGS: Final = {
    "tools/list": "toolsListChanged",
    "prompts/list": "promptsListChanged",
    "resources/list": "resourcesListChanged",
    "resources/templates/list": "resourcesListChanged",
}
"""The `subscriptions/listen` filter flag each list's changes need."""
SESSIONS_KEPT: Final = 10_000
QUEUE_SIZE: Final = 256


class ChannelEvents:
    """Change events of one channel, for its listening clients and its handshake-era sessions."""

    def __init__(self, codec: Codec, *, listen_timeout_s: float, watch: Callable[[str], Awaitable[None]]) -> None:
        self._codec = codec
        self._listen_timeout_s = listen_timeout_s
        self._watch = watch
        """Have the server owning a resource report its updates (the channel knows who that is)."""
        self._changes = dict.fromkeys(LIST_KEYS, 0)
        self._seen: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._subscribed: OrderedDict[str, set[str]] = OrderedDict()
        self._updates: dict[str, set[str]] = {}
        self._listens: set[asyncio.Queue[tuple[str, str]]] = set()

    # ------------------------------------------------------------------ events in

    def changed(self, method: str) -> None:
        """A list changed (or a server left or rejoined the merged view)."""
        self._changes[method] += 1
        self._publish("list", method)

    def updated(self, uri: str) -> None:
        """A server said a resource changed."""
        self._publish("updated", uri)
        for session_id, uris in self._subscribed.items():
            if uri in uris:
                self._updates.setdefault(session_id, set()).add(uri)

    def end_streams(self) -> None:
        """End every open listen stream with its final result (the gateway is stopping)."""
        self._publish("end", "")

    def _publish(self, kind: str, value: str) -> None:
        for queue in self._listens:
            with contextlib.suppress(asyncio.QueueFull):  # a stalled listener misses events, never blocks
                queue.put_nowait((kind, value))

    # ------------------------------------------------------------------ handshake-era sessions

    def opened(self, session_id: str) -> None:
        """A new session has seen every change so far."""
        self._seen[session_id] = dict(self._changes)
        _trim(self._seen)

    def heard(self, session_id: str, method: str) -> None:
        """The session was told of a change of this list on a call's stream already."""
        seen = self._seen.get(session_id)
        if seen is not None:
            seen[method] = self._changes[method]

    def pending(self, session_id: str) -> list[Notify]:
        """Notifications the session has not had yet: sent ahead of its next answer."""
        seen = self._seen.get(session_id)
        if seen is None:
            self.opened(session_id)  # a session from before a restart, or forgotten: from now on
            return []
        self._seen.move_to_end(session_id)
        methods = {CHANGED_NOTIFICATION[m] for m, count in self._changes.items() if seen.get(m, 0) < count}
        seen.update(self._changes)
        found = [Notify(self._codec.notification(m, UNSET)) for m in sorted(methods)]
        for uri in sorted(self._updates.pop(session_id, ())):
            found.append(Notify(self._codec.notification(UPDATED, Raw(self._codec.encode({"uri": uri})))))
        return found

    async def subscribe(self, session_id: str, uri: str) -> None:
        """`resources/subscribe`: the session hears of the resource's updates."""
        uris = self._subscribed.setdefault(session_id, set())
        self._subscribed.move_to_end(session_id)
        _trim(self._subscribed)
        uris.add(uri)
        await self._watch(uri)

    def unsubscribe(self, session_id: str, uri: str) -> None:
        self._subscribed.get(session_id, set()).discard(uri)

    def ended(self, session_id: str) -> None:
        for kept in (self._seen, self._subscribed, self._updates):
            kept.pop(session_id, None)

    # ------------------------------------------------------------------ 2026-07-28 listeners

    async def listen(self, id: Raw, params: Raw | UnsetType) -> AsyncIterator[Frame]:
        """`subscriptions/listen`: the acknowledgement, then each change the filter asks for (tagged
        with the subscription id), then after `listen_timeout_s` the final result (the client
        listens again)."""
        wanted = _listen_filter(self._codec, params)
        honored: dict[str, object] = {key: True for key in LIST_FLAGS.values() if wanted.get(key) is True}
        asked = wanted.get("resourceSubscriptions")
        uris = [uri for uri in asked if isinstance(uri, str)] if isinstance(asked, list) else []
        if uris:
            honored["resourceSubscriptions"] = uris
            for uri in uris:
                await self._watch(uri)
        meta = {SUBSCRIPTION_ID_KEY: id}
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._listens.add(queue)
        try:
            ack = Raw(self._codec.encode({META: meta, "notifications": honored}))
            yield Notify(self._codec.notification(ACKNOWLEDGED, ack))
            until = asyncio.get_running_loop().time() + self._listen_timeout_s
            while True:
                try:
                    async with asyncio.timeout_at(until):
                        kind, value = await queue.get()
                except TimeoutError:
                    break
                if kind == "end":
                    break
                if kind == "list" and honored.get(LIST_FLAGS[value]):
                    body: dict[str, object] = {META: meta}
                    yield Notify(self._codec.notification(CHANGED_NOTIFICATION[value], Raw(self._codec.encode(body))))
                elif kind == "updated" and value in uris:
                    body = {META: meta, "uri": value}
                    yield Notify(self._codec.notification(UPDATED, Raw(self._codec.encode(body))))
        finally:
            self._listens.discard(queue)
        result = Raw(self._codec.encode({"resultType": "complete", META: meta}))
        yield Reply(200, self._codec.result(id, result), json_headers())


def _listen_filter(codec: Codec, params: Raw | UnsetType) -> dict[str, object]:
    """The `notifications` filter of a `subscriptions/listen` request ({} when malformed)."""
    if params is UNSET:
        return {}
    try:
        raw = codec.members(params).get("notifications")
        found = msgspec.json.decode(raw) if raw is not None else {}
    except msgspec.MsgspecError:
        return {}
    return found if isinstance(found, dict) else {}


def _trim(kept: OrderedDict[str, object] | OrderedDict[str, dict[str, int]] | OrderedDict[str, set[str]]) -> None:
    while len(kept) > SESSIONS_KEPT:
        kept.popitem(last=False)
