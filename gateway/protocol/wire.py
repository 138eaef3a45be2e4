"""Secure MCP Tunnel v1 and JSON-RPC on the wire: typed Structs, codecs, deadlines, failures.
Sans-IO: imports neither asyncio nor aiohttp, and never touches a socket.

Owns every byte shape that crosses the control-plane boundary (poll batches,
response payloads, acks, API errors, the server-info header) and the JSON-RPC
envelopes relayed through it, with `params`/`result`/`error` kept as raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from gateway.protocol import jsonscan
from gateway.protocol.headers import CONTENT_TYPE, JSON, LAST_EVENT_ID, SESSION_HEADER, WWW_AUTHENTICATE

T = TypeVar("T")

Headers = dict[str, list[str]]
"""Multi-valued HTTP headers as the tunnel carries them: name -> values."""


def json_headers() -> Headers:
    """The headers of a JSON answer (a new dict: callers may add to it)."""
    return {CONTENT_TYPE: [JSON]}


JSONRPC_VERSION: Final = "2.0"

# Response payload types (`ResponsePayloadType` in openapi.json).
RESP_JSONRPC: Final = "jsonrpc_response"
RESP_NOTIFY: Final = "jsonrpc_notify"
RESP_NOTIFY_ACK: Final = "notify_ack"
RESP_SESSION_END: Final = "session_termination_response"
RESP_OAUTH_DISCOVERY: Final = "oauth_discovery_response"
"""Outside `openapi.json`'s enum: the official client's answer to `oauth_discovery` (its wire types
name it; see the tunnel-protocol notes), terminal, with the metadata in `resp_json`."""
ResponseType = Literal[
    "jsonrpc_response", "jsonrpc_notify", "notify_ack", "session_termination_response", "oauth_discovery_response"
]
TERMINAL_TYPES: Final = frozenset({RESP_JSONRPC, RESP_NOTIFY_ACK, RESP_SESSION_END, RESP_OAUTH_DISCOVERY})
RESPONSE_TYPES: Final = TERMINAL_TYPES | {RESP_NOTIFY}
"""Every `resp_type` a control plane accepts: the contract's four and `oauth_discovery_response`."""

COMMAND_JSONRPC: Final = "jsonrpc"
COMMAND_SESSION_END: Final = "session_termination"
COMMAND_OAUTH_DISCOVERY: Final = "oauth_discovery"
"""Outside `openapi.json`: fetch the channel's server's OAuth metadata (RFC 9728, RFC 8414)."""

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


class _Envelope(Struct):
    """What a command needs to be answered at all; its other fields are read one by one."""

    request_id: str
    shard_token: str
    command_type: str = COMMAND_JSONRPC
    channel: str = "main"


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


TOO_DEEP: Final = "JSON nested deeper than the decoder allows"
MAX_CLIENT_DEPTH: Final = 128
"""How deep an MCP client's message may nest arrays and objects (the envelope included)."""


class JsonDecoder(Generic[T]):
    """A msgspec JSON decoder for one type whose nesting bound ends in `msgspec.DecodeError`.

    msgspec refuses a value nested deeper than the interpreter's recursion limit (about
    1,000 levels) with `RecursionError`; here that is what it is, malformed input, so
    every caller's `except msgspec.MsgspecError` covers it."""

    def __init__(self, type: type[T]) -> None:
        self._decoder = msgspec.json.Decoder(type)

    def decode(self, data: bytes | Raw | str) -> T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError(TOO_DEEP) from None


