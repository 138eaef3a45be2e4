"""The request headers of one Streamable HTTP MCP server: the transport's own, the configured ones, what a
call's headers may add (never overriding those), the era's headers, and the checks that keep any value
from splitting or smuggling a header. Builds headers only; sends nothing.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict

from gateway.protocol.eras import MODERN_VERSION, Bridge
from gateway.protocol.headers import (
    ACCEPT,
    AUTHORIZATION,
    CONTENT_TYPE,
    EVENT_STREAM,
    JSON,
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
)
from gateway.protocol.mcp import Call, Era, UpstreamInfo
from gateway.protocol.wire import HOP_BY_HOP, strip_hop_by_hop

ACCEPT_BOTH: Final = f"{JSON}, {EVENT_STREAM}"
_PROTECTED: Final = HOP_BY_HOP | {CONTENT_TYPE.lower(), ACCEPT.lower()}
"""Request headers only the transport sets; a call's headers never override them."""
_OWN_SESSION_HEADERS: Final = frozenset({SESSION_HEADER.lower(), VERSION_HEADER.lower()})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_HEADER_SAFE: Final = re.compile(r"[\x20-\x7e]*")
_B64_SENTINEL: Final = re.compile(r"=\?base64\?.*\?=")


class RequestHeaders:
    """The headers of one server's requests: `base` for the gateway's own (probe, handshake, DELETE),
    `call` for a forwarded call. The configured `extra` headers win over a call's."""

    def __init__(self, bridge: Bridge, extra: Mapping[str, str]) -> None:
        self._bridge = bridge
        self._extra = dict(extra)
        self._extra_names = frozenset(k.lower() for k in extra)

    def base(self, *, json_body: bool = True, authorization: str | None = None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        if json_body:
            headers[CONTENT_TYPE] = JSON
            headers[ACCEPT] = ACCEPT_BOTH
        if authorization is not None and valid_value(authorization):
            headers[AUTHORIZATION] = authorization
        headers.update(self._extra)
        return headers

    def call(self, call: Call, info: UpstreamInfo, session_id: str | None) -> CIMultiDict[str]:
        """Transport headers, then the call's (never overriding those or the spec's), then era headers."""
        headers: CIMultiDict[str] = CIMultiDict({CONTENT_TYPE: JSON, ACCEPT: ACCEPT_BOTH})
        own = info.era is Era.LEGACY and call.own_session
        blocked = _PROTECTED | self._extra_names | (_OWN_SESSION_HEADERS if own else frozenset())
        for name, values in strip_hop_by_hop(call.headers).items():
            if name.lower() in blocked or not _TOKEN.fullmatch(name):
                continue
            for value in values:
                if valid_value(value):
                    headers.add(name, value)
        headers.update(self._extra)
        if info.era is Era.MODERN:
            headers.setdefault(VERSION_HEADER, MODERN_VERSION)
            headers.setdefault(METHOD_HEADER, call.method)
            if NAME_HEADER not in headers:
                target = self._bridge.target_name(call.method, call.params)
                if target is not None:
                    headers[NAME_HEADER] = encode_header_value(target)
        elif own:
            headers[VERSION_HEADER] = info.protocol_version
            if session_id is not None:
                headers[SESSION_HEADER] = session_id
        return headers


def encode_header_value(value: str) -> str:
    """An `Mcp-Name`-style header value: verbatim when HTTP-safe, else the `=?base64?…?=` sentinel."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def sendable_header(name: str, value: str) -> bool:
    """A configured header an HTTP request can carry: a token name and a value without CR, LF or NUL."""
    return _TOKEN.fullmatch(name) is not None and valid_value(value)


def valid_value(value: str) -> bool:
    """A header value that cannot split or smuggle a header (no CR, LF or NUL)."""
    return _FIELD_VALUE.fullmatch(value) is not None
