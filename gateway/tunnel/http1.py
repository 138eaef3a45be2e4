"""A minimal keep-alive HTTP/1.1 client ("h1", on httptools) for the poll channel's two hot endpoints,
`GET /poll` and `POST /response`. Not a general client: no redirects, compression or cookies, and one
request at a time per connection.

Owns connections to one origin (directly, or through an HTTP proxy: absolute-form
requests for `http://`, a `CONNECT` tunnel for `https://`), TLS with the
destination's trust roots and client certificate, and parsing what comes back
(status, `Retry-After`, the body) with httptools. Every command ends in one
of these POSTs and arrives in one of these polls; aiohttp's general client spends
several times the CPU of the request itself on them, so the header lines are
prebuilt by the caller and only the query, length and body change per request.
The rare metadata request stays on aiohttp.

Connections come from a small pool; one interrupted mid-request is dropped,
never reused.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import httptools

from gateway.protocol.errors import GatewayError
from gateway.protocol.headers import RETRY_AFTER

STATUS_BODY: Final = 64 * 1024  # default body kept per response, for callers that only need the status
IDLE_S: Final = 4.0  # shorter than common keep-alive timeouts, so a pooled connection is rarely stale
CONNECT_TIMEOUT_S: Final = 10.0
_RETRY_AFTER: Final = RETRY_AFTER.lower().encode()


class H1Error(GatewayError):
    """The exchange failed. `sent` is False when the request never left (no connection)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True, slots=True)
class H1Response:
    status: int
    retry_after: str | None
    body: bytes
    headers_at: float
    """When the status line and headers had arrived (loop clock): a long body can take a while."""
    truncated: bool = False
    """The body was longer than the caller's `max_body`: `body` holds its start."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go and how: the parts of a URL and proxy a request head needs."""

    scheme: str
    host: str
    port: int
    path: str
    proxy_host: str | None = None
    proxy_port: int = 0
    proxy_auth: str | None = None
    proxy_tls: bool = False

    @classmethod
    def parse(cls, url: str, proxy: str | None = None) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if proxy is None:
            return cls(parts.scheme, parts.hostname, port, path)
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if via.scheme not in ("http", "https") or not via.hostname:
            raise ValueError("an http:// or https:// proxy")
        auth = None
        if via.username is not None:
            pair = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        tls = via.scheme == "https"
        return cls(parts.scheme, parts.hostname, port, path, via.hostname, via.port or (443 if tls else 80), auth, tls)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def request_head(self, method: str, query: str = "") -> bytes:
        """The request line, `Host`, and `Proxy-Authorization` when a plain-HTTP proxy sees every request.
        `query` (`?a=1&b=2`, already encoded) replaces the URL's own."""
        forward = self.proxy_host is not None and self.scheme == "http"
        path = self.path.split("?", 1)[0] + query if query else self.path
        target = f"http://{self.authority}{path}" if forward else path
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.authority}\r\n"
        if forward and self.proxy_auth:
            head += f"Proxy-Authorization: {self.proxy_auth}\r\n"
        return head.encode("latin-1")


def connect_head(authority: str, auth: str | None) -> bytes:
    """A `CONNECT` request for a tunnel to `authority` (host:port), with `Proxy-Authorization` when given."""
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if auth:
        head += f"Proxy-Authorization: {auth}\r\n"
    return f"{head}\r\n".encode("latin-1")


def status_code(answer: bytes) -> str:
    """The three-digit status of a response head (`no status` when there is none)."""
    status = answer.split(b"\r\n", 1)[0].split(b" ", 2)
    return status[1].decode("latin-1", "replace")[:3] if len(status) > 1 else "no status"


def valid_field_value(value: str) -> bool:
    """Safe to write into a header line: visible ASCII and spaces only (no CR, LF or NUL)."""
    return value.isascii() and value.isprintable()


