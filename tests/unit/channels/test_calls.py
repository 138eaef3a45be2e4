"""The one forwarded-call path (`gateway.channels.calls`) behind both kinds of channel.

Each check runs the same message through a one-server `Channel` and an `AggregateChannel` over the same
upstream, which implements our `Upstream` interface in memory so it can say what no real transport
lets through (a transport checks JSON itself). Plain calls: no sockets, no processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
from msgspec import UNSET, Raw

from gateway.channels.aggregate import AggregateChannel
from gateway.channels.channel import Channel, ServedChannel
from gateway.channels.rules import Router
from gateway.channels.sessions import SessionKeys, SessionStore
from gateway.config.routing import ChannelSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import MissingClientCapability, UpstreamProtocolError
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage
from gateway.upstream.base import Upstream
from tests.support.harness import ENVELOPE, MODERN

CODEC = Codec()
MALFORMED = b'{"jsonrpc":"2.0","id":7,"result":{"content":['
INFO = {
    Era.LEGACY: UpstreamInfo(Era.LEGACY, "2025-11-25", Raw(b"{}"), Raw(b'{"name":"s","version":"1"}')),
    Era.MODERN: UpstreamInfo(Era.MODERN, MODERN, Raw(b'{"tools":{}}'), Raw(b'{"name":"s","version":"1"}')),
}
TOOL = {"name": "echo", "inputSchema": {"type": "object"}}


class AnsweringUpstream(Upstream):
    """An upstream of one era that lists one tool and answers every `tools/call` with `answer`."""

    transport = "stdio"

    def __init__(self, era: Era, answer: bytes, *, asks: str | None = None) -> None:
        super().__init__("s", 1.0)
        self._era, self._answer, self._asks = era, answer, asks
        self.calls: list[Call] = []
        self.answers: list[JsonRpcMessage] = []

    async def start(self) -> None:
        self._up(INFO[self._era])

    async def close(self) -> None:
        self._down()

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        self.calls.append(call)
        assert call.id is not None
        if call.method == "tools/list":
            listed: dict[str, object] = {"tools": [TOOL]}
            if self._era is Era.MODERN:
                listed.update(resultType="complete", ttlMs=0, cacheScope="private")
            yield Reply(200, CODEC.result(call.id, json.dumps(listed).encode()))
            return
        if self._asks is not None:  # a request of the client's during the call, as a stdio server sends one
            yield Notify(CODEC.request(Raw(b'"srv-1"'), self._asks, Raw(b"{}")))
        yield Reply(200, self._answer.replace(b'"id":7', b'"id":' + bytes(call.id)))

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        self.answers.append(message)
        return Reply(202)

    async def end_session(self, headers: Headers) -> Reply:
        return Reply(405)


def one_server(upstream: Upstream) -> ServedChannel:
    bridge = Bridge(CODEC)
    return Channel("main", upstream, bridge, SessionStore(SessionKeys.random(), "main", ttl_s=60))


def aggregated(upstream: Upstream) -> ServedChannel:
    bridge = Bridge(CODEC)
    sessions = SessionStore(SessionKeys.random(), "main", ttl_s=60)
    return AggregateChannel("main", ChannelSpec(servers=["s"]), {"s": upstream}, bridge, Router(), sessions)


CHANNELS = {"one-server": one_server, "aggregated": aggregated}


def call_from(client: Era) -> JsonRpcMessage:
    """A `tools/call` of `echo` as a client of `client`'s era sends it."""
    params: dict[str, object] = {"name": "echo", "arguments": {}}
    if client is Era.MODERN:
        params["_meta"] = ENVELOPE
    return CODEC.message(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}).encode())


async def served(channel: ServedChannel, message: JsonRpcMessage) -> Reply:
    headers: Headers = {"MCP-Protocol-Version": [MODERN]} if b"_meta" in bytes(message.params or b"") else {}
    replies = [frame async for frame in channel.run(message, headers) if isinstance(frame, Reply)]
    assert len(replies) == 1
    return replies[0]


