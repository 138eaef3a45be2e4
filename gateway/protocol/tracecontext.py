"""W3C trace context and the MCP facts telemetry reads, in and out of JSON-RPC bytes.
Sans-IO and free of any tracing SDK; every reader fails soft, so telemetry never breaks a command.

Owns reading and writing `traceparent`/`tracestate` in headers and in
`params._meta` (SEP-414: unprefixed keys), and the cheap looks at a message
telemetry needs (target name, resource URI, arguments, JSON-RPC error code,
`isError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from gateway.protocol.wire import Headers, JsonDecoder, JsonRpcMessage

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACE_KEYS: Final = frozenset({TRACEPARENT, TRACESTATE})
_IS_ERROR: Final = re.compile(rb'"isError"\s*:\s*true')


class Meta(Struct):
    """The `_meta` members telemetry reads."""

    traceparent: str | None = None
    tracestate: str | None = None
    protocol_version: str | None = msgspec.field(default=None, name="io.modelcontextprotocol/protocolVersion")


class Params(Struct):
    """The `params` members telemetry reads (the others are skipped unparsed)."""

    name: object = None
    uri: object = None
    arguments: Raw | UnsetType = UNSET
    meta: Meta | None = msgspec.field(default=None, name="_meta")


class ErrorObject(Struct):
    code: int = 0
    message: str = ""


class _Answer(Struct):
    error: ErrorObject | None = None
    result: Raw | UnsetType = UNSET


NO_PARAMS: Final = Params()


class Outcome(Struct, frozen=True):
    """What a response body says about how the call went."""

    error: ErrorObject | None = None
    tool_error: bool = False


OK: Final = Outcome()


class Payloads:
    """Decoders and an encoder built once; the methods never raise on bad input."""

    def __init__(self) -> None:
        self._params = JsonDecoder(Params)
        self._message = JsonDecoder(JsonRpcMessage)
        self._answer = JsonDecoder(_Answer)
        self._members = JsonDecoder(dict[str, Raw])
        self._enc = msgspec.json.Encoder()

    def params(self, params: Raw | UnsetType | None) -> Params:
        if params is None or params is UNSET:
            return NO_PARAMS
        try:
            return self._params.decode(params)
        except msgspec.MsgspecError:
            return NO_PARAMS

    def message(self, body: bytes | Raw | None) -> JsonRpcMessage | None:
        if not body:
            return None
        try:
            return self._message.decode(body)
        except msgspec.MsgspecError:
            return None

    def outcome(self, body: bytes | None, tool_call: bool) -> Outcome:
        """The JSON-RPC error of a response, or whether a tool result says `isError: true`.

        Byte searches first: a body is parsed only when it mentions `"error"`.
        """
        if not body:
            return OK
        if b'"error"' in body:
            try:
                error = self._answer.decode(body).error
            except msgspec.MsgspecError:
                error = None
            if error is not None:
                return Outcome(error=error)
        if tool_call and _IS_ERROR.search(body) is not None:
            return Outcome(tool_error=True)
        return OK

    def result(self, body: bytes) -> Raw | UnsetType:
        try:
            return self._answer.decode(body).result
        except msgspec.MsgspecError:
            return UNSET

    def inject_params(self, params: Raw | UnsetType, carrier: Mapping[str, str]) -> Raw | None:
        """`params` with `_meta.traceparent`/`tracestate` replaced by `carrier`; None when params is no object."""
        try:
            members = {} if params is UNSET else self._members.decode(params)
            meta_raw = members.get("_meta")
            meta = {} if meta_raw is None else self._members.decode(meta_raw)
        except msgspec.MsgspecError:
            return None
        for key in TRACE_KEYS:
            meta.pop(key, None)
        for key, value in carrier.items():
            meta[key] = Raw(self._enc.encode(value))
        members["_meta"] = Raw(self._enc.encode(meta))
        return Raw(self._enc.encode(members))

    def inject_message(self, body: bytes, carrier: Mapping[str, str]) -> bytes:
        """A whole JSON-RPC request or notification with `carrier` in `params._meta` (responses unchanged)."""
        try:
            members = self._members.decode(body)
        except msgspec.MsgspecError:
            return body
        if "method" not in members:
            return body
        params = self.inject_params(members.get("params", UNSET), carrier)
        if params is None:
            return body
        members["params"] = params
        return self._enc.encode(members)


def request_id_text(raw: Raw | UnsetType | None) -> str | None:
    """A JSON-RPC id as `jsonrpc.request.id` records it: a string id unquoted, a number as written."""
    if raw is None or raw is UNSET:
        return None
    text = bytes(raw).decode(errors="replace")
    if text.startswith('"'):
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return text
        return value if isinstance(value, str) else text
    return text


def with_trace_headers(headers: Headers, carrier: Mapping[str, str]) -> Headers:
    """`headers` with any `traceparent`/`tracestate` (any spelling) replaced by `carrier`."""
    out = {name: values for name, values in headers.items() if name.lower() not in TRACE_KEYS}
    for key, value in carrier.items():
        out[key] = [value]
    return out
