"""OAuth discovery as the tunnel carries it: well-known URLs, metadata documents, `WWW-Authenticate`.
Sans-IO: strings and bytes in and out; it never fetches anything.

Owns the rules both ends share: where a protected resource's metadata lives (RFC 9728 §3.1) and an
authorization server's (RFC 8414 §3.1 and OpenID Connect Discovery, in the order the MCP
authorization spec gives), what an `oauth_discovery_response` holds, how the relay serves it, and
`resource_metadata` in a Bearer challenge (RFC 9728 §5.1) found and replaced without disturbing the
rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Raw, Struct

from gateway.protocol.errors import GatewayError
from gateway.protocol.wire import Codec, JsonDecoder

PRM_WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
"""RFC 9728 §3: the well-known suffix of a protected resource's metadata."""
AS_WELL_KNOWN: Final = "/.well-known/oauth-authorization-server"
OIDC_WELL_KNOWN: Final = "/.well-known/openid-configuration"

AUTHORIZATION_SERVER_KEY: Final = "tunnel_authorization_server_metadata"
"""The member of an `oauth_discovery_response`'s `resp_json` (besides the server's own protected
resource metadata members) that holds the metadata of its first authorization server, when the
gateway could fetch it. Ours, not RFC 9728's; the relay removes it before serving the document."""
RESOURCE_METADATA_PARAM: Final = "resource_metadata"

MAX_METADATA_BYTES: Final = 64 * 1024
"""Largest metadata document the gateway reads (the official client bounds it the same way)."""


class ProtectedResourceMetadata(Struct):
    """The members of an RFC 9728 §2 document the tunnel looks at; the rest pass through as bytes."""

    resource: str
    authorization_servers: list[str] = []


class AuthorizationServerMetadata(Struct):
    """The member of an RFC 8414 §2 document the gateway checks (`issuer`, REQUIRED)."""

    issuer: str


class InvalidMetadata(GatewayError, ValueError):
    """A metadata document that is not what its RFC requires (the reason says what, never the body)."""


# --------------------------------------------------------------------------- well-known URLs


def protected_resource_metadata_urls(resource: str) -> list[str]:
    """Where a protected resource's metadata may be, in the order to try (MCP authorization,
    "Protected Resource Metadata Discovery Requirements"): the RFC 9728 §3.1 URL, the well-known
    suffix inserted between the host and the path (a terminating slash removed), then, for a
    resource with a path or query, the root well-known URL."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    root = urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN, "", ""))
    if not path and not parts.query:
        return [root]
    return [urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + path, parts.query, "")), root]


def authorization_server_metadata_urls(issuer: str) -> list[str]:
    """Where an authorization server's metadata may be, in the order the MCP authorization spec
    ("Authorization Server Metadata Discovery") gives: for an issuer with a path, RFC 8414 §3.1 path
    insertion, OpenID Connect Discovery path insertion, then OIDC path appending; for one without,
    RFC 8414 §3.1, then OpenID Connect Discovery."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    if not path:
        return [at(AS_WELL_KNOWN), at(OIDC_WELL_KNOWN)]
    return [at(AS_WELL_KNOWN + path), at(OIDC_WELL_KNOWN + path), at(path + OIDC_WELL_KNOWN)]


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host and no fragment (the only kind discovery follows)."""
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment
    except ValueError:
        return False


# --------------------------------------------------------------------------- documents


class MetadataCodec:
    """The discovery documents read and written, decoders built once (the owner keeps one)."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._resource = JsonDecoder(ProtectedResourceMetadata)
        self._server = JsonDecoder(AuthorizationServerMetadata)

    def protected_resource(self, body: bytes) -> ProtectedResourceMetadata:
        """An RFC 9728 §2 document's `resource` (REQUIRED, an http(s) URL) and `authorization_servers`
        (OPTIONAL, URLs); InvalidMetadata otherwise."""
        try:
            metadata = self._resource.decode(body)
        except msgspec.MsgspecError:
            raise InvalidMetadata("not a protected resource metadata object with a string `resource`") from None
        if not is_http_url(metadata.resource):
            raise InvalidMetadata("`resource` is not an absolute http(s) URL")
        if not all(is_http_url(server) for server in metadata.authorization_servers):
            raise InvalidMetadata("`authorization_servers` holds something that is not an absolute http(s) URL")
        return metadata

    def authorization_server(self, body: bytes) -> AuthorizationServerMetadata:
        """An RFC 8414 §2 document's `issuer` (REQUIRED); InvalidMetadata otherwise."""
        try:
            return self._server.decode(body)
        except msgspec.MsgspecError:
            raise InvalidMetadata("not an authorization server metadata object with a string `issuer`") from None

    def answer(self, resource_metadata: bytes, server_metadata: bytes | None) -> bytes:
        """The `resp_json` of an `oauth_discovery_response`: the server's protected resource metadata,
        member for member, and (when fetched) its authorization server's under AUTHORIZATION_SERVER_KEY."""
        if server_metadata is None:
            return resource_metadata
        members = self._codec.members(resource_metadata)
        members[AUTHORIZATION_SERVER_KEY] = Raw(server_metadata)
        return self._codec.encode(members)

    def served(self, answer: bytes | Raw, resource: str) -> bytes:
        """The protected resource metadata the relay serves from an `oauth_discovery_response`:
        `resource` replaced by the URL clients reach the channel at (RFC 9728 §3.3: it must be the
        resource the well-known URL was built from), the gateway's extension member removed.
        InvalidMetadata when the answer is not a JSON object."""
        try:
            members = self._codec.members(answer)
        except msgspec.MsgspecError:
            raise InvalidMetadata("the discovery answer is not a JSON object") from None
        members.pop(AUTHORIZATION_SERVER_KEY, None)
        members["resource"] = Raw(self._codec.encode(resource))
        return self._codec.encode(members)


