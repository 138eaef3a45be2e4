"""The Redis queue backend: relay replicas sharing tunnels through one Redis (`backend: {kind: redis}`).
Changes state only through the Lua scripts of `redis_scripts.py`, one per change; no HTTP here.

Owns the pub/sub listener that wakes local polls and callers, the
heartbeat/janitor loop, retries with clear 503s when Redis is unreachable, and
the translation of script replies into Commands, frames and RelayErrors
(redis_scripts.py documents the key layout). Scripts go over one pipelined
connection and pub/sub over another, both redis_pipe.py's.

Why a sorted-set FIFO with Lua scripts, not Streams with consumer groups nor
BLMOVE lists (docs/relay-on-redis.md has the long form):
- Exactly once to one poll: a script removes a command from the queue and marks
  it in flight atomically; a retried take returns the same batch (memo key), a
  poller that left gives its batch back. Consumer groups are built for
  at-least-once (pending entries are re-claimed and re-delivered), which would
  run a command twice; we want at most once, then exactly one terminal frame.
- Polls filter: by channel (`?channel=`), by proc_affinity owner, by expiry and
  by caller liveness. XREADGROUP and BLMOVE can only hand out the head; a script
  over ZRANGE can skip, and ZREM removes from the middle in O(log n) (a caller
  giving up, a purge), where LREM on a list is O(n).
- No connection is parked per long poll or per waiting caller (BLMOVE/BLPOP
  would need one each): waits are local futures woken by pub/sub, with a
  periodic re-check so a lost message costs at most `recheck_s`.
Frames go to the caller's replica through a per-request list (the data) plus a
PUBLISH on that replica's channel (the wake-up, carrying the frame so the caller
usually reads nothing), so a missed message loses nothing. About 2.2 commands per
call: enqueue, deliver, and shares of a take and of a batched forget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Final, TypeVar

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.protocol.wire import Headers, TunnelResponsePayload
from gateway.relay import redis_scripts as lua
from gateway.relay.affinity import ANONYMOUS, ends_session, session_of, session_set_by
from gateway.relay.config import RedisBackend
from gateway.relay.errors import (
    BackendUnavailable,
    CommandLost,
    FrameBacklog,
    PendingNotFound,
    QueueFull,
    RelayClosing,
    ShardMismatch,
    TunnelNotFound,
    TunnelRemoved,
)
from gateway.relay.queue import FRAME_BACKLOG, Command, QueueBackend, TunnelStatus, queued_age
from gateway.relay.redis_pipe import Script, ScriptPipe, Subscription, outcome

log = logging.getLogger("gateway.relay")

T = TypeVar("T")
Arg = str | bytes | int

TRANSIENT: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)
"""Errors that mean "Redis is not reachable (or not writable) right now": retried, then a 503."""

SOCKET_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 2.0
HEALTH_CHECK_S: Final = 10
RETRY_FIRST_S: Final = 0.05
RETRY_MAX_S: Final = 1.0
KEEP_MS: Final = 60_000
"""How long a command's keys outlive its deadline, so late frames still find a (final) record."""
SCAN: Final = 1000
"""At most this many queued commands are looked at by one take or purge."""
_NULL: Final = Raw(b"null")
WAIT_MARGIN_MS: Final = 1000
"""A waiting poll's mark outlives its next re-check by this much (a busy loop re-takes late)."""
MAX_KEY_PART: Final = 128
"""Instance and session ids longer than this are hashed before they become part of a key."""


class _Stored(Struct, array_like=True):
    """A command as kept in Redis: the wire fields; the deadline lives beside it, on Redis's clock."""

    request_id: str
    shard_token: str
    command_type: str
    channel: str
    created_at: str
    headers: Headers
    jsonrpc: Raw  # array_like cannot omit a field: an absent body is stored as `null`


def _key_part(value: str) -> str:
    if len(value) <= MAX_KEY_PART:
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