@pytest.fixture(params=list(CHANNELS))
def build(request: pytest.FixtureRequest) -> Callable[[Upstream], ServedChannel]:
    return CHANNELS[request.param]


@pytest.mark.parametrize(("client", "server"), [(Era.MODERN, Era.LEGACY), (Era.LEGACY, Era.MODERN)])
async def test_a_malformed_answer_bridged_between_eras_fails_as_malformed_json(
    build: Callable[[Upstream], ServedChannel], client: Era, server: Era
) -> None:
    """Both channel kinds fail the call the same way (`tunnel_failure` source `protocol`, kind
    `malformed_json`), instead of one of them passing bytes on that no client can read."""
    upstream = AnsweringUpstream(server, MALFORMED)
    await upstream.start()
    channel = build(upstream)
    with pytest.raises(UpstreamProtocolError) as raised:
        await served(channel, call_from(client))
    assert raised.value.failure.source == "protocol"
    assert raised.value.failure.transport_error_kind == "malformed_json"
    assert [call.method for call in upstream.calls][-1] == "tools/call"


@pytest.mark.parametrize(("client", "server"), [(Era.MODERN, Era.LEGACY), (Era.LEGACY, Era.MODERN)])
async def test_a_good_answer_is_bridged_the_same_way_on_both_kinds(
    build: Callable[[Upstream], ServedChannel], client: Era, server: Era
) -> None:
    """The sanity half: the same path translates a well-formed result into the client's era
    (MCP 2026-07-28 `resultType` on a result for a 2026-07-28 client; none for a handshake-era one)."""
    result = CODEC.result(Raw(b"7"), b'{"content":[{"type":"text","text":"hi"}],"resultType":"complete"}')
    upstream = AnsweringUpstream(server, result)
    await upstream.start()
    reply = await served(build(upstream), call_from(client))
    answer = json.loads(reply.body)
    assert answer["id"] == 7
    assert answer["result"]["content"] == [{"type": "text", "text": "hi"}]
    assert ("resultType" in answer["result"]) is (client is Era.MODERN)


async def test_the_same_era_passes_the_answer_through_untouched(build: Callable[[Upstream], ServedChannel]) -> None:
    body = CODEC.result(Raw(b"7"), b'{"content":[],"isError":false}')
    upstream = AnsweringUpstream(Era.LEGACY, body)
    await upstream.start()
    reply = await served(build(upstream), call_from(Era.LEGACY))
    assert reply.body == body
    assert upstream.calls[-1].params is not UNSET


async def test_a_roots_request_for_a_client_without_roots_is_answered_empty_and_the_call_goes_on(
    build: Callable[[Upstream], ServedChannel],
) -> None:
    """MCP 2025-11-25 client/roots: the gateway's own session with a handshake-era server declares
    `roots`, so the server may ask at any time (server-everything does right after `initialized`, and
    a stdio call running then receives the request). A 2026-07-28 client that declared no roots has
    none: the server is told so (an empty list) and the client's call is answered, not refused."""
    body = CODEC.result(Raw(b"7"), b'{"content":[]}')
    upstream = AnsweringUpstream(Era.LEGACY, body, asks="roots/list")
    await upstream.start()
    reply = await served(build(upstream), call_from(Era.MODERN))
    assert json.loads(reply.body)["result"]["content"] == []
    assert [(bytes(a.id), bytes(a.result)) for a in upstream.answers if a.result is not UNSET] == [
        (b'"srv-1"', b'{"roots":[]}')
    ]


async def test_an_elicitation_the_client_did_not_declare_is_refused_on_both_kinds(
    build: Callable[[Upstream], ServedChannel],
) -> None:
    """MCP 2026-07-28 MissingRequiredClientCapabilityError (-32021): the server's request is answered
    with the error and the client's call refused, the same on both kinds of channel."""
    upstream = AnsweringUpstream(Era.LEGACY, CODEC.result(Raw(b"7"), b"{}"), asks="elicitation/create")
    await upstream.start()
    with pytest.raises(MissingClientCapability):
        await served(build(upstream), call_from(Era.MODERN))
    assert [a.error is not UNSET for a in upstream.answers] == [True]
