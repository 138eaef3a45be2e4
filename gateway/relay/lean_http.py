"""The relay's lean HTTP/1.1 server for its hot routes: an asyncio Protocol on httptools in front of aiohttp.
Frames requests and answers only: what to answer is never decided here but in the handlers' cores.

Serves `GET /v1/tunnels/{id}/poll`, `POST /v1/tunnels/{id}/response` and `POST /v1/mcp/{tunnel}[/{channel}]`
with Content-Length framing itself, one request at a time per connection (pipelined ones wait in the
buffer and are answered in order). The first request it does not serve (another route or method, chunked
or `Expect`, an upgrade, HTTP/1.0, a percent-encoded path, a head it cannot parse) is handed, with every
byte after it, to aiohttp's RequestHandler for that connection: `transport.set_protocol`, so malformed
input gets aiohttp's 400 and the rest of the connection is aiohttp's. A response POST whose body is
here, on a backend that delivers at once (memory), is answered from `data_received` without a task;
on one that reports the delivery by a callback (Redis), from that callback, again without a task.
It must not decide anything a handler decides (admission, limits, errors): those are the cores', and
their refusals are `errors.refusal`.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, TypeVar, cast

import httptools
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_nodelay

from gateway.protocol.wire import Codec
from gateway.relay.errors import BodyTimeout, RelayError, refusal, unexpected
from gateway.relay.exchange import Head, Reply, ResponseHeaders
from gateway.relay.front import FrontDoor
from gateway.relay.guard import too_large
from gateway.relay.tunnel_api import TunnelAPI

HEAD_MAX: Final = 16 * 1024
"""A request head longer than this goes to aiohttp (whose own line and field limits then answer it)."""
AIOHTTP_MAX_LINE: Final = 8190
AIOHTTP_MAX_HEADERS: Final = 128
"""aiohttp's default limits on a request line or header line, and on the number of headers."""
HEADS_KEPT: Final = 256
"""Rendered answer heads kept (keyed by status, headers and closing); past that the memory starts over."""
HIGH_WATER: Final = 256 * 1024
"""Buffered bytes beyond the body being read after which reading pauses until the request is answered."""
LINES_KEPT: Final = 512
LINE_KEPT_MAX: Final = 256
"""Request lines and header lines whose reading is kept (clients repeat theirs on every request of a
kept connection), each line at most LINE_KEPT_MAX characters; past LINES_KEPT the memory starts over."""

_POLL, _RESPONSE, _MCP = 1, 2, 3
_END: Final = b"\r\n\r\n"
_LF_END: Final = b"\n\n"
_NOT_LEAN: Final = frozenset({"transfer-encoding", "expect"})
_KEPT_FIELDS: Final = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "content-type",
        "mcp-protocol-version",
        "user-agent",
        "x-tunnel-client-instance-id",
        "x-tunnel-client-name",
        "x-tunnel-client-version",
    }
)
"""The header fields whose lines are kept read: none that carries a credential, a session id or a
per-command token (those are read afresh and live no longer than their request)."""
_OWS: Final = (" ", "\t")
_NO_BODY: Final = frozenset({204, 304})
_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SERVER: Final = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_CLOSE: Final = b"Connection: close\r\n"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_OCTETS: Final = b"Content-Type: application/octet-stream\r\n"


def route(method: str, path: str) -> tuple[int, dict[str, str]] | None:
    """Which lean route a request is and its path parameters, or None (aiohttp's to answer). Paths that
    aiohttp would decode or normalize (`%`, dot segments, braces) are left to aiohttp."""
    if "%" in path or "{" in path or "}" in path or "/." in path:
        return None
    parts = path.split("/")
    if len(parts) < 4 or parts[0] or parts[1] != "v1" or not parts[3]:
        return None
    if parts[2] == "tunnels" and len(parts) == 5:
        if parts[4] == "poll" and method == "GET":
            return _POLL, {"tunnel_id": parts[3]}
        if parts[4] == "response" and method == "POST":
            return _RESPONSE, {"tunnel_id": parts[3]}
        return None
    if parts[2] == "mcp" and method == "POST":
        if len(parts) == 4:
            return _MCP, {"tunnel_id": parts[3]}
        if len(parts) == 5 and parts[4]:
            return _MCP, {"tunnel_id": parts[3], "channel": parts[4]}
    return None


