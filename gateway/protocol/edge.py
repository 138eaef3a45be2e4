"""What a 2026-07-28 request must agree with before the gateway serves it, and how its answer is framed.
Sans-IO: raises `CommandError`s and imports no I/O library; handshake-era requests pass untouched.

Owns the MCP 2026-07-28 request checks every front door relies on (the relay's
and the hosted service's, whose commands both carry the client's headers): the
`_meta` envelope, the standard headers against the body, the protocol version;
and the answer's HTTP status and error codes for such a client.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.protocol.eras import (
    CLIENT_CAPABILITIES_KEY,
    HANDSHAKE_VERSIONS,
    META,
    MODERN_VERSIONS,
    NAMED_METHODS,
    PROTOCOL_VERSION_KEY,
)
from gateway.protocol.errors import HeaderMismatch, InvalidRequestParams, UnsupportedProtocolVersion
from gateway.protocol.headers import METHOD_HEADER, NAME_HEADER, VERSION_HEADER
from gateway.protocol.mcp import Reply
from gateway.protocol.wire import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    NULL_ID,
    Codec,
    Headers,
    JsonRpcMessage,
    header_value,
)

SUPPORTED_VERSIONS: Final = (*MODERN_VERSIONS, *reversed(HANDSHAKE_VERSIONS))
"""Every version the gateway serves (it bridges both eras on every channel), newest first."""

RESOURCE_NOT_FOUND: Final = -32002
"""The handshake era's resource-not-found code; 2026-07-28 replaced it by -32602 (basic/index "Error Codes")."""
_STATUS_OF_CODE: Final = {METHOD_NOT_FOUND: 404, -32020: 400, -32021: 400, -32022: 400}
"""The HTTP status streamable-http 2026-07-28 requires for an error answer with this code."""
_SENTINEL: Final = re.compile(r"=\?base64\?(?P<payload>.*)\?=", re.DOTALL)
_HEADER_SAFE: Final = re.compile(r"[\t\x20-\x7e]*")


class _Error(msgspec.Struct):
    code: int


class _ErrorAnswer(msgspec.Struct):
    error: _Error


class Edge:
    """The gateway's checks of a 2026-07-28 request, and the framing of the answer it gets."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._error = msgspec.json.Decoder(_ErrorAnswer)
        self._version = msgspec.json.Decoder(str)

    def check(self, message: JsonRpcMessage, headers: Headers) -> bool:
        """Whether `message` is a 2026-07-28 request, after checking it as streamable-http
        "Server Validation" and basic/index "`_meta`" require (the same ladder as the official
        SDK: envelope keys, then headers against body, then the version); raises the error to answer."""
        if not message.is_request or message.method is UNSET:
            return False  # notifications carry no header requirements in 2026-07-28
        header_version = header_value(headers, VERSION_HEADER)
        meta = self._meta(message.params)
        modern = (header_version is not None and header_version not in HANDSHAKE_VERSIONS) or (
            header_version is None and meta is not None and PROTOCOL_VERSION_KEY in meta
        )
        if not modern:
            return False
        missing = [key for key in (PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY) if meta is None or key not in meta]
        if meta is None or missing:
            raise InvalidRequestParams(f"params._meta is missing the required key(s) {', '.join(missing)}")
        try:
            version = self._version.decode(meta[PROTOCOL_VERSION_KEY])
        except msgspec.MsgspecError:
            raise InvalidRequestParams(f"params._meta {PROTOCOL_VERSION_KEY} must be a string") from None
        _mirrors(_single(headers, VERSION_HEADER), version, VERSION_HEADER, PROTOCOL_VERSION_KEY)
        _mirrors(_single(headers, METHOD_HEADER), message.method, METHOD_HEADER, "method")
        self._check_name(message.method, message.params, headers)
        if version not in MODERN_VERSIONS:
            raise UnsupportedProtocolVersion(version, SUPPORTED_VERSIONS)
        return True

    def answer(self, reply: Reply) -> Reply:
        """A server's answer as a 2026-07-28 client must get it: the code 2026-07-28 defines instead
        of -32002, and the HTTP status its error code requires (404 for -32601, 400 for -32020…-32022)."""
        if not reply.body or b'"error"' not in reply.body:
            return reply
        try:
            code = self._error.decode(reply.body).error.code
        except msgspec.MsgspecError:
            return reply
        body = reply.body
        if code == RESOURCE_NOT_FOUND:
            body = self._recoded(body, INVALID_PARAMS)
            code = INVALID_PARAMS
        status = _STATUS_OF_CODE.get(code, reply.status)
        if body is reply.body and status == reply.status:
            return reply
        return Reply(status, body, reply.headers)

    def _check_name(self, method: str, params: Raw | UnsetType, headers: Headers) -> None:
        key = NAMED_METHODS.get(method)
        if key is None:
            return
        expected = None if params is UNSET else self._codec.string_member(params, key)
        sent = _single(headers, NAME_HEADER)
        if expected is None and sent is None:
            return  # nothing to mirror: the server answers the missing name itself
        decoded = None if sent is None else decode_header_value(sent)
        if sent is not None and decoded is None:
            raise HeaderMismatch(f"Header mismatch: the {NAME_HEADER} header is malformed")
        _mirrors(decoded, expected, NAME_HEADER, key)

    def _meta(self, params: Raw | UnsetType) -> dict[str, Raw] | None:
        if params is UNSET or META.encode() not in bytes(params):
            return None
        try:
            found = self._codec.members(params).get(META)
            return None if found is None else self._codec.members(found)
        except msgspec.MsgspecError:
            return None

    def _recoded(self, body: bytes, code: int) -> bytes:
        message = self._codec.message(body)
        error = self._codec.members(message.error) if message.error is not UNSET else {}
        error["code"] = Raw(b"%d" % code)
        id = message.id if message.id is not UNSET else NULL_ID
        return self._codec.encode({"jsonrpc": "2.0", "id": id, "error": error})


def decode_header_value(value: str) -> str | None:
    """An `Mcp-Name`-style value as sent: the `=?base64?…?=` sentinel decoded (streamable-http
    "Value Encoding"), else the plain value; None when malformed (bad base64 or UTF-8, a plain
    value with characters a header may not carry), so it never matches a body value."""
    found = _SENTINEL.fullmatch(value)
    if found is None:
        return value if _HEADER_SAFE.fullmatch(value) else None
    payload = found["payload"]
    try:
        decoded = base64.b64decode(payload, validate=True)
        return decoded.decode() if base64.b64encode(decoded).decode("ascii") == payload else None
    except (binascii.Error, UnicodeDecodeError):
        return None


def _mirrors(sent: str | None, body: str | None, header: str, field: str) -> None:
    """Raise `HeaderMismatch` unless a standard header carries the body's value (values compare
    case-sensitively: streamable-http "Case Sensitivity")."""
    if sent is None:
        raise HeaderMismatch(f"Header mismatch: the {header} header is missing")
    if sent != body:
        raise HeaderMismatch(f"Header mismatch: the {header} header does not match the request's {field}")


def _single(headers: Headers, name: str) -> str | None:
    """The one value of a standard header (names compared case-insensitively, streamable-http
    "Case Sensitivity"); a header sent twice is malformed: first-copy and last-copy readers disagree."""
    wanted = name.lower()
    values = [value for key, found in headers.items() if key.lower() == wanted for value in found]
    if len(values) > 1:
        raise HeaderMismatch(f"the {name} header appears more than once")
    return values[0] if values else None
