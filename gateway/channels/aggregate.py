"""An aggregated channel: several servers behind one channel, seen by clients as one MCP server.
It owns no transport and no era bridging: each forwarded request takes `gateway.channels.calls`.

Owns what a client of either era asks of such a channel: the gateway's own answers (`initialize`
with merged capabilities and the sessions it issues, `server/discover`, `ping`, `logging/setLevel`
to every server), merged lists (`gateway.channels.catalog`) paged with the gateway's own cursors,
requests sent to the server that owns the name (or the one a `to:` rule names), `deny` rules, list
changes passed on to clients, and requests servers send to clients during a call (their ids name
the server, so the answer finds its way back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway import __version__
from gateway.channels.calls import Calls, Leg, forwarded_headers
from gateway.channels.catalog import Catalog, Member, View, final
from gateway.channels.channel import Activity, Plan, for_client
from gateway.channels.cursors import InvalidCursor, digest, page
from gateway.channels.events import ChannelEvents
from gateway.channels.lists import CALL_OF_LIST, LIST_KEYS, merge_capabilities, string_member, with_member
from gateway.channels.mrtr import Held
from gateway.channels.rules import NO_ROUTE, Route, Router
from gateway.channels.sessions import (
    ClientSession,
    SessionStore,
    UpstreamSession,
    open_upstream_session,
    session_headers,
)
from gateway.config.routing import ChannelSpec
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.eras import EMPTY_OBJECT, META, MODERN_VERSIONS, SERVER_INFO_KEY, Bridge
from gateway.protocol.errors import (
    CommandError,
    DiscoveryUnsupported,
    InvalidRequestParams,
    RouteDenied,
    SessionNotFound,
    UnknownTarget,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.protocol.headers import SESSION_HEADER, VERSION_HEADER
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo, tag_id, untag_id
from gateway.protocol.wire import Headers, JsonRpcMessage, header_value, json_headers
from gateway.upstream.base import Upstream
from gateway.upstream.pool import ClientProcesses, untagged

log = logging.getLogger(__name__)

INIT_ID: Final = Raw(b'"gw-client-init"')
NAMED_PARAM: Final = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}


class MethodNotFound(CommandError):
    code = -32601
    status = 404


class AggregateChannel:
    """One channel over several servers (or one server with routing rules or per-client processes)."""

    def __init__(
        self,
        name: str,
        spec: ChannelSpec,
        upstreams: Mapping[str, Upstream],
        bridge: Bridge,
        router: Router,
        sessions: SessionStore,
        *,
        targets: Sequence[str] = (),
        telemetry: Telemetry = NOOP,
    ) -> None:
        self.name = name
        self.spec = spec
        self._bridge = bridge
        self._codec = bridge.codec
        self.router = router
        self.sessions = sessions
        self._telemetry = telemetry
        members = [Member(server, upstreams[server], str(i)) for i, server in enumerate(spec.servers)]
        extra = [t for t in targets if t not in spec.servers]
        members += [Member(t, upstreams[t], str(len(members) + i), listed=False) for i, t in enumerate(extra)]
        self.members = {member.name: member for member in members}
        self._by_tag = {member.tag: member for member in members}
        self._listed = [member for member in members if member.listed]
        self.events = ChannelEvents(self._codec, listen_timeout_s=spec.listen_timeout_s, watch=self._watch_resource)
        self.catalog = Catalog(name, members, spec, bridge, self.events.changed, self.events.updated)
        self._calls = Calls(bridge, telemetry=telemetry)
        self.plan = Plan(
            tuple(member.upstream for member in members), (sessions.keys, sessions.ttl_s), (spec, router.specs)
        )
        self._activity = Activity()

    @property
    def upstreams(self) -> list[Upstream]:
        return [member.upstream for member in self.members.values()]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.catalog.start()

    async def close(self) -> None:
        await self.catalog.close()
        await self._calls.close()

    async def wait_idle(self) -> None:
        await self._activity.wait_idle()

    # ------------------------------------------------------------------ the channel interface

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        """The routing decision for a request, with the server that will serve it when already known."""
        if message.method is UNSET:
            return NO_ROUTE
        name = self._target(message.method, message.params)
        decision = self.router.decide(self.name, message.method, name, headers)
        server = decision.to
        if server is None and name is not None:
            if message.method in ("tools/call", "prompts/get"):
                owner = self.catalog.owner_now("tools/list" if message.method == "tools/call" else "prompts/list", name)
                server = owner.server if owner is not None else None
            elif message.method.startswith("resources/"):
                server = self.catalog.resource_owner_now(name)
        if server is None and len(self._listed) == 1 and message.method not in LOCAL_METHODS:
            server = self._listed[0].name
        return dataclasses.replace(decision, server=server)

    def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        """Serve one client message: yields Notify frames, then one Reply."""
        return self._activity.track(for_client(self._bridge, message, headers, self._run(message, headers)))

    async def oauth_discovery(self, deadline: float | None) -> bytes:
        """None: an aggregated channel is no single protected resource (RFC 9728 §1: one metadata
        document per resource), whatever its servers are."""
        raise DiscoveryUnsupported(f"channel {self.name!r}", "it aggregates servers; OAuth needs a one-server channel")

    async def end_session(self, headers: Headers) -> Reply:
        """`session_termination`: forget the session, end the upstream sessions and processes held for it."""
        token = header_value(headers, SESSION_HEADER)
        session = self.sessions.open(token) if token is not None else None
        if session is None:
            return Reply(404)
        self.sessions.end(session)
        self.events.ended(session.id)
        ends: list[Coroutine[object, object, object]] = []
        for member in self.members.values():
            upstream = member.upstream
            if isinstance(upstream, ClientProcesses):
                ends.append(upstream.end(session.id))
            held = self.sessions.upstream(session, member.name) if upstream.holds_sessions else None
            if held is not None:
                ends.append(upstream.end_session({SESSION_HEADER: [held.id], VERSION_HEADER: [held.version]}))
        for result in await asyncio.gather(*ends, return_exceptions=True):
            if isinstance(result, Exception):
                log.info("channel %r: ending an upstream session failed (%s)", self.name, result)
        return Reply(200)

    # ------------------------------------------------------------------ one message

    async def _run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        if message.is_response:
            yield await self._client_answer(message, headers)
            return
        assert message.method is not UNSET
        method, params = message.method, message.params
        client = self._bridge.client_era(params, headers)
        session: ClientSession | None = None
        token = header_value(headers, SESSION_HEADER)
        if token is not None and client is Era.LEGACY and method != "initialize":
            session = self.sessions.open(token)
            if session is None:
                if not message.is_request:
                    yield Reply(404)
                    return
                raise SessionNotFound()
        if not message.is_request:
            yield Reply(202)  # initialized, cancelled (the call's command ends it), roots changes: nothing to relay
            return
        assert message.id is not UNSET
        for change in self.events.pending(session.id) if session is not None else ():
            yield change
        local = await self._local(method, params, headers, client)
        if local is not None:
            body, extra = local
            yield Reply(200, self._codec.result(message.id, body), json_headers() | extra)
            return
        if self._calls.is_retry(client, params):
            async for frame in self._calls.resume(message.id, params, self._leg_of):
                yield frame
            return
        if method == "subscriptions/listen" and client is Era.MODERN:
            async for frame in self.events.listen(message.id, params):
                yield frame
            return
        if method in ("resources/subscribe", "resources/unsubscribe") and client is Era.LEGACY:
            await self._subscribe(method, params, session)
            yield Reply(200, self._codec.result(message.id, EMPTY_OBJECT), json_headers())
            return
        name = self._target(method, params)
        decision = self.router.decide(self.name, method, name, headers)
        if decision.deny is not None:
            raise RouteDenied(decision.deny)
        if method in LIST_KEYS:
            result = await self._list(method, params, headers, client, decision)
            yield Reply(200, self._codec.result(message.id, result), json_headers())
            return
        member, params = await self._owner(method, params, name, decision)
        async for frame in self._forward(member, method, message.id, params, headers, client, session):
            yield frame

    async def _local(
        self, method: str, params: Raw | UnsetType, headers: Headers, client: Era
    ) -> tuple[Raw, Headers] | None:
        """An answer the channel gives itself, with extra response headers; None to send the request on."""
        if method == "initialize" and client is Era.LEGACY:
            version = self._bridge.requested_version(params)
            capabilities = self._bridge.client_capabilities(params)
            upstream = await self._open_upstream_sessions(version, capabilities)
            token, session = self.sessions.issue(version, capabilities, upstream)
            self.events.opened(session.id)
            return self._initialize_result(version), {SESSION_HEADER: [token]}
        if method == "server/discover":
            return self._discover_result(), {}
        if method == "ping":
            return EMPTY_OBJECT, {}
        if method == "logging/setLevel":
            await self._set_level(params)
            return EMPTY_OBJECT, {}
        return None

    # ------------------------------------------------------------------ identity

    def _infos(self) -> list[UpstreamInfo]:
        return [m.upstream.info for m in self._listed if m.upstream.info is not None]

    def server_info(self) -> Raw:
        configured = self.spec.server_info
        if configured is not None:
            body: dict[str, object] = {"name": configured.name, "version": configured.version or __version__}
            if configured.title:
                body["title"] = configured.title
            return Raw(self._codec.encode(body))
        if len(self._listed) == 1 and self._listed[0].upstream.info is not None:
            return self._listed[0].upstream.info.server_info
        return Raw(self._codec.encode({"name": self.name, "version": __version__}))

    def _capabilities(self) -> Raw:
        infos = self._infos()
        if len(self._listed) == 1 and infos:
            return infos[0].capabilities
        return merge_capabilities(self._codec, [info.capabilities for info in infos])

    def _instructions(self) -> str | None:
        if self.spec.instructions is not None:
            return self.spec.instructions
        if len(self._listed) == 1:
            info = self._listed[0].upstream.info
            return info.instructions if info is not None else None
        parts = [
            f"[{m.name}] {m.upstream.info.instructions}"
            for m in self._listed
            if m.upstream.info is not None and m.upstream.info.instructions
        ]
        return "\n\n".join(parts) or None

    def _initialize_result(self, version: str) -> Raw:
        body: dict[str, object] = {
            "protocolVersion": version,
            "capabilities": self._capabilities(),
            "serverInfo": self.server_info(),
        }
        instructions = self._instructions()
        if instructions:
            body["instructions"] = instructions
        return Raw(self._codec.encode(body))

    def _discover_result(self) -> Raw:
        body: dict[str, object] = {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self._bridge.modern_capabilities(self._capabilities()),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            META: {SERVER_INFO_KEY: self.server_info()},
        }
        instructions = self._instructions()
        if instructions:
            body["instructions"] = instructions
        return Raw(self._codec.encode(body))

    # ------------------------------------------------------------------ lists

    async def _list(self, method: str, params: Raw | UnsetType, headers: Headers, client: Era, decision: Route) -> Raw:
        view = await self.catalog.view(method)
        items = self._visible(view, headers, decision.to)
        cursor = string_member(self._codec, params, "cursor")
        fingerprint = view.fingerprint if len(items) == len(view.items) else _subset_print(items)
        try:
            shown, next_cursor = page(items, fingerprint, cursor, self.spec.page_size)
        except InvalidCursor as exc:
            raise InvalidRequestParams(f"invalid cursor: {exc}") from None
        body: dict[str, object] = {LIST_KEYS[method]: list(shown)}
        if next_cursor is not None:
            body["nextCursor"] = next_cursor
        if client is Era.MODERN:
            body.update(resultType="complete", ttlMs=0, cacheScope="private")
            body[META] = {SERVER_INFO_KEY: self.server_info()}
        return Raw(self._codec.encode(body))

    def _visible(self, view: View, headers: Headers, only: str | None) -> list[Raw]:
        """The view's items this request may see: `deny` rules hide items, a `to:` rule narrows to one server."""
        call = CALL_OF_LIST.get(view.method)
        check = call is not None and self.router.filters(self.name)
        shown: list[Raw] = []
        for (server, item), name in zip(view.items, view.exposed, strict=True):
            if only is not None and server != only:
                continue
            if check and call is not None and self.router.decide(self.name, call, name, headers).deny is not None:
                continue
            shown.append(item)
        return shown

    # ------------------------------------------------------------------ owners

    def _target(self, method: str, params: Raw | UnsetType) -> str | None:
        """The tool/prompt name or resource URI a request addresses, as the client sent it."""
        key = NAMED_PARAM.get(method)
        if key is not None:
            return string_member(self._codec, params, key)
        if method == "completion/complete" and params is not UNSET:
            with contextlib.suppress(msgspec.MsgspecError):
                ref = self._codec.members(params).get("ref")
                if ref is not None:
                    return string_member(self._codec, ref, "name") or string_member(self._codec, ref, "uri")
        return None

    async def _owner(
        self, method: str, params: Raw | UnsetType, name: str | None, decision: Route
    ) -> tuple[Member, Raw | UnsetType]:
        """The server a request goes to, and its params with the name that server knows the item by."""
        if method in ("tools/call", "prompts/get") or _is_prompt_ref(method, params):
            if name is None:
                raise InvalidRequestParams(f"{method} needs a name")
            listing = "tools/list" if method == "tools/call" else "prompts/list"
            owner = await self.catalog.owner(listing, name)
            server = decision.to or (owner.server if owner is not None else None)
            if server is None:
                if len(self._listed) != 1:
                    kind = "tool" if method == "tools/call" else "prompt"
                    raise UnknownTarget(f"unknown {kind} {name!r} on channel {self.name!r}")
                server = self._listed[0].name
            original = owner.name if owner is not None and owner.server == server else name
            if original != name:
                params = self._renamed(method, params, original)
            return self.members[server], params
        if name is not None and (method.startswith("resources/") or method == "completion/complete"):
            server = decision.to or await self.catalog.resource_owner(name)
            if server is None:
                if len(self._listed) != 1:
                    raise UnknownTarget(f"unknown resource {name!r} on channel {self.name!r}")
                server = self._listed[0].name
            return self.members[server], params
        if decision.to is not None:
            return self.members[decision.to], params
        if len(self._listed) == 1:
            return self._listed[0], params
        raise MethodNotFound(f"method {method!r} is not served on the aggregated channel {self.name!r}")

    def _renamed(self, method: str, params: Raw | UnsetType, original: str) -> Raw:
        assert params is not UNSET
        if method == "completion/complete":
            members = self._codec.members(params)
            members["ref"] = with_member(self._codec, members["ref"], "name", original)
            return Raw(self._codec.encode(members))
        return with_member(self._codec, params, "name", original)

    # ------------------------------------------------------------------ forwarding

    async def _scoped(self, member: Member, session: ClientSession | None) -> Upstream:
        """The upstream serving this client: its own process for a `session: per-client` server."""
        upstream = member.upstream
        if isinstance(upstream, ClientProcesses) and session is not None:
            return await upstream.for_session(session.id)
        return upstream

    async def _forward(
        self,
        member: Member,
        method: str,
        id: Raw,
        params: Raw | UnsetType,
        headers: Headers,
        client: Era,
        session: ClientSession | None,
    ) -> AsyncIterator[Frame]:
        """Send a request to one server through the forwarded-call path (`gateway.channels.calls`)."""
        try:
            upstream = await self._scoped(member, session)
            info = await upstream.wait_info(headers)
        except UpstreamUnavailable:
            self.catalog.failed(member)
            raise
        if client is Era.MODERN:
            declared = self._calls.declared_by(params)
        else:
            capabilities = session.capabilities if session is not None else EMPTY_OBJECT
            declared = lambda: capabilities  # noqa: E731
        leg = Leg(
            upstream=upstream,
            info=info,
            server=member.name,
            headers=forwarded_headers(upstream, headers, False),
            identity=self.server_info,
            held=_ClientSessionOn(self, member, upstream, session) if session and upstream.holds_sessions else None,
            from_server=functools.partial(self._from_server, member, session=session),
        )
        try:
            async for frame in self._calls.forward(
                leg, method, id, self._calls.params_for(client, info.era, params, declared()), client, declared
            ):
                yield frame
        except UpstreamUnavailable:
            self.catalog.failed(member)
            raise

    def _from_server(self, member: Member, frame: Notify, *, session: ClientSession | None) -> Notify:
        """A server message during a call: requests to the client get an id naming the server;
        list changes update the merged view."""
        if b'"id"' in frame.message and b'"method"' in frame.message:
            with contextlib.suppress(msgspec.MsgspecError):
                request = self._codec.message(frame.message)
                if request.is_request and request.id is not UNSET and request.method is not UNSET:
                    tagged = tag_id(self._codec, member.tag, request.id)
                    return Notify(self._codec.request(tagged, request.method, request.params))
        listed = self.catalog.notification(member, frame.message)
        if listed is not None and session is not None:
            self.events.heard(session.id, listed)  # told on this call's stream already
        return frame

    def end_streams(self) -> None:
        """End every open `subscriptions/listen` stream with its final result (the gateway is stopping)."""
        self.events.end_streams()

    async def _subscribe(self, method: str, params: Raw | UnsetType, session: ClientSession | None) -> None:
        """`resources/subscribe` of a handshake-era client: the gateway watches the resource on its
        server (once for all clients) and tells this session of updates ahead of its next answers."""
        uri = string_member(self._codec, params, "uri")
        if uri is None:
            raise InvalidRequestParams(f"{method} needs a uri")
        if session is None:
            return  # no session to tell
        if method == "resources/unsubscribe":
            self.events.unsubscribe(session.id, uri)
        else:
            await self.events.subscribe(session.id, uri)

    async def _watch_resource(self, uri: str) -> None:
        owner = await self.catalog.resource_owner(uri)
        if owner is not None:
            await self.catalog.watch_resource(self.members[owner], uri)

    # ------------------------------------------------------------------ multi round-trip requests

    def _leg_of(self, held: Held) -> Leg:
        """Where a held call resumes: the server (and its process or session) that was asked."""
        member = self.members[held.member]
        return Leg(
            upstream=held.upstream,
            info=held.info,
            server=member.name,
            headers={},
            identity=self.server_info,
            own_session=held.own_session,
            from_server=functools.partial(self._from_server, member, session=None),
        )

    async def _client_answer(self, message: JsonRpcMessage, headers: Headers) -> Reply:
        """A client's answer to a request a server sent it during a call: to that server, under its own id
        (or to the call waiting for it, when the gateway asked on a 2026-07-28 server's behalf)."""
        answered = self._calls.answered(message)
        if answered is not None:
            return Reply(202 if answered else 404)
        found = untag_id(message.id) if message.id is not UNSET else None
        member = self._by_tag.get(found[0]) if found is not None else None
        if found is None or member is None:
            return Reply(404)
        session: ClientSession | None = None
        token = header_value(headers, SESSION_HEADER)
        if token is not None:
            session = self.sessions.open(token)
            if session is None:
                return Reply(404)
        upstream = await self._scoped(member, session)
        held = self.sessions.upstream(session, member.name) if session and upstream.holds_sessions else None
        forwarded = forwarded_headers(upstream, headers, False)
        if held is not None:
            forwarded.update(session_headers(held))
        return await upstream.respond(untagged(message, found[1]), forwarded, held is None)

    async def _set_level(self, params: Raw | UnsetType) -> None:
        """`logging/setLevel` goes to every handshake-era server that logs (2026-07-28 ones have no such call)."""

        async def one(member: Member) -> None:
            info = member.upstream.info
            if info is None or info.era is not Era.LEGACY or b'"logging"' not in bytes(info.capabilities):
                return
            with contextlib.suppress(UpstreamError, TimeoutError, msgspec.MsgspecError):
                async with asyncio.timeout(self.spec.list_timeout_s):
                    await final(member.upstream.exchange(Call("logging/setLevel", INIT_ID, params, {}, True)))

        await asyncio.gather(*(one(member) for member in self._listed))

    # ------------------------------------------------------------------ upstream sessions (handshake-era HTTP)

    async def _open_upstream_sessions(self, version: str, capabilities: Raw) -> dict[str, UpstreamSession]:
        """A session on each handshake-era HTTP server for a new client, carried in its session id."""
        members = [m for m in self.members.values() if m.upstream.holds_sessions]
        opened = await asyncio.gather(*(self._open_one(m.upstream, version, capabilities) for m in members))
        return {m.name: held for m, held in zip(members, opened, strict=True) if held is not None}

    async def _open_one(self, upstream: Upstream, version: str, capabilities: Raw) -> UpstreamSession | None:
        try:
            async with asyncio.timeout(self.spec.list_timeout_s):
                return await open_upstream_session(upstream, self._bridge, version, capabilities)
        except (UpstreamError, TimeoutError, msgspec.MsgspecError) as exc:
            log.warning("channel %r: no session on %r for a new client (%s)", self.name, upstream.name, exc)
            return None

    async def _held(self, member: Member, upstream: Upstream, session: ClientSession) -> UpstreamSession | None:
        """The session held on this server for the client; opened again when it expired."""
        held = self.sessions.upstream(session, member.name)
        if held is None and member.name in session.upstream:
            held = await self._open_one(upstream, session.version, session.capabilities)
            if held is not None:
                self.sessions.renew(session, member.name, held)
        return held


@dataclasses.dataclass(frozen=True, slots=True)
class _ClientSessionOn:
    """The session an aggregated channel holds on one handshake-era server for one client (a `HeldSession`)."""

    channel: AggregateChannel
    member: Member
    upstream: Upstream
    session: ClientSession

    async def current(self) -> UpstreamSession | None:
        return await self.channel._held(self.member, self.upstream, self.session)

    def expired(self) -> None:
        log.info("channel %r: the session on %r expired; opening a new one", self.channel.name, self.member.name)
        self.channel.sessions.renew(self.session, self.member.name, None)


LOCAL_METHODS: Final = frozenset({"initialize", "server/discover", "ping", "logging/setLevel", *LIST_KEYS})


def _is_prompt_ref(method: str, params: Raw | UnsetType) -> bool:
    """`completion/complete` for a prompt argument (its ref names a prompt, mapped like prompts/get)."""
    return method == "completion/complete" and params is not UNSET and b'"ref/prompt"' in bytes(params)


def _subset_print(items: Sequence[Raw]) -> str:
    return digest(bytes(item) for item in items)