class Codec:
    """Encoders and decoders built once and shared (msgspec's fast path)."""

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._message = JsonDecoder(JsonRpcMessage)
        self._command = JsonDecoder(PolledCommand)
        self._envelope = JsonDecoder(_Envelope)
        self._headers = JsonDecoder(Headers)
        self._raw = JsonDecoder(Raw)
        self._batch = JsonDecoder(PollBatch)
        self._payload = JsonDecoder(TunnelResponsePayload)
        self._error = JsonDecoder(JsonRpcError)
        self._object = JsonDecoder(dict[str, Raw])
        self._string = JsonDecoder(str)

    # decoders raise msgspec.DecodeError / ValidationError; callers translate.
    def message(self, data: bytes | Raw) -> JsonRpcMessage:
        return self._message.decode(data)

    def client_message(self, data: bytes | Raw) -> JsonRpcMessage:
        """A message from an MCP client: like `message`, and DecodeError when it nests deeper than
        MAX_CLIENT_DEPTH, which servers may not survive (the official Python SDK drops such a
        message unanswered)."""
        if jsonscan.nesting_exceeds(bytes(data), MAX_CLIENT_DEPTH):
            raise msgspec.DecodeError(f"JSON nested deeper than {MAX_CLIENT_DEPTH} levels")
        return self._message.decode(data)

    def command(self, data: bytes | Raw) -> PolledCommand:
        """One polled command. A command the strict decode refuses is read field by field:
        when its `request_id`, `shard_token`, `command_type` and `channel` are usable it is
        returned with what else could be read (an unreadable `response_timeout` means no
        deadline; unreadable `headers` or `jsonrpc` leave `jsonrpc` unset, which is answered
        as an invalid request); otherwise DecodeError (it cannot be answered)."""
        try:
            return self._command.decode(data)
        except msgspec.MsgspecError:
            return self._salvage(bytes(data))

    def _salvage(self, data: bytes) -> PolledCommand:
        found = jsonscan.members(data)
        if found is None or any(key is None for key, _ in found):
            raise msgspec.DecodeError("a command that is not a JSON object")
        fields = {key: value for key, value in found if key is not None}  # the last one wins, as in msgspec
        kept = b",".join(key + b":" + value for key, value in fields.items() if key in _ENVELOPE_KEYS)
        envelope = self._envelope.decode(b"{%s}" % kept)
        timeout = fields.get(b'"response_timeout"')
        command = PolledCommand(
            request_id=envelope.request_id,
            shard_token=envelope.shard_token,
            command_type=envelope.command_type,
            channel=envelope.channel,
            response_timeout=self._optional_string(timeout),
        )
        try:
            headers = fields.get(b'"headers"')
            command.headers = {} if headers is None else self._headers.decode(headers)
            jsonrpc = fields.get(b'"jsonrpc"')
            if jsonrpc is not None:
                self._raw.decode(jsonrpc)  # a value msgspec reads, so it can be forwarded
                command.jsonrpc = Raw(jsonrpc)
        except msgspec.MsgspecError:
            command.headers, command.jsonrpc = {}, UNSET
        return command

    def _optional_string(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            return self._string.decode(data)
        except msgspec.MsgspecError:
            return None

    def batch(self, data: bytes) -> PollBatch:
        """The commands of a poll body, each still raw. When the strict decode refuses the body
        (one command nested too deep or holding a lone surrogate), the `commands` array is split
        without judging its members, so each is decoded, and answered or dropped, on its own."""
        try:
            return self._batch.decode(data)
        except msgspec.MsgspecError:
            top = jsonscan.members(data)
            commands = None if top is None else dict(top).get(b'"commands"')
            listed = None if commands is None else jsonscan.members(commands)
            if listed is None or commands is None or not commands.startswith(b"["):
                raise
            return PollBatch([Raw(value) for _, value in listed])

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


_ENVELOPE_KEYS: Final = frozenset(b'"%s"' % name.encode() for name in _Envelope.__struct_fields__)

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


CLOCK_RESOLUTION_S: Final = 0.001
"""The coarsest tick of the loop clocks the gateway runs on (uvloop counts milliseconds): a
deadline closer than this cannot be told from one already passed, so it counts as passed."""


def parse_response_timeout(value: object) -> float | None:
    """`response_timeout` -> seconds, or None for "no deadline".

    Grammar: one non-negative integer (ASCII digits) and one unit of
    ns/us/ms/s/m/h. Absent, null, malformed, non-string or overflowing values
    fail open (None); `0s` is 0.0, meaning already expired.
    """
    if not isinstance(value, str):
        return None
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return None
    nanos = int(match[1]) * _UNIT_NS[match[2]]
    if nanos > _MAX_DURATION_NS:
        return None
    return nanos / 1e9


def expired(deadline: float | None, now: float) -> bool:
    """Whether a command with this deadline (loop time) must be dropped at `now`: past it, or
    closer to it than the clock can resolve (`1ns`, `100ns`, `1us` have passed on arrival)."""
    return deadline is not None and now + CLOCK_RESOLUTION_S > deadline


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
        CONTENT_TYPE,
        SESSION_HEADER,
        "Mcp-Protocol-Version",  # the v1 contract's spelling of VERSION_HEADER
        LAST_EVENT_ID,
        "Access-Control-Expose-Headers",
        WWW_AUTHENTICATE,
    )
}


def connection_named(values: Iterable[str]) -> set[str]:
    """The header names (lowercased) a `Connection` header's values name."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers and any header the `Connection` header names."""
    named: set[str] = set()
    for name, values in headers.items():
        if name.lower() == "connection":
            named |= connection_named(values)
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
            named |= connection_named(values)
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