# --------------------------------------------------------------------------- WWW-Authenticate

_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE: Final = " \t"
_TOKEN68: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/=")


def quoted(value: str) -> str:
    """`value` as an RFC 9110 §5.6.4 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] in _TCHAR:
        end += 1
    return end


def _skip(text: str, start: int, chars: str) -> int:
    while start < len(text) and text[start] in chars:
        start += 1
    return start


def _quoted_end(text: str, start: int) -> int:
    """The index after the quoted-string starting at `start` (which is `"`); -1 when unterminated."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return -1


def _scan(value: str) -> Iterator[tuple[str, int, int]]:
    i = 0
    while True:
        i = _skip(value, i, _SPACE + ",")
        if i >= len(value):
            return
        end = _token_end(value, i)
        if end == i:
            raise ValueError("not a challenge list")
        name = value[i:end]
        after = _skip(value, end, _SPACE)
        if after < len(value) and value[after] == "=":
            rest = _skip(value, after + 1, _SPACE + "=")
            if rest >= len(value) or value[rest] == ",":
                i = rest  # token68 padding (`abc==`), not a parameter
                continue
            if value[rest] == '"':
                stop = _quoted_end(value, rest)
                if stop < 0:
                    raise ValueError("an unterminated quoted-string")
            else:
                stop = rest
                while stop < len(value) and value[stop] not in _SPACE + ",":
                    stop += 1
            yield name.lower(), rest, stop
            i = stop
            continue
        # an auth-scheme (a new challenge) or a token68 (which may go on with `/`): move past it
        i = end
        while i < len(value) and value[i] not in _SPACE + ",":
            if value[i] not in _TOKEN68:
                raise ValueError("not a challenge list")
            i += 1


def resource_metadata(value: str) -> str | None:
    """The `resource_metadata` parameter of a `WWW-Authenticate` value (RFC 9728 §5.1), unquoted;
    None when absent or when the value is not a challenge list."""
    try:
        for name, start, end in _scan(value):
            if name == RESOURCE_METADATA_PARAM:
                found = value[start:end]
                if found.startswith('"'):
                    inner = found[1:-1]
                    out, i = [], 0
                    while i < len(inner):
                        if inner[i] == "\\" and i + 1 < len(inner):
                            i += 1
                        out.append(inner[i])
                        i += 1
                    return "".join(out)
                return found
    except ValueError:
        return None
    return None


def with_resource_metadata(value: str, url: str) -> str | None:
    """`value` with every `resource_metadata` parameter's value replaced by `url` (quoted) and
    everything else as it was; `value` itself when it has none; None when it is not a challenge
    list (the caller must then not pass it on: it may name a private address)."""
    try:
        found = [(start, end) for name, start, end in _scan(value) if name == RESOURCE_METADATA_PARAM]
    except ValueError:
        return None
    out, last = [], 0
    for start, end in found:
        out += [value[last:start], quoted(url)]
        last = end
    out.append(value[last:])
    return "".join(out)
