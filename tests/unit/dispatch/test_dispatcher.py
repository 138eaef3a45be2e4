"""gateway.dispatch.dispatcher in process: a deadline within one tick of a millisecond clock has passed (issue 14,
defect 5); a call's frames end in its own task after its answer (issue 20)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec

from gateway.dispatch.dispatcher import Dispatcher
from gateway.protocol.mcp import Frame, Reply
from gateway.protocol.wire import Codec, PolledCommand


class FrozenClockLoop(asyncio.SelectorEventLoop):
    """A loop whose clock stands still, like uvloop's millisecond clock within one tick."""

    def time(self) -> float:
        return 1000.0


class RecordingResponder:
    """Our `Responder`: records each frame as it is posted (a pooled connection writes at once)."""

    def __init__(self) -> None:
        self.posted: list[bytes] = []

    async def post(self, body: bytes, shard_token: str, *, terminal: bool) -> bool:
        self.posted.append(body)
        return True


async def test_a_deadline_inside_one_clock_tick_has_passed() -> None:
    """Defect 5 at its cause: with a clock that counts milliseconds (uvloop's), a `1ns` deadline
    received in the current tick compared as not passed, so the command ran and posted a frame."""

    async def run() -> list[bytes]:
        responder = RecordingResponder()
        dispatcher = Dispatcher({}, responder, Codec(), 8)
        received = asyncio.get_running_loop().time()
        for n, value in enumerate(("1ns", "100ns", "1us", "999us", "1ms", "2ms")):
            dispatcher.submit(PolledCommand(request_id=f"r{n}", shard_token="s", response_timeout=value), received)
        await dispatcher.drain(5.0)
        return responder.posted

    def on_frozen_loop() -> list[bytes]:
        loop = FrozenClockLoop()
        try:
            return loop.run_until_complete(run())
        finally:
            loop.close()

    posted = await asyncio.to_thread(on_frozen_loop)  # its own loop, in a thread of its own
    assert [json.loads(body)["request_id"] for body in posted] == ["r4", "r5"]


class EndingChannel:
    """A channel whose call yields its Reply and then ends; it notes how its generator ended."""

    def __init__(self, responder: RecordingResponder) -> None:
        self.responder = responder
        self.ended: str | None = None
        self.posted_before_end: int | None = None
        self.in_task: asyncio.Task[object] | None = None

    async def run(self, message: object, headers: object) -> AsyncIterator[Frame]:
        try:
            yield Reply(200, b'{"jsonrpc":"2.0","id":1,"result":{}}')
        except GeneratorExit:
            self.ended = "closed"
            raise
        self.ended = "returned"
        self.posted_before_end = len(self.responder.posted)
        self.in_task = asyncio.current_task()


async def test_a_calls_frames_end_in_its_own_task_after_its_answer_is_posted() -> None:
    """A call's frame generator left suspended after its Reply is finalized by the loop in a task of its
    own (a wake-up per generator); the dispatcher steps it to its end once the answer is out."""
    responder = RecordingResponder()
    channel = EndingChannel(responder)
    dispatcher = Dispatcher({"main": channel}, responder, Codec(), 8)  # type: ignore[dict-item]
    message = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}'
    command = PolledCommand(request_id="r1", shard_token="s", channel="main", response_timeout="30s")
    dispatcher.submit(msgspec.structs.replace(command, jsonrpc=msgspec.Raw(message)), asyncio.get_running_loop().time())
    await dispatcher.drain(5.0)
    assert [json.loads(body)["resp_code"] for body in responder.posted] == [200]
    assert channel.ended == "returned"  # not closed by a finalizer
    assert channel.posted_before_end == 1  # the answer went out first
    assert channel.in_task is not None
    assert channel.in_task.get_name() == "command-worker"  # the command's own task, not a finalizer's
