"""One pipelined Redis connection for the relay's scripts: every task's commands go out together in one
write, one batch in flight at a time, replies matched in order (RESP2, parsed by hiredis); and the
pub/sub connection, whose messages are dispatched as they are parsed. No retries.

Owns the socket, the handshake (AUTH, SELECT), the reply-timeout watchdog and the translation of
replies and socket failures into redis-py's exception classes, so `redis_queue.py` retries and maps
them exactly as it does redis-py's own. Connection options (host, port, unix path, TLS context,
credentials, database) are read from a redis-py connection built from the backend's URL, never parsed
here. Why not redis-py's client for these: each command there checks a connection out of the pool,
packs and writes it alone and parses its reply in Python (~85 µs of CPU per script measured in one
process, against ~15 µs here); `bench/RESULTS.md`, "Issue 20, target 5: the Redis client path".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, NoReturn, cast

import hiredis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int
OnMessage = Callable[[bytes, bytes], None]
"""Called with (channel, data) for each pub/sub message, from the protocol callback: must not block."""
OnReply = Callable[[Any], None]
"""Called with a command's raw reply (a `hiredis.ReplyError` for an error reply) or, when the connection
failed, the redis-py exception: from the protocol callback, so it must not block (`outcome` reads it)."""
Waiter = asyncio.Future[Any] | OnReply
_PUSHES: Final = (b"message", b"subscribe", b"unsubscribe")
_pack: Final = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)
"""RESP encoding in C (hiredis's stub types its argument as a 1-tuple)."""

_ERRORS: Final[dict[str, type[RedisError]]] = {
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}
"""A reply error's first word -> the redis-py class its parser would raise (others: ResponseError)."""


class Script:
    """A Lua script bound to a pipe, run by its SHA-1 (EVALSHA), sent whole (EVAL) when Redis does not
    know it yet; `await script(args=[...])` as with redis-py's `register_script`."""

    __slots__ = ("body", "pipe", "sha")

    def __init__(self, pipe: ScriptPipe, body: str) -> None:
        self.pipe = pipe
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    async def __call__(self, args: Sequence[Arg]) -> Any:
        return await self.pipe.run(self, args)


def reply_error(error: hiredis.ReplyError) -> RedisError:
    """The redis-py exception for an error reply (its message only: no arguments are echoed)."""
    message = str(error)
    if message.startswith("ERR max number of clients"):
        return RedisConnectionError(message)
    return _ERRORS.get(message.split(" ", 1)[0], ResponseError)(message)


def outcome(reply: Any) -> Any:
    """What an `OnReply` callback was given, as `ScriptPipe.call` would return it or raise it."""
    if isinstance(reply, hiredis.ReplyError):
        raise reply_error(reply)
    if isinstance(reply, BaseException):
        raise reply
    return reply


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    """An `OnReply` for a waiting task: its future gets the reply (or the failure, as a value `outcome`
    raises); one whose task was cancelled meanwhile gets nothing."""
    if not future.done():
        future.set_result(reply)


def _queue_script(link: _Link, script: Script, args: Sequence[Arg], on_reply: OnReply) -> None:
    """Queue EVALSHA on `link`; a NOSCRIPT reply (a restarted or flushed Redis) queues the script whole
    (EVAL, which also caches it) from the reply's own callback. No task takes part, so a script once
    queued runs even when the task that asked for it is cancelled before the NOSCRIPT comes back (a
    poll's RELEASE whose poller left is one: its commands would otherwise stay taken by nobody)."""

    def landed(reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            if link.lost is None:
                link.expect(on_reply, _pack((b"EVAL", script.body, 0, *args)))
            else:
                on_reply(link.failure())
            return
        on_reply(reply)

    link.expect(landed, _pack((b"EVALSHA", script.sha, 0, *args)))


class PipeStats:
    """What a pipe has sent so far: commands, and the socket writes that carried them."""

    __slots__ = ("commands", "writes")

    def __init__(self) -> None:
        self.commands = 0
        self.writes = 0


class _Link(asyncio.Protocol):
    """One connected socket: replies resolve `waiting` in order; a silent server past the timeout,
    or a lost socket, fails everything still waiting. With `on_message` (a subscribed connection),
    pub/sub messages go to it as they are parsed."""

    def __init__(self, timeout_s: float, stats: PipeStats, on_message: OnMessage | None = None) -> None:
        self.timeout_s = timeout_s
        self.stats = stats
        self.on_message = on_message
        self.reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self.waiting: deque[Waiter] = deque()
        self.out: list[bytes] = []  # packed, not written yet
        self.unanswered = 0  # written, no reply yet: while any, new commands wait for their replies
        self._flushing = False  # a flush is scheduled
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.loop = asyncio.get_running_loop()  # once: CPython 3.11 asks the OS for the pid on every look-up
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._progress = 0  # replies seen; the watchdog compares it between its ticks
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            self._progress += 1
            if self.on_message is not None and type(reply) is list and reply and reply[0] in _PUSHES:
                if reply[0] == b"message":
                    try:
                        self.on_message(reply[1], reply[2])
                    except Exception as exc:  # a listener that fails starts over on a new connection
                        self.abort(RedisConnectionError(f"pub/sub message handler failed ({type(exc).__name__})"))
                        return
                continue
            if not waiting:  # nothing asked for this: the stream is out of step, start over
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            self.unanswered -= 1
            waiter = waiting.popleft()
            if not isinstance(waiter, asyncio.Future):
                self._call(waiter, reply)
            elif not waiter.done():  # its caller was cancelled: the reply is dropped, the order kept
                waiter.set_result(reply)
        if not self.unanswered and self.out and not self._flushing:
            self._flushing = True  # after the callers just answered have run: their next commands join
            self.loop.call_soon(self.flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError("connection to Redis lost")
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not isinstance(waiter, asyncio.Future):
                self._call(waiter, self.failure())
            elif not waiter.done():
                waiter.set_exception(self.failure())
        self.out.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a packed command for the next write: at the end of this loop turn when nothing is in
        flight, else when the batch in flight has been answered. Its future gets the raw reply."""
        future = self.loop.create_future()
        if self.lost is not None:
            future.set_exception(self.failure())
            return future
        self.expect(future, command)
        return future

    def expect(self, waiter: Waiter, command: bytes) -> None:
        """Queue a packed command (on a link not lost) whose reply goes to `waiter`."""
        self.waiting.append(waiter)
        self.post(command)
        if self._watchdog is None:
            self._arm()

    @staticmethod
    def _call(on_reply: OnReply, reply: Any) -> None:
        try:
            on_reply(reply)
        except Exception as exc:  # the callback's own bug: reported, and the stream stays in step
            asyncio.get_running_loop().call_exception_handler(
                {"message": "a Redis reply callback failed", "exception": exc}
            )

    def failure(self) -> BaseException:
        """Why this link is gone, as a fresh exception for each caller (one raised by many callers
        would collect all their tracebacks)."""
        lost = self.lost or RedisConnectionError("connection to Redis lost")
        return type(lost)(*lost.args)

    def post(self, command: bytes) -> None:
        """Queue a packed command whose replies are pushes (SUBSCRIBE): nothing waits for them."""
        self.out.append(command)
        if not self.unanswered and not self._flushing:
            self._flushing = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flushing = False
        if self.out and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.unanswered = len(self.waiting)  # all written now
            self.stats.commands += len(self.out)
            self.stats.writes += 1
        self.out.clear()

    def abort(self, error: RedisError) -> None:
        if self.lost is None:
            self.lost = error
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows, and fails what waits
        else:
            self.connection_lost(None)

    async def aclose(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.lost = self.lost or RedisConnectionError("Redis connection closed")
            self.transport.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.closed)

    def _arm(self) -> None:
        self._watchdog = self.loop.call_later(self.timeout_s, self._check, self._progress)

    def _check(self, progress: int) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        if progress == self._progress:
            self.abort(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._arm()


class ScriptPipe:
    """Runs scripts and commands over one connection, opened on first use and again after a loss.

    Errors are redis-py's: ConnectionError (refused, lost: everything in flight on that socket fails
    together), TimeoutError (no reply within `timeout_s`), ReadOnlyError, ResponseError (a script's
    own error, for that command only)."""

    def __init__(self, template: AbstractConnection, *, connect_timeout_s: float, timeout_s: float) -> None:
        self._template = template
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self.stats = PipeStats()
        self._connecting: asyncio.Future[_Link] | None = None

    def register_script(self, body: str) -> Script:
        return Script(self, body)

    async def run(self, script: Script, args: Sequence[Arg]) -> Any:
        """EVALSHA with no keys (the scripts name theirs in ARGV); EVAL once if Redis lost the script.
        Once queued the script runs even if this caller is cancelled while it waits (`_queue_script`)."""
        link = self._link
        if link is None or link.lost is not None:
            link = await self._connected()
        future: asyncio.Future[Any] = link.loop.create_future()
        _queue_script(link, script, args, functools.partial(_settle, future))
        return outcome(await future)

    def run_soon(self, script: Script, args: Sequence[Arg], on_reply: OnReply) -> bool:
        """EVALSHA with no task: `on_reply` gets the reply (or the failure) from the protocol callback.
        False, with nothing sent, when no connection is open (the caller then takes the awaitable way,
        which connects)."""
        link = self._link
        if link is None or link.lost is not None:
            return False
        _queue_script(link, script, args, on_reply)
        return True

    async def call(self, *command: Arg) -> Any:
        link = self._link
        if link is None or link.lost is not None:
            link = await self._connected()
        reply = await link.send(_pack(command))
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)
        return reply

    async def _connected(self) -> _Link:
        """The open link; one connect for everyone who asks meanwhile."""
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        connecting = self._connecting = asyncio.get_running_loop().create_future()
        try:
            link = await self._connect()
        except Exception as exc:
            connecting.set_exception(exc)
            raise
        except BaseException:
            connecting.set_exception(RedisConnectionError("connecting to Redis was abandoned"))
            raise
        else:
            self._link = link
            connecting.set_result(link)
            return link
        finally:
            self._connecting = None
            if connecting.done() and not connecting.cancelled():
                connecting.exception()  # retrieved here: nobody else may have been waiting

    async def subscribe(self, channels: Sequence[bytes], on_message: OnMessage) -> Subscription:
        """A connection of its own subscribed to `channels`; returns once Redis has confirmed them all."""
        link = await self._connect(on_message)
        subscription = Subscription(link)
        try:
            link.post(_pack(("SUBSCRIBE", *channels)))
            await subscription.ping()  # answered after every channel's confirmation
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def _connect(self, on_message: OnMessage | None = None) -> _Link:
        loop = asyncio.get_running_loop()
        template = self._template
        link = _Link(self._timeout_s, self.stats, on_message)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if isinstance(template, UnixDomainSocketConnection):
                    await loop.create_unix_connection(lambda: link, template.path)
                else:
                    assert isinstance(template, Connection)
                    ssl = template.ssl_context.get() if isinstance(template, SSLConnection) else None
                    await loop.create_connection(lambda: link, template.host, template.port, ssl=ssl)
                await self._handshake(link)
        except TimeoutError as exc:
            link.abort(RedisTimeoutError("timed out connecting to Redis"))
            raise RedisTimeoutError("timed out connecting to Redis") from exc
        except OSError as exc:
            link.abort(RedisConnectionError("cannot connect to Redis"))
            raise RedisConnectionError(f"cannot connect to Redis ({type(exc).__name__})") from exc
        except BaseException:
            link.abort(RedisConnectionError("connecting to Redis was abandoned"))
            raise
        return link

    async def _handshake(self, link: _Link) -> None:
        """AUTH and SELECT as the URL asks, pipelined; their errors are raised (AuthenticationError)."""
        template = self._template
        replies = []
        if template.password:
            auth: tuple[Arg, ...] = ("AUTH", template.password)
            if template.username:
                auth = ("AUTH", template.username, template.password)
            replies.append(link.send(_pack(auth)))
        if template.db:
            replies.append(link.send(_pack(("SELECT", template.db))))
        for reply in replies:
            result = await reply
            if isinstance(result, hiredis.ReplyError):
                raise reply_error(result)

    async def aclose(self) -> None:
        """Close the socket; commands still in flight fail with ConnectionError."""
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()


class Subscription:
    """A subscribed connection: messages reach the `on_message` given to `ScriptPipe.subscribe`
    straight from the parser (no task in between)."""

    def __init__(self, link: _Link) -> None:
        self._link = link

    async def ping(self) -> None:
        reply = await self._link.send(_pack(("PING",)))
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)

    def change(self, before: Collection[bytes], after: Collection[bytes]) -> None:
        """Move this connection from the channels `before` to those `after`: subscribe the new ones,
        unsubscribe the old ones (Redis confirms with pushes, which are passed over); a message on a new
        channel may be missed until then. Nothing is sent when the two are the same."""
        added = [channel for channel in after if channel not in before]
        removed = [channel for channel in before if channel not in after]
        if added:
            self._link.post(_pack(("SUBSCRIBE", *added)))
        if removed:
            self._link.post(_pack(("UNSUBSCRIBE", *removed)))

    async def hold(self, ping_every_s: float) -> NoReturn:
        """Wait until the connection is lost, and raise why (ConnectionError; TimeoutError when a
        PING, sent after `ping_every_s` of quiet, goes unanswered)."""
        closed = self._link.closed
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ping_every_s):
                    await asyncio.shield(closed)
            if closed.done():
                raise self._link.failure()
            await self.ping()

    async def aclose(self) -> None:
        await self._link.aclose()
