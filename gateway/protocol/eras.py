"""Era bridging: the two MCP generations are the handshake era (2024-11-05 … 2025-11-25: `initialize`,
sessions) and the stateless 2026-07-28 era (a `_meta` envelope on every request). Era detection,
envelopes, local answers; sans-IO: bytes in, bytes out, no asyncio or aiohttp.

Owns what differs between the eras (`initialize` and sessions against the
per-request `_meta` envelope, `server/discover`, `resultType`): the probe
messages the gateway sends to servers, the `_meta` surgery that lets a client of
one era talk to a server of the other, and the answers the gateway gives
locally on a server's behalf.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from gateway import __version__
from gateway.protocol.errors import InvalidRequestParams
from gateway.protocol.headers import VERSION_HEADER
from gateway.protocol.mcp import Era, UpstreamInfo
from gateway.protocol.wire import Codec, Headers, JsonDecoder, header_value

MODERN_VERSION: Final = "2026-07-28"
MODERN_VERSIONS: Final = (MODERN_VERSION,)
HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE: Final = HANDSHAKE_VERSIONS[-1]

META: Final = "_meta"
RESERVED_PREFIX: Final = "io.modelcontextprotocol/"
PROTOCOL_VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"
LOG_LEVEL_KEY: Final = "io.modelcontextprotocol/logLevel"
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""RFC 5424 severities as MCP names them, least severe first."""
_LOG_LEVEL_BYTES: Final = LOG_LEVEL_KEY.encode()
_VERSION_KEY_BYTES: Final = PROTOCOL_VERSION_KEY.encode()
_RESERVED_BYTES: Final = RESERVED_PREFIX.encode()

EMPTY_OBJECT: Final = Raw(b"{}")
GATEWAY_CAPABILITIES: Final = Raw(b'{"elicitation":{"form":{},"url":{}},"sampling":{},"roots":{}}')
"""What the gateway declares in its own `initialize` to a handshake-era server: the requests it can
carry to a client during a call (gateway.channels.mrtr). Each such request is checked against what the
calling client declared; one it did not is refused with -32021 (`MissingClientCapability`)."""
MODERN_ONLY_RESULT_KEYS: Final = frozenset({"resultType", "ttlMs", "cacheScope"})
HANDSHAKE_ONLY_CAPABILITIES: Final = frozenset({"tasks"})
"""Server capabilities of 2025-11-25 that 2026-07-28 does not define (tasks became an extension)."""

CACHEABLE_METHODS: Final = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read", "server/discover"}
)
"""Methods whose 2026-07-28 results must say how long they may be cached (`ttlMs`, `cacheScope`)."""

