"""Secure MCP Tunnel v1 and JSON-RPC on the wire: typed Structs, codecs, deadlines, failures.

Owns every byte shape that crosses the control-plane boundary (poll batches,
response payloads, acks, API errors, the server-info header) and the JSON-RPC
envelopes relayed through it, with `params`/`result`/`error` kept as raw bytes.
Sans-IO: imports neither asyncio nor aiohttp, and never touches a socket.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

Headers = dict[str, list[str]]
"""Multi-valued HTTP headers as the tunnel carries them: name -> values."""

JSONRPC_VERSION: Final = "2.0"

# Response payload types (`ResponsePayloadType` in openapi.json).
RESP_JSONRPC: Final = "jsonrpc_response"
RESP_NOTIFY: Final = "jsonrpc_notify"
RESP_NOTIFY_ACK: Final = "notify_ack"
RESP_SESSION_END: Final = "session_termination_response"
ResponseType = Literal["jsonrpc_response", "jsonrpc_notify", "notify_ack", "session_termination_response"]
TERMINAL_TYPES: Final = frozenset({RESP_JSONRPC, RESP_NOTIFY_ACK, RESP_SESSION_END})

COMMAND_JSONRPC: Final = "jsonrpc"
COMMAND_SESSION_END: Final = "session_termination"

MAX_POLL_LIMIT: Final = 25
"""The contract's upper bound for the poll `limit` hint."""


# --------------------------------------------------------------------------- control plane


class PolledCommand(Struct, kw_only=True):
    """One command from a poll batch (both `JsonRpcPolledCommand` and
    `SessionTerminationPolledCommand`, and any future type).

    One Struct for all types on purpose: `command_type` is dispatched on by the
    caller, so an unknown type still decodes and can be logged with its
    `request_id` instead of failing the whole batch. Unknown fields are ignored.
    """

    request_id: str
    shard_token: str
    command_type: str = COMMAND_JSONRPC
    channel: str = "main"
    created_at: str | UnsetType = UNSET
    response_timeout: str | None = None
    headers: Headers = {}
    jsonrpc: Raw | UnsetType = UNSET


class PollBatch(Struct):
    """`PolledCommandList`, decoded shallowly: each command is decoded on its own
    so that one malformed command cannot take its neighbours down with it."""

    commands: list[Raw]


class PolledCommandList(Struct):
    """`PolledCommandList` as the relay builds it."""

    commands: list[PolledCommand]


