"""The merged view of an aggregated channel's lists (tools, prompts, resources, templates): fetched,
cached, merged, watched. Knows nothing of clients, sessions or the tunnel; the pure merging is in `lists`.

Owns fetching each server's lists (every page, as the gateway itself),
caching them until they go stale (a `list_changed`, a restart, the cache TTL,
a failed call), merging them with namespaced names (`gateway.channels.lists` and `names` do
the pure part), and watching servers for list changes outside calls
(`subscriptions/listen` on 2026-07-28 servers, unsolicited notifications on
stdio). A server that is down is left out of the view and rejoins once it
answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
from msgspec import UNSET, Raw

from gateway.channels.cursors import digest
from gateway.channels.lists import (
    LIST_CHANGED,
    LIST_KEYS,
    MAX_UPSTREAM_PAGES,
    has_capability,
    item_name,
    split_page,
    string_member,
    with_member,
)
from gateway.channels.names import NameTable, Owner, PrefixMode, ResourceTable, namespace, resource_table
from gateway.config.routing import ChannelSpec
from gateway.protocol.eras import EMPTY_OBJECT, Bridge
from gateway.protocol.errors import GatewayError, UpstreamError, UpstreamHttpError, UpstreamProtocolError
from gateway.protocol.mcp import Call, Era, Frame, Reply, UpstreamInfo
from gateway.protocol.wire import METHOD_NOT_FOUND
from gateway.upstream.base import Upstream

log = logging.getLogger(__name__)

FEATURES: Final = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resources",
}
"""The server capability a list needs; a server without it contributes nothing."""
LISTEN_ID: Final = Raw(b'"gw-listen"')
LIST_ID: Final = Raw(b'"gw-list"')
LIST_FILTER: Final = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
UPDATED: Final = "notifications/resources/updated"
ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
WATCH_BACKOFF_MAX_S: Final = 30.0
WANTS_A_USER: Final = (
    "; it wants a user's token, and a channel with several servers fetches their lists once for every"
    " caller, without one: give the server a channel of its own"
)
"""What a list refused with 401/403 means on an aggregated channel, and what to do (operator's log)."""


class ListUnavailable(GatewayError):
    """A server's list could not be fetched (it is left out of the view)."""


@dataclass(slots=True)
class Listing:
    """One server's whole list, as fetched."""

    info: UpstreamInfo
    """The server's info at fetch time; a restart or re-probe gives a new object, and makes this stale."""
    items: list[Raw]
    names: list[str | None]
    fetched_at: float


@dataclass(eq=False, slots=True)
class Member:
    """One server of an aggregated channel."""

    name: str
    upstream: Upstream
    tag: str
    """Short, unique within the channel: marks the ids of this server's requests to clients."""
    listed: bool = True
    """False for a server only `to:` rules reach: callable, but its items are not listed."""
    listings: dict[str, Listing] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    watched: set[str] = field(default_factory=set)
    """Resource URIs some client subscribed to on this server (the gateway subscribes once for all)."""
    watcher: asyncio.Task[None] | None = None
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the gateway's `subscriptions/listen` on this server is acknowledged."""

    def lock(self, method: str) -> asyncio.Lock:
        return self.locks.setdefault(method, asyncio.Lock())


@dataclass(frozen=True, slots=True)
class View:
    """A merged list: (server, item as clients see it) in channel order, and how names map back."""

    method: str
    items: list[tuple[str, Raw]]
    names: NameTable | None
    resources: ResourceTable | None
    servers: frozenset[str]
    fingerprint: str
    exposed: list[str | None]
    """Each item's exposed name (tools, prompts) or URI (resources), for deny rules."""


class Catalog:
    """The merged lists of one aggregated channel, cached per server."""

    def __init__(
        self,
        channel: str,
        members: Sequence[Member],
        spec: ChannelSpec,
        bridge: Bridge,
        on_change: Callable[[str], None],
        on_updated: Callable[[str], None] = lambda uri: None,
    ) -> None:
        self.channel = channel
        self.members = list(members)
        self._listed = [m for m in self.members if m.listed]
        self._spec = spec
        self._bridge = bridge
        self._codec = bridge.codec
        self._on_change = on_change
        self._on_updated = on_updated
        self._views: dict[str, View] = {}
        self._known: dict[str, dict[str, Owner]] = {}
        """Exposed names last seen per list, kept for servers that left the view (their calls then
        fail with the server's own error instead of an unknown-name one)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[tuple[Upstream, Callable[[bytes], None]]] = []
        self.mode: PrefixMode = spec.prefix or ("always" if len(self._listed) > 1 else "none")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Watch the listed servers for list changes made outside any call."""
        for member in self._listed:

            def heard(line: bytes, member: Member = member) -> None:
                self.notification(member, line)

            member.upstream.listeners.append(heard)
            self._listeners.append((member.upstream, heard))
            self._rewatch(member)

    def _rewatch(self, member: Member) -> None:
        """(Re)start the watch on a server, with the resource URIs it must report on."""
        if member.watcher is not None:
            member.watcher.cancel()
            self._tasks.remove(member.watcher)
        member.listening.clear()
        member.watcher = asyncio.create_task(self._watch(member), name=f"watch:{self.channel}:{member.name}")
        self._tasks.append(member.watcher)

    async def close(self) -> None:
        for upstream, listener in self._listeners:
            with contextlib.suppress(ValueError):
                upstream.listeners.remove(listener)
        self._listeners.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ change tracking

    def notification(self, member: Member, message: bytes) -> str | None:
        """A server notification seen anywhere: a `list_changed` invalidates that server's list,
        a `resources/updated` is passed on.

        Returns the list method it invalidated, or None when it was not a list change."""
        if b"list_changed" not in message and UPDATED.encode() not in message:
            return None
        try:
            decoded = self._codec.message(message)
        except msgspec.MsgspecError:
            return None
        method = decoded.method
        if method == UPDATED:
            uri = string_member(self._codec, decoded.params, "uri")
            if uri is not None:
                self._on_updated(uri)
            return None
        listed = LIST_CHANGED.get(method) if isinstance(method, str) else None
        if listed is None:
            return None
        self.invalidate(member, listed)
        return listed

    def invalidate(self, member: Member, method: str) -> None:
        dropped = member.listings.pop(method, None)
        if method == "resources/list":
            dropped = member.listings.pop("resources/templates/list", None) or dropped
        self._views.pop(method, None)
        if method == "resources/list":
            self._views.pop("resources/templates/list", None)
        if member.listed:
            self._on_change(method)
        if dropped is not None:
            log.info("channel %r: %s of server %r changed", self.channel, method, member.name)

    def failed(self, member: Member) -> None:
        """A call found the server down: its lists are fetched again (or it is left out) next time."""
        if member.listings:
            member.listings.clear()
            self._views.clear()

    # ------------------------------------------------------------------ views

    def current(self, method: str) -> View | None:
        """The last merged view built (no fetching)."""
        return self._views.get(method)

    async def view(self, method: str) -> View:
        """The merged list, fetching what is missing or stale; servers that fail are left out."""
        listings = await asyncio.gather(*(self._listing(member, method) for member in self._listed))
        contributing = {m.name: listing for m, listing in zip(self._listed, listings, strict=True) if listing}
        previous = self._views.get(method)
        view = self._merge(method, contributing)
        if previous is not None and previous.servers != view.servers:
            self._on_change(method)  # a server left or rejoined: clients should list again
        self._views[method] = view
        return view

    def _merge(self, method: str, listings: dict[str, Listing]) -> View:
        names: NameTable | None = None
        resources: ResourceTable | None = None
        items: list[tuple[str, Raw]] = []
        exposed: list[str | None] = []
        if method in ("tools/list", "prompts/list"):
            listed = {server: [n for n in listing.names if n is not None] for server, listing in listings.items()}
            names, warnings = namespace(
                listed,
                separator=self._spec.separator,
                mode=self.mode,
                rename=self._spec.rename,
                servers=[m.name for m in self._listed],
            )
            known = self._known.setdefault(method, {})
            for exposed_name, owner in list(known.items()):
                if owner.server in listings:
                    del known[exposed_name]  # listed afresh below
            known.update(names.items())
            for warning in warnings:
                log.warning("channel %r: %s", self.channel, warning)
            for server, listing in listings.items():
                for item, name in zip(listing.items, listing.names, strict=True):
                    shown = names.exposed(server, name) if name is not None else None
                    if shown is None:
                        continue
                    items.append((server, item if shown == name else with_member(self._codec, item, "name", shown)))
                    exposed.append(shown)
        else:
            seen: set[str] = set()
            for server, listing in listings.items():
                for item, name in zip(listing.items, listing.names, strict=True):
                    if name is not None and name in seen:
                        continue  # the first server listing a URI owns it
                    if name is not None:
                        seen.add(name)
                    items.append((server, item))
                    exposed.append(name)
            if method == "resources/list":
                templates = self._views.get("resources/templates/list")
                resources = self._resource_table(listings, templates)
            else:
                resources = None
        fingerprint = digest(bytes(item) for _, item in items)
        return View(method, items, names, resources, frozenset(listings), fingerprint, exposed)

    def _resource_table(self, listings: dict[str, Listing], templates: View | None) -> ResourceTable:
        uris = {server: [n for n in listing.names if n is not None] for server, listing in listings.items()}
        by_server: dict[str, list[str]] = {}
        if templates is not None:
            for (server, _), template in zip(templates.items, templates.exposed, strict=True):
                if template is not None:
                    by_server.setdefault(server, []).append(template)
        return resource_table(uris, by_server)

    # ------------------------------------------------------------------ owners

    async def owner(self, method: str, name: str) -> Owner | None:
        """Who serves an exposed tool (`tools/list`) or prompt (`prompts/list`) name."""
        view = self._views.get(method)
        found = view.names.resolve(name) if view is not None and view.names is not None else None
        if found is None or view is None or found.server not in view.servers:
            view = await self.view(method)
            assert view.names is not None
            found = view.names.resolve(name) or self._known.get(method, {}).get(name)
        return found

    def owner_now(self, method: str, name: str) -> Owner | None:
        """`owner` from the views already built (no fetching)."""
        view = self._views.get(method)
        found = view.names.resolve(name) if view is not None and view.names is not None else None
        return found or self._known.get(method, {}).get(name)

    async def resource_owner(self, uri: str) -> str | None:
        """Who serves a resource URI: a listed URI first, then a matching URI template."""
        found = self.resource_owner_now(uri)
        if found is None:
            await self.view("resources/templates/list")
            view = await self.view("resources/list")
            found = view.resources.owner(uri) if view.resources is not None else None
        return found

    def resource_owner_now(self, uri: str) -> str | None:
        view = self._views.get("resources/list")
        return view.resources.owner(uri) if view is not None and view.resources is not None else None

    # ------------------------------------------------------------------ fetching

    async def _listing(self, member: Member, method: str) -> Listing | None:
        upstream = member.upstream
        if upstream.transport == "stdio" and not upstream.ready:
            member.listings.pop(method, None)
            return None  # restarting or failing: left out until it is back
        loop = asyncio.get_running_loop()
        cached = member.listings.get(method)
        if cached is not None and self._fresh(cached, upstream, loop.time()):
            return cached
        async with member.lock(method):
            cached = member.listings.get(method)
            if cached is not None and self._fresh(cached, upstream, loop.time()):
                return cached
            try:
                async with asyncio.timeout(self._spec.list_timeout_s):
                    listing = await self._fetch(member, method)
            except (UpstreamError, ListUnavailable, TimeoutError, msgspec.MsgspecError) as exc:
                log.warning(
                    "channel %r: server %r left out of %s (%s)%s",
                    self.channel,
                    member.name,
                    method,
                    exc,
                    WANTS_A_USER if isinstance(exc, UpstreamHttpError) and exc.wants_credentials else "",
                )
                member.listings.pop(method, None)
                return None
            member.listings[method] = listing
            return listing

    def _fresh(self, listing: Listing, upstream: Upstream, now: float) -> bool:
        return listing.info is upstream.info and now - listing.fetched_at < self._spec.cache_ttl_s

    async def _fetch(self, member: Member, method: str) -> Listing:
        upstream = member.upstream
        info = await upstream.wait_info()
        items: list[Raw] = []
        if has_capability(self._codec, info.capabilities, FEATURES[method]):
            cursor: str | None = None
            for _ in range(MAX_UPSTREAM_PAGES):
                result = await self.request(upstream, info, method, {"cursor": cursor} if cursor else {})
                if result is None:
                    break
                page, cursor = split_page(self._codec, method, result)
                items.extend(page)
                if not cursor:
                    break
            else:
                log.warning("channel %r: server %r keeps paging %s; cut off", self.channel, member.name, method)
        names = [item_name(self._codec, method, item) for item in items]
        return Listing(info, items, names, asyncio.get_running_loop().time())

    async def request(
        self, upstream: Upstream, info: UpstreamInfo, method: str, params: dict[str, object]
    ) -> Raw | None:
        """A request of the gateway's own: its result, None for method-not-found; raises otherwise."""
        body = Raw(self._codec.encode(params))
        if info.era is Era.MODERN:
            body = self._bridge.modern_params(body, EMPTY_OBJECT, self._bridge.client_info)
        reply = await final(upstream.exchange(Call(method, LIST_ID, body, {}, own_session=True)))
        message = self._codec.message(reply.body)
        if message.error is not UNSET:
            error = self._codec.error(message.error)
            if error.code == METHOD_NOT_FOUND:
                return None
            raise ListUnavailable(f"{method} failed: {error.code}")
        if message.result is UNSET:
            raise UpstreamProtocolError(upstream.name, "invalid_protocol_response")
        return Raw(bytes(message.result))

    # ------------------------------------------------------------------ watching

    async def watch_resource(self, member: Member, uri: str) -> None:
        """Have a server report updates of one resource (once for every client that subscribes).

        A 2026-07-28 server's listen is restarted with the URI (and awaited, bounded, so no
        update is missed after this returns); a handshake-era one gets `resources/subscribe`."""
        if uri in member.watched:
            return
        member.watched.add(uri)
        info = member.upstream.info
        if info is not None and info.era is Era.LEGACY:
            with contextlib.suppress(UpstreamError, ListUnavailable, TimeoutError, msgspec.MsgspecError):
                async with asyncio.timeout(self._spec.list_timeout_s):
                    await self.request(member.upstream, info, "resources/subscribe", {"uri": uri})
            return
        self._rewatch(member)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._spec.list_timeout_s):
                await member.listening.wait()

    async def _watch(self, member: Member) -> None:
        """Hold a `subscriptions/listen` on a 2026-07-28 server, to hear of its list changes
        and of updates to the resources clients subscribed to."""
        backoff = 1.0
        while True:
            try:
                info = await member.upstream.wait_info()
                if info.era is not Era.MODERN:
                    return  # a handshake-era server tells of changes on its calls' streams, or unsolicited on stdio
                wanted: dict[str, object] = dict(LIST_FILTER) if _any_list_changed(info.capabilities) else {}
                if member.watched:
                    wanted["resourceSubscriptions"] = sorted(member.watched)
                if not wanted:
                    return
                body = Raw(self._codec.encode({"notifications": wanted}))
                params = self._bridge.modern_params(body, EMPTY_OBJECT, self._bridge.client_info)
                call = Call("subscriptions/listen", LISTEN_ID, params, {}, own_session=True)
                async with closing(member.upstream.exchange(call)) as frames:
                    async for frame in frames:
                        if isinstance(frame, Reply):
                            break
                        backoff = 1.0
                        if ACKNOWLEDGED.encode() in frame.message:
                            member.listening.set()
                        self.notification(member, frame.message)
            except (UpstreamError, msgspec.MsgspecError) as exc:
                log.debug("channel %r: listen on %r ended (%s)", self.channel, member.name, exc)
            finally:
                member.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)


def _any_list_changed(capabilities: Raw) -> bool:
    try:
        caps = msgspec.json.decode(capabilities)
    except msgspec.DecodeError:
        return False
    return isinstance(caps, dict) and any(
        isinstance(caps.get(feature), dict) and caps[feature].get("listChanged")
        for feature in ("tools", "prompts", "resources")
    )


@contextlib.asynccontextmanager
async def closing(frames: AsyncIterator[Frame]) -> AsyncIterator[AsyncIterator[Frame]]:
    """An exchange that is closed (its call retired or cancelled upstream) however the caller leaves it."""
    try:
        yield frames
    finally:
        close = getattr(frames, "aclose", None)
        if close is not None:
            await close()


async def final(frames: AsyncIterator[Frame]) -> Reply:
    """The Reply that ends an exchange (its notifications are dropped)."""
    async with closing(frames) as stream:
        async for frame in stream:
            if isinstance(frame, Reply):
                return frame
    raise UpstreamProtocolError("gateway", "response_body_missing")


LIST_METHODS: Final = tuple(LIST_KEYS)
