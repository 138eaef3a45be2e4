"""The dispatcher's one `CallRecord` per JSON-RPC command: what it names, and that it holds no payload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec

from gateway.channels.rules import Route
from gateway.dispatch.dispatcher import Dispatcher
from gateway.observe.records import CallRecord, CallSinks
from gateway.protocol.errors import UpstreamError
from gateway.protocol.mcp import Frame, Reply
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage, PolledCommand, TunnelFailure

SECRET_ARGUMENT = "argument-text-that-must-not-be-recorded"
SECRET_RESULT = "result-text-that-must-not-be-recorded"


class Responder:
    def __init__(self) -> None:
        self.posted: list[dict[str, object]] = []

    async def post(self, body: bytes, shard_token: str, *, terminal: bool) -> bool:
        self.posted.append(json.loads(body))
        return True


class OneServerChannel:
    """A channel with one server `alpha`: `echo` answers with a result, `broken` fails at the server,
    `slow` never answers."""

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        return Route(server="alpha")

    async def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        name = Codec().string_member(message.params, "name") if message.params is not msgspec.UNSET else None
        if name == "broken":
            raise UpstreamError("server failed", TunnelFailure(source="upstream_http", upstream_response_received=True))
        if name == "slow":
            await asyncio.sleep(60)
        result = {"content": [{"type": "text", "text": SECRET_RESULT}]}
        yield Reply(200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode())


class Sink:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def record(self, call: CallRecord) -> None:
        self.records.append(call)


class BrokenSink:
    def record(self, call: CallRecord) -> None:
        raise RuntimeError("a sink bug")


def command(request_id: str, tool: str, *, timeout: str = "30s", channel: str = "main") -> PolledCommand:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"q": SECRET_ARGUMENT}},
    }
    return PolledCommand(
        request_id=request_id,
        shard_token="s",
        channel=channel,
        response_timeout=timeout,
        headers={"mcp-session-id": ["session-7"]},
        jsonrpc=msgspec.Raw(json.dumps(message).encode()),
    )


async def run_commands(*commands: PolledCommand) -> list[CallRecord]:
    sink = Sink()
    dispatcher = Dispatcher(
        {"main": OneServerChannel()},  # type: ignore[dict-item]
        Responder(),
        Codec(),
        8,
        tunnel="tunnel_test",
        records=CallSinks([BrokenSink(), sink]),
    )
    now = asyncio.get_running_loop().time()
    for each in commands:
        dispatcher.submit(each, now)
    await dispatcher.drain(5.0)
    return sink.records


async def test_each_command_gives_one_record_naming_the_call_and_its_outcome() -> None:
    records = await run_commands(
        command("ok", "echo"),
        command("broken", "broken"),
        command("late", "slow", timeout="50ms"),
        command("nowhere", "echo", channel="missing"),
    )
    by_outcome = {(r.name, r.channel): r for r in records}
    assert len(records) == 4  # a sink that raises does not cost the others their record
    ok = by_outcome[("echo", "main")]
    assert (ok.tunnel, ok.method, ok.server, ok.session, ok.outcome, ok.status) == (
        "tunnel_test",
        "tools/call",
        "alpha",
        "session-7",
        "ok",
        200,
    )
    assert ok.bytes_in > 0
    assert ok.bytes_out > 0
    assert ok.duration_s >= 0
    broken = by_outcome[("broken", "main")]
    assert (broken.outcome, broken.error, broken.status) == ("error", "upstream_http", 502)
    assert by_outcome[("slow", "main")].outcome == "timeout"
    nowhere = by_outcome[("echo", "missing")]
    assert nowhere.outcome == "rejected"
    assert nowhere.server is None


async def test_a_record_holds_no_argument_or_result_text() -> None:
    records = await run_commands(command("ok", "echo"))
    encoded = msgspec.json.encode(records).decode()
    assert SECRET_ARGUMENT not in encoded
    assert SECRET_RESULT not in encoded