class TunnelResponsePayload(Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/tunnels/{id}/response` (no extra properties allowed)."""

    request_id: str
    resp_code: int
    resp_type: str = RESP_JSONRPC
    channel: str | UnsetType | None = UNSET
    resp_json: Raw | UnsetType = UNSET
    resp_headers: Headers | UnsetType = UNSET

    @property
    def is_terminal(self) -> bool:
        return self.resp_type in TERMINAL_TYPES


class TunnelResponseAck(Struct):
    status: Literal["ok"] = "ok"


class APIErrorBody(Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class APIErrorResponse(Struct):
    error: APIErrorBody


class TunnelClientMetadata(Struct):
    """`GET /v1/tunnels/{id}`; extra fields from the service are ignored."""

    id: str
    name: str
    description: str


class ServerInfoChannel(Struct):
    name: str
    proc_affinity: bool | UnsetType = UNSET


class ServerInfoHeader(Struct):
    """The `X-Tunnel-MCP-Server-Info` v1 value."""

    version: int
    channels: list[ServerInfoChannel]


SERVER_INFO_MAX_CHANNELS: Final = 32
SERVER_INFO_MAX_BYTES: Final = 4096


def server_info_header(channels: dict[str, bool]) -> str | None:
    """Encode channel -> proc_affinity as the compact header value, or None when
    the declaration would break the v1 limits (more than 32 channels or 4096
    bytes): an oversized declaration is omitted rather than truncated."""
    if len(channels) > SERVER_INFO_MAX_CHANNELS:
        return None
    entries = [ServerInfoChannel(name, True if affine else UNSET) for name, affine in sorted(channels.items())]
    value = msgspec.json.encode(ServerInfoHeader(version=1, channels=entries))
    if len(value) > SERVER_INFO_MAX_BYTES:
        return None
    return value.decode()


# --------------------------------------------------------------------------- JSON-RPC


class JsonRpcMessage(Struct, kw_only=True):
    """Any JSON-RPC 2.0 message, decoded only as deep as routing needs.

    `id` stays raw so it is echoed byte for byte; `params`, `result` and
    `error` stay raw so payloads are relayed without being parsed.
    """

    jsonrpc: str | UnsetType = UNSET
    id: Raw | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET

    @property
    def is_request(self) -> bool:
        return self.method is not UNSET and self.id is not UNSET

    @property
    def is_notification(self) -> bool:
        return self.method is not UNSET and self.id is UNSET

    @property
    def is_response(self) -> bool:
        return self.method is UNSET and (self.result is not UNSET or self.error is not UNSET)


class JsonRpcError(Struct, kw_only=True):
    code: int
    message: str
    data: Raw | UnsetType = UNSET


class TunnelFailure(Struct, kw_only=True):
    """`error.data.tunnel_failure` provenance of a synthesized -32603 (v1)."""

    version: int = 1
    source: str
    transport_error_kind: str | UnsetType = UNSET
    upstream_response_received: bool
    upstream_status: int | UnsetType = UNSET


class FailureData(Struct):
    tunnel_failure: TunnelFailure


class _Request(Struct, kw_only=True):
    jsonrpc: str
    id: Raw
    method: str
    params: Raw | UnsetType = UNSET


class _Notification(Struct, kw_only=True):
    jsonrpc: str
    method: str
    params: Raw | UnsetType = UNSET


class _Result(Struct, kw_only=True):
    jsonrpc: str
    id: Raw
    result: Raw


class _Error(Struct, kw_only=True):
    jsonrpc: str
    id: Raw
    error: Raw


class _ErrorObject(Struct, kw_only=True):
    code: int
    message: str
    data: FailureData | Raw | UnsetType = UNSET


class Codec:
    """Encoders and decoders built once and shared (msgspec's fast path)."""

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._message = msgspec.json.Decoder(JsonRpcMessage)
        self._command = msgspec.json.Decoder(PolledCommand)
        self._batch = msgspec.json.Decoder(PollBatch)
        self._payload = msgspec.json.Decoder(TunnelResponsePayload)
        self._error = msgspec.json.Decoder(JsonRpcError)
        self._object = msgspec.json.Decoder(dict[str, Raw])
        self._string = msgspec.json.Decoder(str)

    # decoders raise msgspec.DecodeError / ValidationError; callers translate.
    def message(self, data: bytes | Raw) -> JsonRpcMessage:
        return self._message.decode(data)

    def command(self, data: bytes | Raw) -> PolledCommand:
        return self._command.decode(data)

    def batch(self, data: bytes) -> PollBatch:
        return self._batch.decode(data)

    def payload(self, data: bytes) -> TunnelResponsePayload:
        return self._payload.decode(data)

    def error(self, data: bytes | Raw) -> JsonRpcError:
        return self._error.decode(data)

    def members(self, data: bytes | Raw) -> dict[str, Raw]:
        """One level of a JSON object: keys to raw values (for `_meta` surgery)."""
        return self._object.decode(data)

    def string_member(self, data: bytes | Raw, key: str) -> str | None:
        """`data[key]` when `data` is a JSON object whose `key` holds a string, else None."""
        try:
            value = self._object.decode(data).get(key)
            found = None if value is None else self._string.decode(value)
        except msgspec.MsgspecError:
            return None
        return found

    def encode(self, obj: object) -> bytes:
        return self._enc.encode(obj)

    def request(self, id: Raw, method: str, params: Raw | UnsetType) -> bytes:
        return self._enc.encode(_Request(jsonrpc=JSONRPC_VERSION, id=id, method=method, params=params))

    def notification(self, method: str, params: Raw | UnsetType) -> bytes:
        return self._enc.encode(_Notification(jsonrpc=JSONRPC_VERSION, method=method, params=params))

    def result(self, id: Raw, result: Raw | bytes) -> bytes:
        raw = result if isinstance(result, Raw) else Raw(result)
        return self._enc.encode(_Result(jsonrpc=JSONRPC_VERSION, id=id, result=raw))

    def response(self, id: Raw, message: JsonRpcMessage) -> bytes:
        """Re-encode a response under another id (stdio id remapping), payload untouched."""
        if message.error is not UNSET:
            return self._enc.encode(_Error(jsonrpc=JSONRPC_VERSION, id=id, error=message.error))
        result = message.result if message.result is not UNSET else Raw(b"null")
        return self._enc.encode(_Result(jsonrpc=JSONRPC_VERSION, id=id, result=result))

    def error_response(self, id: Raw, code: int, message: str, data: Raw | UnsetType = UNSET) -> bytes:
        err = self._enc.encode(_ErrorObject(code=code, message=message, data=data))
        return self._enc.encode(_Error(jsonrpc=JSONRPC_VERSION, id=id, error=Raw(err)))

    def failure_response(self, id: Raw, message: str, failure: TunnelFailure) -> bytes:
        """A synthesized -32603 carrying `tunnel_failure` provenance."""
        err = self._enc.encode(_ErrorObject(code=INTERNAL_ERROR, message=message, data=FailureData(failure)))
        return self._enc.encode(_Error(jsonrpc=JSONRPC_VERSION, id=id, error=Raw(err)))

    def api_error(self, message: str, type: str, code: str | None, param: str | None = None) -> bytes:
        return self._enc.encode(APIErrorResponse(APIErrorBody(message=message, type=type, param=param, code=code)))


NULL_ID: Final = Raw(b"null")

# JSON-RPC error codes used by the gateway.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603


# --------------------------------------------------------------------------- deadlines

_TIMEOUT = re.compile(r"([0-9]+)(ns|us|ms|s|m|h)")
_UNIT_NS: Final = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_MAX_DURATION_NS: Final = 2**63 - 1
"""A duration beyond a signed 64-bit nanosecond count is an overflow: no deadline."""


def parse_response_timeout(value: str | None) -> float | None:
    """`response_timeout` -> seconds, or None for "no deadline".

    Grammar: one non-negative integer (ASCII digits) and one unit of
    ns/us/ms/s/m/h. Absent, null, malformed or overflowing values fail open
    (None); `0s` is 0.0, meaning already expired.
    """
    if value is None:
        return None
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return None
    nanos = int(match[1]) * _UNIT_NS[match[2]]
    if nanos > _MAX_DURATION_NS:
        return None
    return nanos / 1e9


# --------------------------------------------------------------------------- headers

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

RESPONSE_HEADER_ALLOWLIST: Final = {
    name.lower(): name
    for name in (
        "Content-Type",
        "Mcp-Session-Id",
        "Mcp-Protocol-Version",
        "Last-Event-ID",
        "Access-Control-Expose-Headers",
        "WWW-Authenticate",
    )
}


def _connection_named(values: list[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers and any header the `Connection` header names."""
    named: set[str] = set()
    for name, values in headers.items():
        if name.lower() == "connection":
            named |= _connection_named(values)
    return {
        name: list(values)
        for name, values in headers.items()
        if name.lower() not in HOP_BY_HOP and name.lower() not in named
    }


def allowed_response_headers(headers: Headers) -> Headers:
    """Keep only the response headers the contract lets through, canonically
    named, every value preserved, minus anything `Connection` names."""
    named: set[str] = set()
    for name, values in headers.items():
        if name.lower() == "connection":
            named |= _connection_named(values)
    out: Headers = {}
    for name, values in headers.items():
        key = name.lower()
        canonical = RESPONSE_HEADER_ALLOWLIST.get(key)
        if canonical is None or key in named:
            continue
        out.setdefault(canonical, []).extend(values)
    return out


def header_value(headers: Headers, name: str) -> str | None:
    """First value of a header, matched case-insensitively."""
    wanted = name.lower()
    for key, values in headers.items():
        if key.lower() == wanted and values:
            return values[0]
    return None