class _Connection(asyncio.Protocol):
    """One socket; one request at a time. httptools calls the `on_*` methods."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[H1Response] | None = None
        self._tunnel: asyncio.Future[bytes] | None = None  # while a CONNECT answer is awaited
        self._max_body = STATUS_BODY
        self._raw = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._retry_after: str | None = None
        self._body = bytearray()
        self._truncated = False
        self._headers_at = 0.0
        self._framed = False

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._raw += data
            end = self._raw.find(b"\r\n\r\n")
            if end >= 0 and not self._tunnel.done():
                self._tunnel.set_result(bytes(self._raw[:end]))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(H1Error("the control plane sent a malformed HTTP response", sent=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._status and not self._framed and self._waiter is not None and not self._waiter.done():
            # A response without a length ends with the connection.
            self._waiter.set_result(self._response())
            return
        self._fail(H1Error("connection closed before the whole response", sent=True))
        if self._tunnel is not None and not self._tunnel.done():
            self._tunnel.set_exception(H1Error("the proxy closed the connection", sent=False))

    # httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == _RETRY_AFTER:
            self._retry_after = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True  # the body's end is known: a close before it is an error

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_at = asyncio.get_running_loop().time()

    def on_body(self, body: bytes) -> None:
        room = self._max_body - len(self._body)
        if room < len(body):
            self._truncated = True
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            self._reset()  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            return
        response = self._response()
        self.reusable = self._parser.should_keep_alive()
        self._reset()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)
        if not self.reusable and self.transport is not None:
            self.transport.close()

    def _response(self) -> H1Response:
        return H1Response(self._status, self._retry_after, bytes(self._body), self._headers_at, self._truncated)

    # use -------------------------------------------------------------------------------

    async def request(self, head: bytes, body: bytes, max_body: int) -> H1Response:
        assert self.transport is not None
        self._max_body = max_body
        self.reusable = False  # until the whole response has been read
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        return await self._waiter

    async def tunnel(self, authority: str, auth: str | None) -> None:
        """Ask the proxy for a `CONNECT` tunnel to `authority`."""
        assert self.transport is not None
        self._tunnel = asyncio.get_running_loop().create_future()
        self.transport.write(connect_head(authority, auth))
        answer = await self._tunnel
        self._tunnel = None
        code = status_code(answer)
        if code != "200":
            raise H1Error(f"the proxy refused the tunnel ({code})", sent=False)

    def _fail(self, error: H1Error) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


Dial = Callable[[asyncio.Protocol], asyncio.Transport]
"""Connects a protocol to the origin by other means than a socket (`memory_link.connect` to the embedded
relay): returns its transport, `connection_made` already called."""


class H1Client:
    """Keep-alive requests to one URL; a pool that grows with concurrency and forgets idle connections.
    With `dial`, connections come from it instead of TCP (no proxy, no TLS)."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_s: float = IDLE_S,
        dial: Dial | None = None,
    ) -> None:
        self._origin = Origin.parse(url, proxy)
        self._dial = dial
        self._post_head = self._origin.request_head("POST")
        context = ssl_context if isinstance(ssl_context, ssl.SSLContext) else None
        tls = self._origin.scheme == "https" or self._origin.proxy_tls
        self._tls = (context or ssl.create_default_context()) if tls else None  # for the proxy too
        self._ssl = self._tls if self._origin.scheme == "https" else None
        self._connect_timeout_s = connect_timeout_s
        self._idle_s = idle_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()

    async def post(self, headers: bytes, body: bytes, *, max_body: int = STATUS_BODY) -> H1Response:
        """POST `body` with `headers` (complete `Name: value\\r\\n` lines, no length); at most
        `max_body` bytes of the answer's body are kept."""
        head = b"%s%sContent-Length: %d\r\n\r\n" % (self._post_head, headers, len(body))
        return await self._exchange(head, body, max_body)

    async def get(self, headers: bytes, *, query: str = "", max_body: int = STATUS_BODY) -> H1Response:
        """GET the URL with `query` instead of its own, and `headers` (complete lines)."""
        head = b"%s%s\r\n" % (self._origin.request_head("GET", query), headers)
        return await self._exchange(head, b"", max_body)

    async def _exchange(self, head: bytes, body: bytes, max_body: int) -> H1Response:
        conn = self._pooled() or await self._connect()
        try:
            response = await conn.request(head, body, max_body)
        except BaseException:
            conn.abort()  # interrupted (error, deadline, shutdown): its state is unknown
            self._open.discard(conn)
            raise
        if conn.reusable:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            self._open.discard(conn)
        return response

    def _pooled(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle and now - self._idle[0].idle_since > self._idle_s:
            stale = self._idle.popleft()
            stale.abort()
            self._open.discard(stale)
        while self._idle:
            conn = self._idle.pop()  # the most recently used: its peer is least likely to have closed it
            if conn.reusable:
                return conn
            self._open.discard(conn)
        return None

    async def _connect(self) -> _Connection:
        origin, loop = self._origin, asyncio.get_running_loop()
        if origin.proxy_host is None:
            host, port, tls_now = origin.host, origin.port, self._ssl
        else:
            host, port, tls_now = origin.proxy_host, origin.proxy_port, self._tls if origin.proxy_tls else None
        conn = _Connection()
        if self._dial is not None:
            try:
                conn.transport = self._dial(conn)
            except OSError as exc:
                raise H1Error(f"cannot connect to {origin.authority}: {type(exc).__name__}", sent=False) from None
            self._open.add(conn)
            return conn
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: conn, host, port, ssl=tls_now, server_hostname=host if tls_now else None
                )
                conn.transport = transport  # `connection_made` may run a loop tick later (uvloop)
                if origin.proxy_host is not None and self._ssl is not None:
                    await conn.tunnel(origin.authority, origin.proxy_auth)
                    upgraded = await loop.start_tls(transport, conn, self._ssl, server_hostname=origin.host)
                    conn.transport = cast(asyncio.Transport, upgraded)
        except (OSError, ssl.SSLError, TimeoutError, H1Error) as exc:
            conn.abort()
            detail = exc if isinstance(exc, H1Error) else type(exc).__name__
            raise H1Error(f"cannot connect to {origin.authority}: {detail}", sent=False) from None
        except BaseException:
            conn.abort()  # cancelled while connecting or tunnelling: nothing may stay open
            raise
        self._open.add(conn)
        return conn

    def close(self) -> None:
        """Drop every connection (in use ones too: their requests fail)."""
        for conn in self._open:
            conn.abort()
        self._open.clear()
        self._idle.clear()