NAMED_METHODS: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose target travels in the `Mcp-Name` header (2026-07-28 HTTP)."""


class _DiscoverResult(Struct):
    supportedVersions: list[str]
    capabilities: Raw = EMPTY_OBJECT
    instructions: str | None = None
    meta: dict[str, Raw] = msgspec.field(default_factory=dict, name="_meta")


class _InitializeResult(Struct):
    protocolVersion: str
    capabilities: Raw = EMPTY_OBJECT
    serverInfo: Raw = EMPTY_OBJECT
    instructions: str | None = None


class _LogLevel(Struct):
    level: str = ""


class _InitializeParams(Struct):
    protocolVersion: str = LATEST_HANDSHAKE
    capabilities: Raw = EMPTY_OBJECT


class _Implementation(Struct):
    name: str
    version: str


class _Envelope(Struct):
    """The per-request `_meta` entries a 2026-07-28 request must carry."""

    protocol_version: str = msgspec.field(name=PROTOCOL_VERSION_KEY)
    capabilities: Raw = msgspec.field(name=CLIENT_CAPABILITIES_KEY)
    client_info: Raw = msgspec.field(name=CLIENT_INFO_KEY)


class Bridge:
    """Era translation for one gateway; holds its codecs and its own identity."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.client_info = Raw(codec.encode(_Implementation("mcp-tunnel-gateway", __version__)))
        self._discover = JsonDecoder(_DiscoverResult)
        self._initialize = JsonDecoder(_InitializeResult)
        self._init_params = JsonDecoder(_InitializeParams)
        self._log_level = JsonDecoder(_LogLevel)

    # ------------------------------------------------------------------ probing servers

    def discover_params(self) -> Raw:
        """`server/discover` params, enveloped as the gateway itself."""
        return self.modern_params(UNSET, EMPTY_OBJECT, self.client_info)

    def initialize_params(self) -> Raw:
        return Raw(
            self.codec.encode(
                {
                    "protocolVersion": LATEST_HANDSHAKE,
                    "capabilities": GATEWAY_CAPABILITIES,
                    "clientInfo": self.client_info,
                }
            )
        )

    def info_from_discover(self, result: Raw | bytes) -> UpstreamInfo | None:
        """The server's info when the discover result shows a 2026-07-28 server, else None."""
        try:
            found = self._discover.decode(result)
        except msgspec.MsgspecError:
            return None
        mutual = [v for v in MODERN_VERSIONS if v in found.supportedVersions]
        if not mutual:
            return None
        server_info = found.meta.get(SERVER_INFO_KEY, EMPTY_OBJECT)
        return UpstreamInfo(Era.MODERN, mutual[-1], _copy(found.capabilities), _copy(server_info), found.instructions)

    def info_from_initialize(self, result: Raw | bytes) -> UpstreamInfo:
        """The server's info from an `initialize` result (raises msgspec errors when malformed)."""
        found = self._initialize.decode(result)
        return UpstreamInfo(
            Era.LEGACY,
            found.protocolVersion,
            _copy(found.capabilities),
            _copy(found.serverInfo),
            found.instructions,
        )

    # ------------------------------------------------------------------ classifying clients

    def client_era(self, params: Raw | UnsetType, headers: Headers) -> Era:
        """The era a client request speaks: the header says so, or the `_meta` envelope does."""
        version = header_value(headers, VERSION_HEADER)
        if version in MODERN_VERSIONS:
            return Era.MODERN
        if version in HANDSHAKE_VERSIONS:
            return Era.LEGACY  # the header is authoritative: no need to scan the body
        if params is UNSET or not _contains(params, _VERSION_KEY_BYTES):
            return Era.LEGACY
        meta = self._meta_of(params)
        return Era.MODERN if meta is not None and PROTOCOL_VERSION_KEY in meta else Era.LEGACY

    def requested_version(self, params: Raw | UnsetType) -> str:
        """The version a legacy `initialize` asks for, answered with it or our latest."""
        if params is UNSET:
            return LATEST_HANDSHAKE
        try:
            asked = self._init_params.decode(params).protocolVersion
        except msgspec.MsgspecError:
            return LATEST_HANDSHAKE
        return asked if asked in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE

    def client_capabilities(self, params: Raw | UnsetType) -> Raw:
        """`capabilities` of a legacy `initialize`, kept to envelope its later requests."""
        if params is UNSET:
            return EMPTY_OBJECT
        try:
            return _copy(self._init_params.decode(params).capabilities)
        except msgspec.MsgspecError:
            return EMPTY_OBJECT

    def log_level(self, params: Raw | UnsetType) -> int | None:
        """The least severity (index in LOG_LEVELS) of log messages a 2026-07-28 request asked for in
        its `_meta` (`io.modelcontextprotocol/logLevel`); None when it asked for none."""
        if params is UNSET or not _contains(params, _LOG_LEVEL_BYTES):
            return None
        meta = self._meta_of(params)
        raw = meta.get(LOG_LEVEL_KEY) if meta is not None else None
        if raw is None:
            return None
        try:
            level = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return None
        return LOG_LEVELS.index(level) if level in LOG_LEVELS else None

    def log_wanted(self, notification: bytes, least: int | None) -> bool:
        """Whether a 2026-07-28 client that asked for `least` (see `log_level`) may be sent this
        server message: anything but `notifications/message`, which only at or above its level."""
        if b"notifications/message" not in notification:
            return True
        try:
            message = self.codec.message(notification)
        except msgspec.MsgspecError:
            return True
        if message.method != "notifications/message":
            return True
        if least is None or message.params is UNSET:
            return False
        try:
            level = self._log_level.decode(message.params).level
        except msgspec.MsgspecError:
            return False
        return level in LOG_LEVELS and LOG_LEVELS.index(level) >= least

    def envelope_capabilities(self, params: Raw | UnsetType) -> Raw:
        """The capabilities a 2026-07-28 request declares in its `_meta` envelope (`{}` when none)."""
        if params is UNSET or CLIENT_CAPABILITIES_KEY.encode() not in bytes(params):
            return EMPTY_OBJECT
        meta = self._meta_of(params)
        found = meta.get(CLIENT_CAPABILITIES_KEY) if meta is not None else None
        return EMPTY_OBJECT if found is None else _copy(found)

    # ------------------------------------------------------------------ translating requests

    def legacy_params(self, params: Raw | UnsetType) -> Raw | UnsetType:
        """Strip the 2026-07-28 envelope for a handshake-era server (params that are not an
        object, or whose `_meta` is not one, carry no envelope and pass as they are)."""
        if params is UNSET or not _contains(params, _RESERVED_BYTES):
            return params
        members = self._object(params)
        meta = None if members is None else self._object(members.get(META))
        if members is None or meta is None:
            return params
        kept = {k: v for k, v in meta.items() if not k.startswith(RESERVED_PREFIX)}
        if kept:
            members[META] = Raw(self.codec.encode(kept))
        else:
            del members[META]
        return Raw(self.codec.encode(members))

    def modern_params(self, params: Raw | UnsetType, capabilities: Raw, client_info: Raw) -> Raw:
        """Add the 2026-07-28 envelope for a stateless server on behalf of a legacy client.

        Absent or null `params` (and `_meta`) are taken as empty objects; any other
        non-object raises InvalidRequestParams (-32602): there is nowhere to put the envelope."""
        members = {} if params is UNSET else self._object(params, null={})
        if members is None:
            raise InvalidRequestParams("params must be a JSON object")
        meta = self._object(members.get(META), null={}) if META in members else {}
        if meta is None:
            raise InvalidRequestParams("params._meta must be a JSON object")
        envelope = self.codec.members(self.codec.encode(_Envelope(MODERN_VERSION, capabilities, client_info)))
        meta.update(envelope)
        members[META] = Raw(self.codec.encode(meta))
        return Raw(self.codec.encode(members))

    def target_name(self, method: str, params: Raw | UnsetType) -> str | None:
        """The tool/prompt name or resource URI a request addresses, when it has one."""
        key = NAMED_METHODS.get(method)
        if key is None or params is UNSET:
            return None
        return self.codec.string_member(params, key)

    # ------------------------------------------------------------------ translating results

    def modern_result(self, method: str, result: Raw, server_info: Raw) -> Raw:
        """A handshake-era result made a 2026-07-28 one: `resultType`, cache directives
        (immediately stale and private: a handshake-era server gave no freshness hint),
        and the serverInfo stamp. A result that is not an object passes as it is."""
        members = self._object(result)
        if members is None:
            return result
        members.setdefault("resultType", Raw(b'"complete"'))
        if method in CACHEABLE_METHODS:
            members.setdefault("ttlMs", Raw(b"0"))
            members.setdefault("cacheScope", Raw(b'"private"'))
        meta = self._object(members.get(META)) or {}
        meta.setdefault(SERVER_INFO_KEY, server_info)
        members[META] = Raw(self.codec.encode(meta))
        return Raw(self.codec.encode(members))

    def legacy_result(self, result: Raw) -> Raw:
        """A 2026-07-28 result made a handshake-era one: drop the keys older clients reject."""
        members = self._object(result)
        if members is None or (not MODERN_ONLY_RESULT_KEYS.intersection(members) and META not in members):
            return result
        for key in MODERN_ONLY_RESULT_KEYS:
            members.pop(key, None)
        meta = self._object(members.get(META))
        if meta is not None:
            meta.pop(SERVER_INFO_KEY, None)
            if meta:
                members[META] = Raw(self.codec.encode(meta))
            else:
                del members[META]
        return Raw(self.codec.encode(members))

    # ------------------------------------------------------------------ local answers

    def initialize_result(self, info: UpstreamInfo, version: str) -> Raw:
        """Answer a legacy client's `initialize` from what the server told the gateway."""
        body: dict[str, object] = {
            "protocolVersion": version,
            "capabilities": info.capabilities,
            "serverInfo": info.server_info,
        }
        if info.instructions:
            body["instructions"] = info.instructions
        return Raw(self.codec.encode(body))

    def discover_result(self, info: UpstreamInfo) -> Raw:
        """Answer a 2026-07-28 client's `server/discover` for a handshake-era server."""
        body: dict[str, object] = {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self.modern_capabilities(info.capabilities),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            META: {SERVER_INFO_KEY: info.server_info},
        }
        if info.instructions:
            body["instructions"] = info.instructions
        return Raw(self.codec.encode(body))

    def modern_capabilities(self, capabilities: Raw) -> Raw:
        """A handshake-era server's capabilities as a 2026-07-28 client may see them (no `tasks`)."""
        if not any(f'"{key}"'.encode() in bytes(capabilities) for key in HANDSHAKE_ONLY_CAPABILITIES):
            return capabilities
        try:
            members = self.codec.members(capabilities)
        except msgspec.MsgspecError:
            return capabilities
        return Raw(self.codec.encode({k: v for k, v in members.items() if k not in HANDSHAKE_ONLY_CAPABILITIES}))

    def _meta_of(self, params: Raw) -> dict[str, Raw] | None:
        members = self._object(params)
        return None if members is None else self._object(members.get(META))

    def _object(self, raw: Raw | None, *, null: dict[str, Raw] | None = None) -> dict[str, Raw] | None:
        """The members of a JSON object; `null` for JSON null, None for anything else."""
        if raw is None:
            return None
        if memoryview(raw).nbytes == 4 and bytes(raw) == b"null":
            return null
        try:
            return self.codec.members(raw)
        except msgspec.MsgspecError:
            return None


def _copy(raw: Raw) -> Raw:
    """A Raw that owns its bytes (a decoded Raw is a view of the whole buffer)."""
    return Raw(bytes(raw))


def _contains(raw: Raw, needle: bytes) -> bool:
    """A cheap pre-check before any parsing: does the raw JSON mention `needle` at all?"""
    return needle in memoryview(raw).tobytes()