def _base(prefix: str, tunnel_id: str) -> str:
    """The key prefix of one tunnel's data (`B` in redis_scripts.py's layout)."""
    return f"{prefix}:t:{tunnel_id}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Caller:
    """A caller on this replica waiting for its command's frames.

    `inbox` holds frames that arrived with their wake-up (absolute index -> encoded frame, or the frame
    itself when this replica delivered it); `fresh` until its first wait (nothing can be there before
    the command was even polled); `finished` once it has its terminal frame (its Redis keys can then be
    forgotten in a batch). `woken` and `waiter` are an `asyncio.Event` without its loop look-ups."""

    __slots__ = ("consumed", "finished", "fresh", "inbox", "tunnel_id", "waiter", "woken")

    def __init__(self, tunnel_id: str) -> None:
        self.tunnel_id = tunnel_id
        self.woken = False
        self.waiter: asyncio.Future[None] | None = None
        self.consumed = 0
        self.inbox: dict[int, bytes | TunnelResponsePayload] = {}
        self.fresh = True
        self.finished = False

    def wake(self) -> None:
        self.woken = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Tunnel:
    """This replica's view of one tunnel: key names and local waiting polls."""

    __slots__ = ("base", "polls_waiting", "removed", "waiters", "wake_channel")

    def __init__(self, prefix: str, tunnel_id: str) -> None:
        self.base = _base(prefix, tunnel_id)
        self.wake_channel = f"{prefix}:wake:{tunnel_id}"
        self.waiters: set[asyncio.Future[None]] = set()
        self.polls_waiting = 0
        self.removed = False
        """A reload removed it from this replica: its polls take nothing more."""

    def wake(self) -> None:
        for waiter in self.waiters:
            _settle(waiter)


