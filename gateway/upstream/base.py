"""The Upstream contract: what every transport to an MCP server provides, and `within`, the per-call bound.
Holds no transport itself, and knows nothing of the tunnel or the channels above.

The types an upstream exchanges with the channel layer (`Call`, `Notify`, `Reply`, `UpstreamInfo`)
live in `gateway.protocol.mcp`. Every transport passes the same contract suite,
tests/contract/test_upstream_contract.py.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable

from gateway.protocol.errors import DiscoveryUnsupported, UpstreamUnavailable
from gateway.protocol.mcp import Call, Frame, Reply, UpstreamInfo
from gateway.protocol.wire import Headers, JsonRpcMessage


def within(frames: AsyncIterator[Frame], timeout_s: float | None, server: str) -> AsyncIterator[Frame]:
    """A call's frames, bounded by the server's `request_timeout_s` (None: unbounded, `frames` as is).

    When the call takes longer, `frames` is cancelled where it waits (the transport
    retires the id or aborts the request, as it does for any abandoned call) and the
    call fails with the contract's `timeout` failure. A deadline of the caller's own
    (the command's) still cancels through this untouched.
    """
    return frames if timeout_s is None else _bounded(frames, timeout_s, server)


async def _bounded(frames: AsyncIterator[Frame], timeout_s: float, server: str) -> AsyncIterator[Frame]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await anext(frames)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamUnavailable.timeout(server) from None
            yield frame
    finally:
        close = getattr(frames, "aclose", None)
        if close is not None:
            await close()


UpstreamObserver = Callable[[str, str], None]
"""`(server name, event)`: `up`, `down` or `restart`."""


class Upstream(abc.ABC):
    """A connection to one MCP server.

    `start()` connects and learns the server's era (a `server/discover` probe,
    falling back to `initialize`), `exchange()` runs one call and yields zero or
    more `Notify` frames then exactly one `Reply`, or raises `UpstreamError`.
    Cancelling the iteration abandons the call (the transport cleans up).
    """

    transport: str
    """`stdio` or `http` (telemetry: `network.transport` is `pipe` or `tcp`)."""

    def __init__(self, name: str, ready_timeout_s: float = 30.0) -> None:
        self.name = name
        self._info: UpstreamInfo | None = None
        self._ready = asyncio.Event()
        self._down_event = asyncio.Event()
        """Set while the server is down (the inverse of `_ready`), for transports that watch it."""
        self._down_event.set()
        self._ready_timeout_s = ready_timeout_s
        self._problem: str | None = None
        self._needs_authorization = False
        """The server answered the gateway's own (credential-less) probe with 401: it is up and wants
        each client's token; its era may still be unknown (learned from the first authorized call)."""
        self.observer: UpstreamObserver | None = None
        """Told `(name, "up" | "down" | "restart")` as they happen (the app's telemetry seam:
        transports never import telemetry)."""
        self.listeners: list[Callable[[bytes], None]] = []
        """Told each server notification that belongs to no call (list_changed, resources/updated);
        with none registered such notifications go to the one call in flight, as before."""

    @property
    def info(self) -> UpstreamInfo | None:
        """What the server reported at connect time; None while it is not up."""
        return self._info

    @property
    def ready(self) -> bool:
        """Up: its era is known, or it answered that it wants the client's authorization."""
        return self._info is not None or self._needs_authorization

    @property
    def needs_authorization(self) -> bool:
        """The server requires each client's own credentials (it answered the probe with 401)."""
        return self._needs_authorization

    @property
    def problem(self) -> str | None:
        """Why the server is not up, in words for an operator (`connect refused 127.0.0.1:8781`):
        no secrets, no payloads. None while it is up, or before anything went wrong."""
        return None if self.ready else self._problem

    def _up(self, info: UpstreamInfo) -> None:
        was_down = self._info is None
        self._info = info
        self._problem = None
        self._down_event.clear()
        self._ready.set()
        if was_down:
            self._notify("up")

    def _requires_authorization(self) -> None:
        """Mark the server up and wanting each client's credentials, its era not known yet."""
        was_down = not self.ready
        self._info = None
        self._needs_authorization = True
        self._problem = None
        self._down_event.clear()
        self._ready.set()
        if was_down:
            self._notify("up")

    def _down(self, problem: str | None = None) -> None:
        """Mark the server down; `problem` (when known) says why, until it is up again."""
        if problem is not None:
            self._problem = problem
        was_up = self.ready
        self._info = None
        self._needs_authorization = False
        self._ready.clear()
        self._down_event.set()
        if was_up:
            self._notify("down")

    def _notify(self, event: str) -> None:
        if self.observer is not None:
            self.observer(self.name, event)

    async def wait_info(self, credentials: Headers | None = None) -> UpstreamInfo:
        """The server's info, waiting (bounded) while it starts or restarts. `credentials` are the
        calling client's headers: a server that needs authorization learns its era with them.
        A server that came up and went down again before this waiter ran (a crash loop) is waited
        for again, within the same bound."""
        info = self._info
        if info is not None:
            return info
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                while (info := self._info) is None:
                    await self._ready.wait()
                    if self._info is None and self._ready.is_set():
                        break  # up without an era (it wants each client's authorization): nothing to wait for
        except TimeoutError:
            raise UpstreamUnavailable.connect(self.name, "dial") from None
        if info is None:
            raise UpstreamUnavailable.connect(self.name, "dial")
        return info

    async def verify_credentials(self, credentials: Headers) -> None:
        """Before the gateway answers a call on the server's behalf (`ping`, `initialize`, bridged
        `server/discover`): a server that `needs_authorization` is asked whether it accepts the
        caller's credentials (UpstreamHttpError when not), so nothing it said to an authorized
        client is told to one it would refuse. Nothing to do elsewhere."""
        return

    @property
    def holds_sessions(self) -> bool:
        """True when the server keeps per-client sessions the client must address (HTTP, legacy)."""
        return False

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and probe; returns once the server answered or the attempt failed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the server connection (and the process, for stdio)."""

    @abc.abstractmethod
    def exchange(self, call: Call) -> AsyncIterator[Frame]:
        """Run one call: zero or more Notify, then exactly one Reply."""

    @abc.abstractmethod
    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        """Deliver a client's answer to a request the server sent it (sampling, elicitation, roots)."""

    @abc.abstractmethod
    async def end_session(self, headers: Headers) -> Reply:
        """Close the client session named in `headers` (`session_termination`)."""

    async def oauth_metadata(self, deadline: float | None = None) -> bytes:
        """The server's OAuth metadata for an `oauth_discovery_response` (`gateway.upstream.oauth_discovery`),
        fetched before `deadline` (loop time); DiscoveryUnsupported where the transport has none."""
        why = f"it is spoken to over {self.transport}, which has no OAuth"
        raise DiscoveryUnsupported(f"server {self.name!r}", why)
