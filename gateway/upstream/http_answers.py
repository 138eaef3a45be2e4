"""How one Streamable HTTP answer becomes frames: a JSON body or an SSE stream turned into `Notify`s and one
`Reply`, every body bounded, the JSON-RPC response checked against the request's id. Failures are
`UpstreamError`s naming the server. Reads answers only: it sends nothing and knows no session or era.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Final

import aiohttp
import msgspec
from msgspec import UNSET, Raw
from multidict import CIMultiDictProxy

from gateway.protocol.errors import UpstreamHttpError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.headers import CONTENT_TYPE, EVENT_STREAM, JSON, WWW_AUTHENTICATE
from gateway.protocol.mcp import Frame, Notify, Reply
from gateway.protocol.sse import SseEventTooLarge, SseParser
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage

_READ_CHUNK: Final = 64 * 1024


class AnswerReader:
    """The frames of one server's HTTP answers, bodies and SSE events bounded by `max_bytes`."""

    def __init__(self, server: str, codec: Codec, max_bytes: int) -> None:
        self._server = server
        self._codec = codec
        self._max = max_bytes

    async def answer(self, resp: aiohttp.ClientResponse, id: Raw | None) -> AsyncGenerator[Frame, None]:
        """The frames of one HTTP answer: Notify* then one Reply, or an UpstreamError."""
        status = resp.status
        headers = response_headers(resp.headers)
        mime = (resp.headers.get(CONTENT_TYPE) or "").partition(";")[0].strip().lower()
        if status >= 400:
            body = await self._read_body(resp)
            if mime == JSON and self._is_response(body):
                yield Reply(status, body, headers)
                return
            raise UpstreamHttpError(self._server, status, challenge(headers))
        if not 200 <= status < 300:
            raise UpstreamProtocolError(self._server, "non_protocol_response")
        if id is None:  # a notification: the server's acceptance is the whole answer
            yield Reply(status, b"", headers)
            return
        wanted = msgspec.json.decode(id)
        if mime == EVENT_STREAM:
            async for frame in self._stream(resp, wanted, headers):
                yield frame
            return
        body = await self._read_body(resp)
        if not body.strip():
            raise UpstreamProtocolError(self._server, "response_body_missing")
        if mime != JSON:
            raise UpstreamProtocolError(self._server, "non_protocol_response")
        message = self._response(body)
        if message.id is UNSET or _id_of(message.id) not in (wanted, None):
            raise UpstreamProtocolError(self._server, "invalid_protocol_response")
        yield Reply(status, body, headers)

    async def _stream(
        self, resp: aiohttp.ClientResponse, wanted: object, headers: Headers
    ) -> AsyncGenerator[Frame, None]:
        """An SSE answer: server messages become Notify; the response with our id ends it."""
        parser = SseParser(max_event_bytes=self._max)
        async for chunk in resp.content.iter_any():
            try:
                events = parser.feed(chunk)
            except SseEventTooLarge:
                raise UpstreamProtocolError(self._server, "response_body_too_large") from None
            for event in events:
                if not event.data.strip():
                    continue  # priming or keep-alive event
                message = self._message(event.data)
                if message.method is not UNSET:
                    yield Notify(event.data)
                elif message.is_response and message.id is not UNSET:
                    self._response(event.data)
                    if _id_of(message.id) == wanted:
                        yield Reply(resp.status, event.data, headers)
                        return
                    # a response to some other request does not belong on this stream: skip it
                else:
                    raise UpstreamProtocolError(self._server, "invalid_protocol_response")
        raise UpstreamUnavailable.closed(self._server, "unexpected_eof")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max:
            raise UpstreamProtocolError(self._server, "response_body_too_large")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > self._max:
                raise UpstreamProtocolError(self._server, "response_body_too_large")
        return bytes(body)

    def _message(self, data: bytes) -> JsonRpcMessage:
        try:
            message = self._codec.message(data)
        except msgspec.ValidationError:
            raise UpstreamProtocolError(self._server, "invalid_protocol_response") from None
        except msgspec.DecodeError:
            raise UpstreamProtocolError(self._server, "malformed_json") from None
        if message.jsonrpc != "2.0":
            raise UpstreamProtocolError(self._server, "invalid_protocol_response")
        return message

    def _response(self, data: bytes) -> JsonRpcMessage:
        """A JSON-RPC response (result or a well-formed error), or UpstreamProtocolError."""
        message = self._message(data)
        if not message.is_response or message.id is UNSET:
            raise UpstreamProtocolError(self._server, "invalid_protocol_response")
        if message.error is not UNSET:
            try:
                self._codec.error(message.error)
            except msgspec.MsgspecError:
                raise UpstreamProtocolError(self._server, "invalid_mcp_error") from None
        return message

    def _is_response(self, data: bytes) -> bool:
        try:
            self._response(data)
        except UpstreamProtocolError:
            return False
        return True


def _id_of(raw: Raw) -> object:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ...  # never equal to a decoded id


def challenge(headers: Headers) -> Headers:
    """The `WWW-Authenticate` values of an answer (RFC 9110 §11.6.1), as the client must see them."""
    values = [value for name, found in headers.items() if name.lower() == WWW_AUTHENTICATE.lower() for value in found]
    return {WWW_AUTHENTICATE: values} if values else {}


def response_headers(headers: CIMultiDictProxy[str]) -> Headers:
    """Response headers as the tunnel carries them: name -> every value, in order."""
    out: Headers = {}
    for name, value in headers.items():
        out.setdefault(name, []).append(value)
    return out