class RedisQueue(QueueBackend):
    """Queues, in-flight table, frames, gateway bookkeeping and session routing in Redis."""

    def __init__(
        self,
        tunnel_ids: Iterable[str],
        *,
        url: str,
        spec: RedisBackend,
        queue_max: int,
        client_seen_grace_s: float,
        session_ttl_s: float = 3600.0,
    ) -> None:
        self.replica_id = secrets.token_hex(8)
        prefix = spec.key_prefix
        # redis-py reads the URL (host, port or unix path, TLS options, credentials, database) into a
        # connection object; the pipe connects with those options itself and never connects this one.
        options = ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
        self._pipe = ScriptPipe(options, connect_timeout_s=CONNECT_TIMEOUT_S, timeout_s=SOCKET_TIMEOUT_S)
        self._prefix = prefix
        self._tunnels = {tunnel_id: _Tunnel(prefix, tunnel_id) for tunnel_id in tunnel_ids}
        self._wake_channels = {t.wake_channel.encode(): t for t in self._tunnels.values()}
        self._subscription: Subscription | None = None
        """The pub/sub connection while it is subscribed: a reload changes its channels in place."""
        self._replicas = f"{prefix}:replicas"
        self._frames_prefix = f"{prefix}:frames:"
        self._frames_channel = f"{self._frames_prefix}{self.replica_id}".encode()
        self._queue_max = queue_max
        self._grace_ms = int(client_seen_grace_s * 1000)
        self._session_ttl_ms = max(1, int(session_ttl_s * 1000))
        self._retry_s = spec.retry_s
        self._replica_ttl_s = spec.replica_ttl_s
        self._replica_ttl_ms = int(spec.replica_ttl_s * 1000)
        self._recheck_s = spec.recheck_s
        self._callers: dict[str, _Caller] = {}
        self._orphans: set[tuple[str, str]] = set()  # discards that failed; the heartbeat retries them
        self._finished: list[tuple[str, str]] = []  # answered calls to forget in the next batch
        self._forgetting = False  # a discard is forgetting a batch; later ones join the next batch
        self._seen_until: dict[str, float] = {}  # tunnel -> until when "seen" is certain (loop clock)
        self._renewed_at = float("-inf")
        """When (loop clock) this replica's alive mark was last renewed from: ENQUEUE renews it only when
        that is over `replica_ttl_s` / 3 ago (as the heartbeat does), not once per call."""
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop it serves in, from `start()`: CPython 3.11 asks the OS for the process id on every
        `get_running_loop()` (as `asyncio.Event` and `asyncio.timeout` do), several times per call otherwise."""
        self._up: bool | None = None
        self._attempts = itertools.count()  # delivery attempt ids
        self._store = msgspec.json.Encoder()
        self._command_decoder = msgspec.json.Decoder(_Stored)
        self._frame_decoder = msgspec.json.Decoder(TunnelResponsePayload)
        script = self._pipe.register_script
        self._enqueue, self._take, self._release = script(lua.ENQUEUE), script(lua.TAKE), script(lua.RELEASE)
        self._deliver, self._next, self._forget = script(lua.DELIVER), script(lua.NEXT_FRAME), script(lua.FORGET)
        self._forget_final = script(lua.FORGET_FINAL)
        self._poll_end, self._seen, self._status = script(lua.POLL_END), script(lua.CLIENT_SEEN), script(lua.STATUS)
        self._owner, self._heartbeat, self._leave = script(lua.SESSION_OWNER), script(lua.HEARTBEAT), script(lua.LEAVE)

    # ----------------------------------------------------------------------- plumbing

    def _running(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def _tunnel(self, tunnel_id: str) -> _Tunnel:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            raise TunnelNotFound()
        return tunnel

    def _mark(self, up: bool, exc: BaseException | None = None) -> None:
        """Log connectivity changes once per transition (the error's class only: no URLs)."""
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("relay: Redis reachable (replica %s)", self.replica_id)
        else:
            log.warning("relay: Redis unreachable (%s); retrying", type(exc).__name__ if exc else "unknown")

    async def _run(self, script: Script, args: Sequence[Arg], *, window_s: float | None = None) -> Any:
        """Run a script, retrying a lost connection for up to `window_s` (default `retry_s`);
        BackendUnavailable after that. Every script is safe to run twice."""
        loop = self._running()
        stop = loop.time() + (self._retry_s if window_s is None else window_s)
        delay = RETRY_FIRST_S
        while True:
            try:
                result = await self._pipe.run(script, args)
            except TRANSIENT as exc:
                self._mark(False, exc)
                if loop.time() + delay >= stop:
                    raise BackendUnavailable() from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                self._mark(True)
                return result

    def _spawn(self, work: Awaitable[T]) -> asyncio.Task[None]:
        """Run best-effort work owned by this backend (awaited in dispose)."""

        async def run() -> None:
            with contextlib.suppress(BackendUnavailable, *TRANSIENT):
                await work

        task = self._running().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ----------------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Start the pub/sub listener and the heartbeat; a Redis that is down now is retried there."""
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._beat())]

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + 1):
                await self._pipe.call("PING")
        except (TimeoutError, *TRANSIENT):
            return False
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for tunnel in self._tunnels.values():
            tunnel.wake()
        for caller in self._callers.values():
            caller.wake()

    async def dispose(self) -> None:
        """Stop background work, say goodbye (other replicas then purge what is left of ours), disconnect."""
        await self.close()
        for task in self._tasks:
            task.cancel()
        for task in (*self._tasks, *self._background):
            with contextlib.suppress(asyncio.CancelledError, BackendUnavailable, *TRANSIENT):
                await task
        self._tasks = []
        self._forgetting = False  # no batch runs now: dispose forgets what is left
        with contextlib.suppress(BackendUnavailable):
            await self._retry_orphans(window_s=1.0)
            await self._run(self._leave, [self._replicas, self.replica_id], window_s=1.0)
        await self._pipe.aclose()
        self._loop = None

    async def _listen(self) -> None:
        """Dispatch wake-ups: enqueues to local polls, frames to local callers. After every
        (re)subscription everyone re-checks, since messages sent meanwhile are lost."""
        delay = RETRY_FIRST_S
        while True:
            subscription: Subscription | None = None
            try:
                channels = [self._frames_channel, *self._wake_channels]
                subscription = await self._pipe.subscribe(channels, self._dispatch)
                delay = RETRY_FIRST_S
                subscription.change(channels[1:], self._wake_channels)  # sends nothing unless a reload came meanwhile
                self._subscription = subscription
                self._wake_all()
                await subscription.hold(HEALTH_CHECK_S)  # messages go to _dispatch meanwhile
            except TRANSIENT as exc:
                self._mark(False, exc)
            except Exception:
                log.exception("relay: Redis pub/sub listener failed; restarting it")
            finally:
                self._subscription = None
                if subscription is not None:
                    await subscription.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == self._frames_channel:
            parts = data.split(b" ", 2)  # request id, frame index, frame (a bare id: just a wake-up)
            caller = self._callers.get(parts[0].decode())
            if caller is not None:
                if len(parts) == 3 and int(parts[1]) >= caller.consumed:
                    caller.inbox[int(parts[1])] = parts[2]
                caller.wake()
            return
        tunnel = self._wake_channels.get(channel)
        if tunnel is not None:
            tunnel.wake()

    def _wake_all(self) -> None:
        for tunnel in self._tunnels.values():
            tunnel.wake()
        for caller in self._callers.values():
            caller.wake()

    def serve_tunnels(self, tunnel_ids: Collection[str]) -> None:
        """What the tunnels keep in Redis is left as it is: other replicas may serve a removed tunnel
        until they are reloaded too (docs/relay-on-redis.md, "Operations"). A removed tunnel's callers
        here are forgotten there by their discard, as any caller is."""
        added = [tunnel_id for tunnel_id in tunnel_ids if tunnel_id not in self._tunnels]
        removed = [tunnel_id for tunnel_id in self._tunnels if tunnel_id not in tunnel_ids]
        if not added and not removed:
            return
        for tunnel_id in added:
            self._tunnels[tunnel_id] = _Tunnel(self._prefix, tunnel_id)
        for tunnel_id in removed:
            tunnel = self._tunnels.pop(tunnel_id)
            tunnel.removed = True
            tunnel.wake()  # its polls answer with nothing
        for caller in self._callers.values():
            if caller.tunnel_id in removed:
                caller.wake()  # TunnelRemoved
        before = self._wake_channels
        self._wake_channels = {t.wake_channel.encode(): t for t in self._tunnels.values()}
        if self._subscription is not None:  # else the next subscription names the new channels
            self._subscription.change(before, self._wake_channels)

    async def _beat(self) -> None:
        """Heartbeat + janitor: keep this replica alive, purge expired and orphaned commands,
        retry failed discards."""
        while True:
            try:
                sent = self._running().time()
                bases = [tunnel.base for tunnel in self._tunnels.values()]  # as a reload left them
                await self._heartbeat(args=[self._replicas, self.replica_id, self._replica_ttl_ms, *bases])
                self._renewed_at = max(self._renewed_at, sent)
                self._mark(True)
                await self._retry_orphans(window_s=0)
            except (BackendUnavailable, *TRANSIENT) as exc:
                self._mark(False, exc)
            except Exception:
                log.exception("relay: Redis heartbeat failed; retrying")
            await asyncio.sleep(self._replica_ttl_s / 3)

    async def _forget_finished(self) -> None:
        while self._finished:
            batch, self._finished = self._finished[:SCAN], self._finished[SCAN:]
            args: list[Arg] = []
            for tunnel_id, request_id in batch:
                args += (_base(self._prefix, tunnel_id), request_id)
            try:
                await self._run(self._forget_final, args)
            except BackendUnavailable:
                self._orphans.update(batch)  # the heartbeat (or dispose) retries them
            except BaseException:
                self._orphans.update(batch)
                raise

    async def _retry_orphans(self, *, window_s: float) -> None:
        if not self._forgetting:  # answered calls left behind by a discard that was cancelled mid-batch
            self._orphans.update(self._finished)
            self._finished.clear()
        while self._orphans:
            tunnel_id, request_id = next(iter(self._orphans))
            await self._run(self._forget, [_base(self._prefix, tunnel_id), request_id], window_s=window_s)
            self._orphans.discard((tunnel_id, request_id))

    # ----------------------------------------------------------------------- callers

    async def enqueue(self, tunnel_id: str, command: Command) -> None:
        if self._closed:
            raise RelayClosing()
        tunnel = self._tunnel(tunnel_id)
        loop = self._running()
        now = loop.time()
        timeout_ms = max(1, int((command.deadline - now) * 1000))
        renew = now - self._renewed_at > self._replica_ttl_s / 3  # else this replica's mark is fresh enough
        blob = self._store.encode(
            _Stored(
                request_id=command.request_id,
                shard_token=command.shard_token,
                command_type=command.command_type,
                channel=command.channel,
                created_at=command.created_at,
                headers=command.headers,
                jsonrpc=_NULL if isinstance(command.jsonrpc, UnsetType) else command.jsonrpc,
            )
        )
        args: list[Arg] = [
            tunnel.base,
            self._replicas,
            tunnel.wake_channel,
            command.request_id,
            blob,
            _digest(command.shard_token),
            timeout_ms,
            self.replica_id,
            command.channel,
            _key_part(session_of(command.headers)),
            self._queue_max,
            KEEP_MS,
            self._replica_ttl_ms if renew else 0,
            SCAN,
        ]
        self._callers[command.request_id] = _Caller(tunnel_id)
        try:
            queued = await self._run(self._enqueue, args)
        except BaseException:
            self._callers.pop(command.request_id, None)
            self._orphans.add((tunnel_id, command.request_id))  # it may have been queued all the same
            raise
        if renew:
            self._renewed_at = max(self._renewed_at, now)
        if not queued:
            self._callers.pop(command.request_id, None)
            raise QueueFull()

    async def next_frame(self, tunnel_id: str, request_id: str) -> TunnelResponsePayload:
        caller = self._callers.get(request_id)
        if caller is None or caller.tunnel_id != tunnel_id:
            raise PendingNotFound()
        base = self._tunnel(tunnel_id).base
        while True:
            if self._closed:
                raise RelayClosing()
            carried = caller.inbox.pop(caller.consumed, None)
            if carried is not None:
                frame = carried if isinstance(carried, TunnelResponsePayload) else self._frame_decoder.decode(carried)
                if frame.is_terminal:  # no read needed; a notification is read below (its read trims the list)
                    caller.consumed += 1
                    caller.finished = True
                    return frame
            elif caller.fresh:  # just queued: wait for the first wake-up (or re-check) before reading
                caller.fresh = False
                await self._wait(caller)
                continue
            if tunnel_id not in self._tunnels:
                raise TunnelRemoved()
            caller.woken = False
            args: list[Arg] = [base, request_id, caller.consumed, self._replicas, self.replica_id, self._replica_ttl_ms]
            reply = await self._run(self._next, args)
            if isinstance(reply, bytes):
                caller.consumed += 1
                frame = self._frame_decoder.decode(reply)
                caller.finished = frame.is_terminal
                return frame
            if reply == lua.GONE:
                raise CommandLost()
            await self._wait(caller)

    async def _wait(self, caller: _Caller) -> None:
        """Until `caller` is woken, at most `recheck_s` (a timer wakes it: the caller re-checks either way)."""
        if caller.woken:
            return
        loop = self._running()
        waiter = caller.waiter = loop.create_future()
        recheck = loop.call_later(self._recheck_s, caller.wake)
        try:
            await waiter
        finally:
            recheck.cancel()
            caller.waiter = None

    async def discard(self, tunnel_id: str, request_id: str) -> None:
        caller = self._callers.pop(request_id, None)
        if tunnel_id not in self._tunnels and caller is None:
            return  # not a tunnel this replica serves, nor a caller of one a reload removed
        base = _base(self._prefix, tunnel_id)
        if caller is not None and caller.finished:
            # Answered: out of the queue and the in-flight table already, so its keys may be forgotten a
            # little later: in one script with the others answered meanwhile, run by whichever discard
            # finds no batch under way (the others return at once).
            self._finished.append((tunnel_id, request_id))
            if not self._forgetting:
                self._forgetting = True
                try:
                    await self._forget_finished()
                finally:
                    self._forgetting = False
            return
        try:
            await self._run(self._forget, [base, request_id])
        except BackendUnavailable:
            self._orphans.add((tunnel_id, request_id))

    # ----------------------------------------------------------------------- gateways

    async def take(
        self,
        tunnel_id: str,
        *,
        limit: int,
        timeout_s: float,
        channels: frozenset[str] = frozenset(),
        instance_id: str | None = None,
        wanted: Callable[[], bool] | None = None,
        affine_channels: frozenset[str] = frozenset(),
    ) -> list[Command]:
        tunnel = self._tunnel(tunnel_id)
        loop = self._running()
        until = loop.time() + timeout_s
        instance = _key_part(instance_id or ANONYMOUS)
        token = f"{self.replica_id}.t{next(self._attempts)}"  # unique per take (its memo key); a retry repeats it
        seen_ms = self._grace_ms + int(2 * self._recheck_s * 1000)  # until the next re-check, and then the grace
        args: list[Arg] = [
            tunnel.base,
            self._replicas,
            instance,
            limit,
            ",".join(sorted(channels)),
            ",".join(sorted(affine_channels)),
            SCAN,
            self._session_ttl_ms,
            token,
            seen_ms,
            int(2 * self._recheck_s * 1000) + WAIT_MARGIN_MS,
        ]
        tunnel.polls_waiting += 1
        try:
            while not self._closed and not tunnel.removed:
                if wanted is not None and not wanted():
                    break
                waiter: asyncio.Future[None] = loop.create_future()
                tunnel.waiters.add(waiter)  # before the script: a wake-up during it is kept
                try:
                    try:
                        window = max(0.0, min(self._retry_s, until - loop.time()))
                        reply = await self._run(self._take, args, window_s=window)
                    except asyncio.CancelledError:
                        self._spawn(self._give_back(tunnel, token, instance))
                        raise
                    batch = self._commands(reply, loop.time())
                    if batch:
                        if wanted is not None and not wanted():  # its poller left while it was taken
                            # given back by a task of its own: a cancelled poll cannot take it along
                            await asyncio.shield(self._spawn(self._give_back(tunnel, token, instance)))
                            return []
                        return batch
                    remaining = until - loop.time()
                    if remaining <= 0:
                        break
                    timer = loop.call_later(min(remaining, self._recheck_s), _settle, waiter)  # no Timeout context
                    try:
                        await waiter
                    finally:
                        timer.cancel()
                finally:
                    tunnel.waiters.discard(waiter)
        finally:
            tunnel.polls_waiting -= 1
        # An empty poll ends: the instance stays seen for the grace period from now. (A poll that
        # returns commands skips this round trip, so a cancellation cannot lose its batch; it
        # stays seen until its last take's mark, at most 2 x recheck_s longer.)
        self._spawn(self._run(self._poll_end, [tunnel.base, instance, self._grace_ms, token]))
        return []

    async def _give_back(self, tunnel: _Tunnel, token: str, instance: str) -> None:
        await self._run(self._release, [tunnel.base, token, instance, tunnel.wake_channel])

    def _commands(self, reply: list[Any], now: float) -> list[Command]:
        commands: list[Command] = []
        for index in range(0, len(reply), 3):
            stored = self._command_decoder.decode(reply[index + 1])
            commands.append(
                Command(
                    request_id=stored.request_id,
                    shard_token=stored.shard_token,
                    command_type=stored.command_type,
                    channel=stored.channel,
                    created_at=stored.created_at,
                    deadline=now + int(reply[index + 2]) / 1000,
                    headers=stored.headers,
                    jsonrpc=UNSET if bytes(stored.jsonrpc) == b"null" else Raw(bytes(stored.jsonrpc)),
                )
            )
        return commands

    def _deliver_args(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> list[Arg]:
        tunnel = self._tunnel(tunnel_id)
        local = self._callers.get(frame.request_id)
        return [
            tunnel.base,
            self._replicas,
            frame.request_id,
            _digest(shard_token),
            "1" if frame.is_terminal else "0",
            self._store.encode(frame),
            FRAME_BACKLOG,
            _key_part(session_set_by(frame)),
            "1" if ends_session(frame) else "0",
            self._session_ttl_ms,
            f"{self.replica_id}.{next(self._attempts)}",  # unique per attempt; a retry repeats it
            self._frames_prefix,
            KEEP_MS,
            # the caller waits here: no PUBLISH, this replica hands the frame over itself (`_delivered`)
            self.replica_id if local is not None and local.tunnel_id == tunnel_id else "",
        ]

    def _delivered(self, frame: TunnelResponsePayload, reply: Any) -> None:
        """DELIVER's answer: a frame index (stored, and the caller is this replica's: handed over here),
        'ok' (stored, the wake-up published), or the refusal raised."""
        if type(reply) is int:
            caller = self._callers.get(frame.request_id)
            if caller is not None:
                if reply >= caller.consumed:
                    caller.inbox[reply] = frame
                caller.wake()
            return
        if reply == b"ok":
            caller = self._callers.get(frame.request_id)
            if caller is not None:  # a retried delivery to a caller here: wake it to read the list
                caller.wake()
            return
        if reply == b"not_found":
            raise PendingNotFound()
        if reply == b"mismatch":
            raise ShardMismatch()
        if reply == b"backlog":
            raise FrameBacklog()

    async def deliver(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        args = self._deliver_args(tunnel_id, shard_token, frame)
        self._delivered(frame, await self._run(self._deliver, args))

    delivers_soon = True

    def deliver_soon(
        self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload, done: Callable[[Exception | None], None]
    ) -> None:
        """`deliver` with no task: the script goes on the pipe and its reply, parsed in the pipe's protocol
        callback, calls `done` (the pipe itself sends the script whole after a NOSCRIPT). A lost connection
        or a timeout takes `deliver`'s way (an owned task, retried for `retry_s`, the same attempt id so
        the frame is stored once)."""
        args = self._deliver_args(tunnel_id, shard_token, frame)

        def landed(reply: Any) -> None:
            try:
                self._delivered(frame, outcome(reply))
            except TRANSIENT:
                self._deliver_later(frame, args, done)
                return
            except Exception as exc:
                done(exc)
                return
            self._mark(True)
            done(None)

        if not self._pipe.run_soon(self._deliver, args, landed):
            self._deliver_later(frame, args, done)

    def _deliver_later(
        self, frame: TunnelResponsePayload, args: list[Arg], done: Callable[[Exception | None], None]
    ) -> None:
        """`deliver_soon`'s way when the pipe could not say: a task owned here (awaited in dispose). Once the
        backend is closing there is no retry (nor a reconnect after `dispose`): RelayClosing, the relay's 503."""
        if self._closed:
            done(RelayClosing())
            return

        async def run() -> None:
            try:
                self._delivered(frame, await self._run(self._deliver, args))
            except Exception as exc:
                done(exc)
            except BaseException:
                done(RelayClosing())
                raise
            else:
                done(None)

        task = self._running().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ----------------------------------------------------------------------- status

    async def client_seen(self, tunnel_id: str) -> bool:
        """Asks Redis unless a recent answer proves "seen" still holds: an instance's "seen until" only
        moves back when its poll ends, and then by at most 2 x recheck_s (see `take`)."""
        now = self._running().time()
        if self._seen_until.get(tunnel_id, 0.0) > now:
            return True
        remaining_ms = int(await self._run(self._seen, [self._tunnel(tunnel_id).base]))
        certain_s = remaining_ms / 1000 - 2 * self._recheck_s
        if certain_s > 0:
            self._seen_until[tunnel_id] = now + certain_s
        return remaining_ms > 0

    async def status(self, tunnel_id: str) -> TunnelStatus:
        tunnel = self._tunnel(tunnel_id)
        seen, queued, in_flight, last, oldest = await self._run(self._status, [tunnel.base, SCAN])
        return TunnelStatus(
            client_seen=bool(seen),
            polls_waiting=tunnel.polls_waiting,
            queued=int(queued),
            in_flight=int(in_flight),
            last_instance_id=None if last.decode() in ("", ANONYMOUS) else last.decode(),
            oldest_queued_s=self._created_age(oldest),
        )

    def _created_age(self, stored: bytes) -> float | None:
        """The age of a stored command (`queued_age` of its `created_at`); None for none or one that
        does not decode (a status page must not fail on one odd record)."""
        if not stored:
            return None
        try:
            return queued_age(self._command_decoder.decode(stored).created_at)
        except msgspec.DecodeError:
            return None

    async def session_owner(self, tunnel_id: str, channel: str, session: str) -> str | None:
        """The instance a proc_affinity session is bound to (diagnostics and tests)."""
        owner = await self._run(self._owner, [self._tunnel(tunnel_id).base, channel, _key_part(session)])
        return owner.decode() or None

    @property
    def callers_waiting(self) -> int:
        return len(self._callers)