_Read = TypeVar("_Read")
Target = tuple[str, str, str, int, dict[str, str]]
"""A request line read: method, path, query string, lean route, path parameters (copied per request)."""
Field = tuple[str, str, int | None]
"""A header line read: name, value without surrounding whitespace, Content-Length (-1: zero) or None."""


def _keep(kept: dict[str, _Read], line: str, read: _Read) -> None:
    """Remember a line's reading, if the line is short enough; past LINES_KEPT lines, start over."""
    if len(line) <= LINE_KEPT_MAX:
        if len(kept) >= LINES_KEPT:
            kept.clear()
        kept[line] = read


class _HeadEnd:
    """The one httptools callback a head needs: that it was complete (httptools validates the head;
    its lines are then split here, with no Python call per header)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False

    def on_headers_complete(self) -> None:
        self.complete = True


class LeanServer:
    """The protocol factory of the relay's listening socket; tracks its connections for shutdown."""

    def __init__(
        self,
        tunnels: TunnelAPI,
        front: FrontDoor,
        codec: Codec,
        *,
        max_body_bytes: int,
        read_timeout_s: float,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.tunnels = tunnels
        self.front = front
        self.codec = codec
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.on_error = on_error
        self.fallback: Callable[[], asyncio.Protocol] | None = None
        """aiohttp's protocol factory (the AppRunner's `web.Server`), set once the runner is set up."""
        self.closing = False
        self.connections: set[LeanConnection] = set()
        self.served = 0
        """Requests answered here (not handed to aiohttp): for tests and diagnostics."""
        self.soon: set[LeanConnection] = set()
        """Connections whose response POST waits for its backend's report (`_respond_soon`): no task."""
        self.drained: asyncio.Future[None] | None = None
        """Set once `soon` is empty, while shutting down."""
        self._date = b""
        self._date_at = 0
        self.heads: dict[tuple[int, tuple[tuple[str, str], ...], bool], tuple[bytes, bool, bool]] = {}
        """`_head`'s results for the answers' header sets seen (the ack's, a JSON answer's): rendered once."""
        self.targets: dict[str, Target] = {}
        """`read_target`'s results for the request lines seen that a lean route serves."""
        self.fields: dict[str, Field] = {}
        """`read_field`'s results for the header lines seen of the fields in `_KEPT_FIELDS`."""

    def __call__(self) -> LeanConnection:
        return LeanConnection(self)

    def read_head(self, raw: bytes) -> tuple[int, Head, bool, int] | None:
        """A complete request head (through its blank line) as (lean route, head, keep-alive, body length),
        or None when aiohttp is to answer it. Request and header lines seen before are not read again."""
        end = _HeadEnd()
        parser = httptools.HttpRequestParser(end)
        try:
            parser.feed_data(raw)  # validates the request line and every header line
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        if not end.complete or parser.should_upgrade():
            return None
        lines = raw.decode("utf-8", "surrogateescape").split("\r\n")[:-2]  # the head ends with two CRLF
        if len(lines) - 1 > AIOHTTP_MAX_HEADERS or (
            len(raw) > AIOHTTP_MAX_LINE and max(map(len, lines)) > AIOHTTP_MAX_LINE
        ):
            return None  # past aiohttp's limits: its answer (400), not an answer aiohttp would not give
        target = self.targets.get(lines[0]) or self.read_target(lines[0])
        if target is None:
            return None
        method, path, query, kind, match_info = target
        known = self.fields
        fields: list[tuple[str, str]] = []
        length = 0
        for line in lines[1:]:
            field = known.get(line) or self.read_field(line)
            if field is None:
                return None
            name, value, field_length = field
            if field_length is not None:
                if length:
                    return None  # a repeated Content-Length: aiohttp's to refuse
                length = field_length
            fields.append((name, value))
        length = max(length, 0)
        if kind == _POLL and length:
            return None
        head = Head(method, path, query, fields, dict(match_info))
        return kind, head, parser.should_keep_alive(), length

    def read_target(self, line: str) -> Target | None:
        """The request line's method, path, query, route and path parameters, or None (aiohttp's)."""
        request_line = line.split(" ")
        if len(request_line) != 3 or request_line[2] != "HTTP/1.1":
            return None
        method, target, _ = request_line
        if "#" in target:
            return None
        path, _, query = target.partition("?")
        matched = route(method, path)
        if matched is None:
            return None
        read = (method, path, query, matched[0], matched[1])
        _keep(self.targets, line, read)
        return read

    def read_field(self, line: str) -> Field | None:
        """A header line's name, value and Content-Length (None for other fields), or None when the line
        is aiohttp's to answer: a chunked or `Expect` body, obs-fold, a Content-Length that is no number."""
        name, _, value = line.partition(":")
        lowered = name.lower()
        value = value.strip(" \t")
        length: int | None = None
        if lowered == "content-length":
            if not value.isdigit():
                return None
            length = int(value) or -1  # -1: present, and zero
        elif lowered in _NOT_LEAN or name[:1] in _OWS:
            return None
        read = (name, value, length)
        if lowered in _KEPT_FIELDS:
            _keep(self.fields, line, read)
        return read

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode()
        return self._date

    async def shutdown(self, timeout_s: float) -> None:
        """Idle connections close now; busy ones finish their request (the backend was closed, so
        waiting polls answer 204 and callers 503) within `timeout_s`, then close."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()
        busy: list[asyncio.Future[None]] = [
            task for connection in self.connections if (task := connection.task) is not None
        ]
        if self.soon:
            self.drained = asyncio.get_running_loop().create_future()
            busy.append(self.drained)
        await asyncio.sleep(0)  # a response written one step late (response_now) goes out first
        if busy:
            await asyncio.wait(busy, timeout=timeout_s)
            await asyncio.sleep(0)  # the answers of the last reports (written one step after them)
        for connection in list(self.connections):
            connection.abort()


class LeanConnection(asyncio.Protocol):
    """One client connection until it is closed or handed to aiohttp."""

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self._busy = False
        """A request is being answered (by `task`, or by a callback one loop step away)."""
        self._unread = 0
        """Body bytes of the current request not yet taken from the buffer."""
        self._body_waiter: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._idle_until = 0.0
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._streamed = False
        self._closed = False

    # ----------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        tcp_nodelay(self._transport, True)
        self._server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next()
            return
        waiter = self._body_waiter
        if waiter is not None and len(self._buffer) >= self._unread and not waiter.done():
            waiter.set_result(None)
        if not self._paused and len(self._buffer) > self._unread + HIGH_WATER:
            self._paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._cancel_idle()
        if self.task is not None:
            self.task.cancel()  # a long poll or a waiting caller notices at once
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ----------------------------------------------------------------------- connection state

    def _arm_idle(self) -> None:
        """A request head must come within `read_timeout_s` from now. One timer per connection, moved
        lazily (as aiohttp's keep-alive timer is): not a timer per request."""
        self._idle_until = self._loop.time() + self._server.read_timeout_s
        if self._idle is None:
            self._idle = self._loop.call_at(self._idle_until, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        """No (complete) request head within `read_timeout_s`: closed without an answer, as aiohttp does."""
        self._idle = None
        if self._busy or self._transport is None:
            return  # re-armed when the request is answered
        if self._loop.time() < self._idle_until:
            self._idle = self._loop.call_at(self._idle_until, self._idle_expired)
            return
        self._transport.close()

    def close_if_idle(self) -> None:
        if not self._busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self._transport is not None:
            self._transport.close()

    def _connected(self) -> bool:
        return not self._closed and self._transport is not None and not self._transport.is_closing()

    # ----------------------------------------------------------------------- requests

    def _next(self) -> None:
        """Start on the next buffered request, if its head is complete (else wait for more bytes)."""
        buffer = self._buffer
        if self._closed or not buffer:
            return
        end = buffer.find(_END)
        lf_end = buffer.find(_LF_END, 0, end if end >= 0 else len(buffer))
        if lf_end >= 0 or (end < 0 and len(buffer) > HEAD_MAX) or end + len(_END) > HEAD_MAX:
            self._hand_over()  # bare-LF framing or an overlong head: aiohttp's rules answer it
            return
        if end < 0:
            return
        server = self._server
        start = server.read_head(bytes(buffer[: end + len(_END)]))
        if start is None:
            self._hand_over()
            return
        del buffer[: end + len(_END)]
        self._busy = True
        kind, head, keep_alive, self._unread = start
        if kind == _RESPONSE and server.tunnels.responds_now and len(buffer) >= self._unread <= server.max_body_bytes:
            self._respond_now(head, keep_alive)
            return
        if kind == _RESPONSE and server.tunnels.responds_soon and len(buffer) >= self._unread <= server.max_body_bytes:
            self._respond_soon(head, keep_alive)
            return
        self.task = self._loop.create_task(self._serve(kind, head, keep_alive))

    def _respond_now(self, head: Head, keep_alive: bool) -> None:
        """A response POST whose body is here, for a backend that delivers at once: no task; the ack is
        written one loop step later, after the caller this frame woke has answered its client."""
        server = self._server
        server.served += 1
        reply: Reply
        try:
            body = bytes(self._buffer[: self._unread])
            del self._buffer[: self._unread]
            self._unread = 0
            reply = server.tunnels.response_now(head, body)
        except RelayError as exc:
            reply = refusal(exc, server.codec, server.on_error)
        except Exception:
            reply = unexpected(head.method, head.path, server.codec, server.on_error)
        self._loop.call_soon(self._answer, head, reply, keep_alive)

    def _respond_soon(self, head: Head, keep_alive: bool) -> None:
        """A response POST whose body is here, for a backend that reports the delivery by a callback
        (Redis): no task; answered once the frame is stored (or refused), one loop step after the report."""
        server = self._server
        server.served += 1
        body = bytes(self._buffer[: self._unread])
        del self._buffer[: self._unread]
        self._unread = 0
        server.soon.add(self)
        try:
            server.tunnels.response_soon(head, body, lambda error: self._responded(head, keep_alive, error))
        except Exception as exc:
            self._responded(head, keep_alive, exc)

    def _responded(self, head: Head, keep_alive: bool, error: Exception | None) -> None:
        server = self._server
        server.soon.discard(self)
        reply: Reply = server.tunnels.acked
        if error is not None:
            try:  # raised again so that `unexpected` logs it with its traceback, as in a handler
                raise error
            except RelayError as exc:
                reply = refusal(exc, server.codec, server.on_error)
            except Exception:
                reply = unexpected(head.method, head.path, server.codec, server.on_error)
        self._loop.call_soon(self._answer, head, reply, keep_alive)
        if not server.soon and server.drained is not None and not server.drained.done():
            server.drained.set_result(None)

    async def _serve(self, kind: int, head: Head, keep_alive: bool) -> None:
        """One request: its handler's core, then the answer (or the refusal) written."""
        server = self._server
        server.served += 1
        reply: Reply | None
        try:
            if kind == _POLL:
                reply = await server.tunnels.poll_reply(head, self._connected)
            elif kind == _RESPONSE:
                reply = await server.tunnels.response_reply(head, self.body)
            else:
                reply = await server.front.post_reply(head, self.body, self)
        except RelayError as exc:
            reply = refusal(exc, server.codec, server.on_error)
        except ConnectionResetError:
            self._finished(close=True)  # the peer left; there is nobody to answer
            return
        except Exception:
            reply = unexpected(head.method, head.path, server.codec, server.on_error)
        if reply is None:  # answered as a stream: the connection goes on only if the stream was ended
            self._finished(close=self._streamed or self._body_pending() or not self._connected())
            return
        self._answer(head, reply, keep_alive)

    def _answer(self, head: Head, reply: Reply, keep_alive: bool) -> None:
        """Write the current request's answer; then on to the next request, or closed."""
        if not self._connected():
            self._finished(close=True)
            return
        server = self._server
        close = not keep_alive or server.closing or self._body_pending()
        try:
            close = self._write_reply(reply, close)
        except ValueError:
            close = self._write_reply(unexpected(head.method, head.path, server.codec, server.on_error), close)
        self._finished(close)

    async def body(self) -> bytes:
        """The current request's body: BodyTooLarge past `max_body_bytes`, BodyTimeout past `read_timeout_s`."""
        length = self._unread
        limit = self._server.max_body_bytes
        if length > limit:
            raise too_large(limit)
        if len(self._buffer) < length:
            self._body_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(self._server.read_timeout_s):
                    await self._body_waiter
            except TimeoutError:
                raise BodyTimeout() from None
            finally:
                self._body_waiter = None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._unread = 0
        return body

    def _finished(self, close: bool) -> None:
        """The current request is answered: on to the next one, or closed."""
        self.task = None
        self._busy = False
        transport = self._transport
        if transport is None or self._closed:
            return
        if close or self._server.closing:
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._arm_idle()
        self._next()

    def _body_pending(self) -> bool:
        """Whether the current request's body is unread and not all here (the connection cannot go on)."""
        if not self._unread:
            return False
        if len(self._buffer) >= self._unread:
            del self._buffer[: self._unread]  # unread but complete: skipped
            self._unread = 0
            return False
        return True

    def _hand_over(self) -> None:
        """This connection is aiohttp's from the buffered request on."""
        transport = self._transport
        self._cancel_idle()
        self._server.connections.discard(self)
        self._transport = None
        if transport is None:
            return
        fallback = self._server.fallback
        if fallback is None or self._server.closing:
            transport.close()
            return
        protocol = fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if data:
            protocol.data_received(data)

    # ----------------------------------------------------------------------- writing

    def _write_reply(self, reply: Reply, close: bool) -> bool:
        """Write the answer in one `write`; whether the connection closes after it (asked, or the answer's
        own `Connection: close`). ValueError, with nothing written, for a header that would split the head."""
        assert self._transport is not None
        heads = self._server.heads
        key = (reply.status, tuple(reply.headers), close)
        rendered = heads.get(key)
        if rendered is None:
            rendered = _head(reply.status, reply.headers, close)
            if len(heads) >= HEADS_KEPT:
                heads.clear()
            heads[key] = rendered
        head, typed, close = rendered
        tail = self._server.date() + _SERVER
        if reply.status in _NO_BODY:
            self._transport.write(head + tail + b"\r\n")
            return close
        body = reply.body or b""
        length = b"Content-Length: %d\r\n" % len(body)
        self._transport.write(b"".join((head, _OCTETS if body and not typed else b"", length, tail, b"\r\n", body)))
        return close

    # EventStream: the front door's SSE answer, chunked as aiohttp's StreamResponse is
    async def open(self, headers: ResponseHeaders) -> None:
        if not self._connected():
            raise ConnectionResetError("the caller left")
        assert self._transport is not None
        self._streamed = True
        self._transport.write(_head(200, headers, False)[0] + _CHUNKED + self._server.date() + _SERVER + b"\r\n")

    async def send(self, data: bytes) -> None:
        if not self._connected():
            raise ConnectionResetError("the caller left")
        assert self._transport is not None
        if data:
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if self._writing_paused:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    async def end(self) -> None:
        if not self._connected():
            raise ConnectionResetError("the caller left")
        assert self._transport is not None
        self._transport.write(_LAST_CHUNK)
        self._streamed = False


def _head(status: int, headers: ResponseHeaders, close: bool) -> tuple[bytes, bool, bool]:
    """(status line and the answer's own headers, whether they hold a Content-Type, whether the connection
    closes); ValueError for a name or value holding a line break (it would split the head)."""
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise ValueError("a response header holds a line break")
    typed = connection = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-type":
            typed = True
        elif lowered == "connection":
            connection = True
            close = close or value.strip().lower() == "close"
    closing = _CLOSE if close and not connection else b""
    return line + text.encode("utf-8") + closing, typed, close
