"""gateway.dispatch.dispatcher in process: a deadline within one tick of a millisecond clock has passed (issue 14,
defect 5)."""

from __future__ import annotations

import asyncio
import json

from gateway.dispatch.dispatcher import Dispatcher
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
