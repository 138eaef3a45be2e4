"""What the relay's hot handlers see of a request and give back, independent of the HTTP server.
Types and adapters only: no routing, no admission, no queueing.

Owns `RequestHead` (the parts of a request the tunnel API and the front door read: aiohttp's
`web.Request` has them, and so does `Head`, the lean server's own head, built by `gateway.relay.lean_http`),
`Reply` (status, headers, body), `EventStream` (an SSE answer written as it goes) and their
aiohttp adapters, so each handler's logic is written once and served by either server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, MultiDict, MultiDictProxy, MultiMapping

ResponseHeaders = list[tuple[str, str]]

BodyReader = Callable[[], Awaitable[bytes]]
"""Reads the whole request body under the relay's limit and read timeout (BodyTooLarge, BodyTimeout)."""


class RequestHead(Protocol):
    """A request's method, path parameters, query and headers (case-insensitive, multi-valued)."""

    @property
    def method(self) -> str: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> MultiMapping[str]: ...

    @property
    def headers(self) -> MultiMapping[str]: ...


class Head:
    """A request head the lean server parsed (`RequestHead`); `fields` are its header lines in order, as
    sent (name, value: plain strings, which `forwarded_headers` copies without multidict's keys)."""

    __slots__ = ("_query", "_query_string", "fields", "headers", "match_info", "method", "path")

    def __init__(
        self, method: str, path: str, query_string: str, fields: list[tuple[str, str]], match_info: dict[str, str]
    ) -> None:
        self.method = method
        self.path = path
        self.fields = fields
        self.headers: MultiMapping[str] = CIMultiDict(fields)
        self.match_info: Mapping[str, str] = match_info
        self._query_string = query_string
        self._query: MultiDictProxy[str] | None = None

    @property
    def query(self) -> MultiMapping[str]:
        if self._query is None:
            self._query = MultiDictProxy(MultiDict(parse_qsl(self._query_string, keep_blank_values=True)))
        return self._query


class Reply:
    """A complete answer: status, headers in order (Content-Type among them when there is a body), body.
    `body` None means no body at all (aiohttp then sends no Content-Type either)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes | None = None, headers: ResponseHeaders | None = None) -> None:
        self.status = status
        self.body = body
        self.headers: ResponseHeaders = headers if headers is not None else []

    def to_response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers or None)


class EventStream(Protocol):
    """An SSE answer (200) the front door writes frame by frame; ConnectionResetError once the caller left."""

    async def open(self, headers: ResponseHeaders) -> None: ...

    async def send(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class WebEventStream:
    """`EventStream` on aiohttp: a `web.StreamResponse` prepared on `open`."""

    __slots__ = ("_request", "response")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def open(self, headers: ResponseHeaders) -> None:
        self.response = web.StreamResponse(status=200, headers=headers)
        await self.response.prepare(self._request)

    async def send(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


def web_answer(reply: Reply | None, stream: WebEventStream) -> web.StreamResponse:
    """The aiohttp response of a handler core: its Reply, or the stream it wrote."""
    if reply is not None:
        return reply.to_response()
    assert stream.response is not None
    return stream.response
