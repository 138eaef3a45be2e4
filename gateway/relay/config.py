"""The relay's configuration: frozen msgspec Structs for `relay.yaml` and `load_relay_config()`.
Builds no runtime objects and resolves no secrets.

Owns the file's shape, its defaults and its error messages (file, key path, what
was expected).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.yaml
from msgspec import Meta, Struct

from gateway.config import rates
from gateway.config.base import redact_url
from gateway.config.proxy import valid_proxy_setting
from gateway.protocol.errors import ConfigError, GatewayError
from gateway.protocol.headers import AUTHORIZATION

DEFAULT_LISTEN: Final = "127.0.0.1:8780"
DEFAULT_ALLOWED_HOSTS: Final = ("127.0.0.1", "localhost", "[::1]")
MIB: Final = 1024 * 1024

TUNNEL_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Tunnel ids are opaque, but they sit in URL paths, so the relay only accepts path-safe ones."""

TunnelId = Annotated[str, Meta(pattern=TUNNEL_ID_PATTERN)]
CHANNEL_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"
HEADER_NAME_PATTERN: Final = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
"""An HTTP field name (RFC 9110 §5.1: a token)."""
SecretRef = Annotated[str, Meta(min_length=1)]
"""`env:VAR`, `file:/path` (relative paths are taken from the config file's folder) or a literal."""


class RelayConfigError(ConfigError):
    """`relay.yaml` is unreadable or invalid; the message names the file, the key and what was expected.

    `problem` is msgspec's own sentence ("Expected `int` >= 1") or one in the same style, so the
    message is `source: key: problem`, not ConfigError's `file: key: expected …`."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        GatewayError.__init__(self, f"{source}: {key}: {problem}")
        self.file, self.key, self.expected = source, key, problem
        self.source = source
        self.problem = problem


def check_jwks_proxy(value: str | None) -> None:
    """A `jwks_proxy` setting is absent, `none` or an http(s) proxy URL; ValueError naming it (its
    credentials masked) otherwise."""
    if value is not None and not valid_proxy_setting(value):
        raise ValueError(
            f"Expected `jwks_proxy` to be an http:// or https:// proxy URL or `none`, got {redact_url(value)!r}"
        )


class UserAuthSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`user_auth:` users' OAuth tokens checked at the relay, before a request crosses the tunnel.

    A request to a covered channel needs `Authorization: Bearer <JWT>` signed by one of the issuer's
    keys, from `issuer`, for the channel (its `aud` one of `audience`), unexpired, with every
    `required_scopes` scope; otherwise 401 (403 for missing scopes) with a `WWW-Authenticate` that
    points at the channel's metadata. The token still reaches the server, which decides as before."""

    issuer: Annotated[str, Meta(pattern=r"^https?://")]
    """The `iss` tokens must carry (the authorization server's issuer identifier)."""
    jwks_uri: Annotated[str, Meta(pattern=r"^https?://")]
    """The issuer's key set (RFC 7517), fetched when first needed, again after `jwks_cache_s` or for
    a `kid` it does not hold (at most every 30 s)."""
    jwks_proxy: str | None = None
    """The forward proxy `jwks_uri` is fetched through, as `identity.issuers[].jwks_proxy`: an http(s)
    proxy URL (credentials never logged); `none` for a direct connection; absent: HTTPS_PROXY/HTTP_PROXY/
    NO_PROXY from the environment. Chosen once, when the relay starts."""
    audience: list[str] = []
    """Accepted `aud` values; empty: the channel's public MCP URL (the RFC 8707 resource clients are
    told in its metadata), in the form the request used."""
    required_scopes: list[str] = []
    algorithms: list[Algorithm] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    leeway_s: Annotated[float, Meta(ge=0, le=300)] = 30.0
    """Clock difference tolerated on `exp`, `nbf` and `iat`."""
    channels: list[Annotated[str, Meta(pattern=CHANNEL_PATTERN)]] = []
    """The channels it covers; empty: every channel of the tunnel."""
    jwks_cache_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    jwks_refresh_min_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    """The key set is fetched at most this often, for an unknown `kid` or once stale: a stream of
    forged `kid`s or an unreachable issuer cannot make the relay spin (the keys it has stay in use)."""

    def __post_init__(self) -> None:
        check_jwks_proxy(self.jwks_proxy)

    def key_set(self) -> tuple[str, str | None]:
        """Which key set the relay fetches for it (`jwks_uri` through `jwks_proxy`): tunnels whose
        `user_auth` has the same one share it."""
        return self.jwks_uri, self.jwks_proxy

    def covers(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


class TunnelSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One tunnel the relay serves: who may poll it and who may call it."""

    gateway_key: SecretRef | None = None
    """The gateway's Bearer key for the tunnel API (a secret reference). Optional when an
    `identity.issuers[].subjects` entry names the tunnel: its gateways then present access
    tokens from `POST /oauth/token` instead (or as well)."""
    client_tokens: list[SecretRef] = []
    """Bearer tokens MCP clients must present; empty = the MCP endpoint is open."""
    client_rate: str | None = None
    """Requests each client token may make (`N/s`, `N/m`, `N/h`); all tokenless callers share one budget."""
    client_burst: Annotated[int, Meta(ge=1)] | None = None
    """Requests allowed at once before `client_rate` applies (default: one second's worth, at least 2)."""
    client_token_header: Annotated[str, Meta(pattern=HEADER_NAME_PATTERN)] = AUTHORIZATION
    """Where clients present a `client_tokens` token. `Authorization` (`Bearer <token>`, the default):
    the relay's token takes the header, which is then not forwarded. Any other header (the token as
    its whole value): `Authorization` stays free for the user's own OAuth token, which passes through
    untouched, so a channel can require the relay's token, the user's, both or neither."""
    user_auth: UserAuthSpec | None = None
    """Check users' bearer JWTs at the relay (`gateway.relay.user_auth`); absent: the servers alone do."""
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.client_rate is not None and rates.per_second(self.client_rate) is None:
            raise ValueError(f"Expected {rates.EXPECTED}, got {self.client_rate!r}")
        if self.client_burst is not None and self.client_rate is None:
            raise ValueError("Expected `client_burst` to come with a `client_rate`")
        if self.user_auth is not None and self.client_tokens and self.client_token_header.lower() == "authorization":
            raise ValueError(
                "Expected `client_token_header` other than Authorization with `user_auth` (the user's token"
                " takes Authorization) - at `$.client_token_header`"
            )


class MemoryBackend(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="memory"):
    """`backend: {kind: memory}` (the default): queues live in this process; one relay, nothing shared."""


class RedisBackend(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="redis"):
    """`backend: {kind: redis, url: ...}`: queues live in Redis; any number of relay replicas
    sharing the same `url` and `key_prefix` serve the same tunnels (see docs/relay-on-redis.md)."""

    url: SecretRef = "redis://127.0.0.1:6379/0"
    """A secret reference (`env:VAR`, `file:PATH` or a literal) holding a `redis://` or `rediss://`
    URL, which may carry a password; never logged."""
    key_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "mcptunnel"
    """Namespace of every key and pub/sub channel; relays sharing it share queues."""
    max_connections: Annotated[int, Meta(ge=2, le=10000)] = 64
    """Unused, still accepted: a replica now holds two Redis connections, its scripts pipelined over
    one (relay/redis_pipe.py) and pub/sub on the other; this sized redis-py's pool before."""
    retry_s: Annotated[float, Meta(gt=0)] = 5.0
    """How long one operation retries a lost Redis connection before the caller gets a 503."""
    replica_ttl_s: Annotated[float, Meta(gt=0)] = 15.0
    """A replica silent (no heartbeat) this long counts as dead: its queued commands are purged and
    responses for its in-flight ones get 404. It heartbeats every third of this."""
    recheck_s: Annotated[float, Meta(gt=0)] = 1.0
    """Waiting polls and callers re-check Redis at least this often (a safety net under pub/sub)."""


BackendSpec = MemoryBackend | RedisBackend

Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
"""Signature algorithms a subject token (`identity`) or a user's token (`user_auth`) may use: asymmetric
only (never `none`, never HS*)."""
ALL_ALGORITHMS: Final[tuple[Algorithm, ...]] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class IssuerSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One identity provider whose JWTs `POST /oauth/token` accepts as subject tokens."""

    issuer: Annotated[str, Meta(min_length=1)]
    """The `iss` claim its tokens carry, exactly."""
    audience: Annotated[str, Meta(min_length=1)]
    """What the token's `aud` must contain (e.g. the projected token's `audience`)."""
    subjects: dict[Annotated[str, Meta(min_length=1)], Annotated[list[TunnelId], Meta(min_length=1)]]
    """Subject (`sub`) -> the tunnels its tokens may poll and answer; any other subject is refused."""
    jwks_url: str | None = None
    """Where the issuer publishes its signing keys (https://, or http:// on loopback only)."""
    jwks_file: str | None = None
    """A JWKS document on disk instead (relative paths are taken from the config file's folder)."""
    jwks_ca_file: str | None = None
    """CA bundle for `jwks_url` (e.g. the cluster CA); the system's roots otherwise."""
    jwks_token: SecretRef | None = None
    """A Bearer credential for fetching `jwks_url` (a secret reference, read again on every fetch:
    e.g. the relay's own service-account token, which Kubernetes rotates)."""
    jwks_proxy: str | None = None
    """The forward proxy `jwks_url` is fetched through: an http:// or https:// proxy URL (credentials
    as `user:password@`, never logged); `none` for a direct connection; absent: HTTPS_PROXY/HTTP_PROXY/
    NO_PROXY from the environment (`gateway.config.proxy`, as the gateway's `proxy`)."""
    id: str | None = None
    """What a request's `identity_provider_id` must equal when it sends one (default: `issuer`)."""
    algorithms: Annotated[list[Algorithm], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(ALL_ALGORITHMS)
    )
    """The `alg` values accepted from this issuer."""
    jwks_refresh_s: Annotated[float, Meta(ge=1)] = 300.0
    """How often the JWKS is fetched again on a schedule (keys the issuer rotated in are picked up)."""
    jwks_cooldown_s: Annotated[float, Meta(ge=0)] = 30.0
    """A token with an unknown `kid` fetches the JWKS again at most this often."""
    jwks_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0
    """Bound on one JWKS fetch (connect to last byte)."""

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("Expected exactly one of `jwks_url` and `jwks_file`")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            loopback = (parts.hostname or "") in _LOOPBACK_HOSTS
            if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
                raise ValueError(
                    f"Expected `jwks_url` to be an https:// URL (http:// on loopback only), got {self.jwks_url!r}"
                )
            check_jwks_proxy(self.jwks_proxy)
        elif self.jwks_ca_file is not None or self.jwks_token is not None or self.jwks_proxy is not None:
            raise ValueError("Expected `jwks_ca_file`, `jwks_token` and `jwks_proxy` only with `jwks_url`")


class IdentitySpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`identity:`: RFC 8693 token exchange at `POST /oauth/token` for workload identities."""

    issuers: Annotated[list[IssuerSpec], Meta(min_length=1)]
    signing_keys: Annotated[list[SecretRef], Meta(min_length=1)]
    """PEM private keys (secret references); the first signs access tokens, every one verifies
    them (rotation: put the new key first and keep the old one until its tokens expired).
    Replicas sharing a backend must list the same keys."""
    token_ttl_s: Annotated[int, Meta(ge=1, le=86400)] = 900
    """Lifetime of an issued access token."""
    clock_skew_s: Annotated[float, Meta(ge=0, le=300)] = 60.0
    """Tolerance on `exp`, `nbf` and `iat` of subject tokens and access tokens."""
    token_rate_per_s: Annotated[float, Meta(gt=0)] = 5.0
    """Token requests each caller address may make a second, checked before the body is read (then 429).
    A gateway exchanges once every few minutes; this stops a flood of signature checks."""
    token_burst: Annotated[int, Meta(ge=1)] = 20
    """Token requests a caller address may make at once before `token_rate_per_s` applies."""
    trusted_proxies: list[str] = []
    """IP addresses or CIDR networks of the ingress or load balancers in front of the relay: a token
    request whose TCP peer is one of them is budgeted by the right-most `X-Forwarded-For` address not
    itself trusted (`gateway.relay.callers`). Empty: by the peer, and the header is never read."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for index, spec in enumerate(self.issuers):
            if spec.issuer in seen:
                raise ValueError(f"Expected each issuer once, got {spec.issuer!r} again at issuers[{index}]")
            seen.add(spec.issuer)
        for index, entry in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(entry)
            except ValueError:
                raise ValueError(
                    "Expected an IP address or a CIDR network with no host bits set (`10.0.0.0/8`),"
                    f" got {entry!r} - at `$.trusted_proxies[{index}]`"
                ) from None


class OAuthDiscoverySpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`oauth_discovery:` how the relay serves its channels' OAuth protected resource metadata
    (RFC 9728) at `/.well-known/oauth-protected-resource/v1/mcp/{tunnel}[/{channel}]`."""

    cache_ttl_s: Annotated[float, Meta(ge=0)] = 300.0
    """How long a channel's metadata is served from memory before the gateway is asked again (0: never
    cached). A channel without metadata (404) is remembered for at most 10 s; failures are not."""
    cache_max_entries: Annotated[int, Meta(ge=1, le=100_000)] = 1024
    """Channels remembered at once; the one used longest ago goes first."""
    timeout_s: Annotated[float, Meta(gt=0)] = 15.0
    """How long a metadata request waits for the gateway's answer (then 504)."""


class RelayOpsSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`ops:` the operator console (`/`, `/ui`, `/api/status`) on the relay's listener."""

    token: SecretRef | None = None
    """Required as `Authorization: Bearer` (or once as `/ui?token=`) by the console and its API.
    Without it the console is served only when `listen` is a loopback address."""


class RelayConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole `relay.yaml`."""

    listen: str = DEFAULT_LISTEN
    """`host:port` (`[v6]:port` for IPv6); port 0 picks a free one."""
    tunnels: dict[TunnelId, TunnelSpec]
    allowed_hosts: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS))
    """Host names (no port) accepted in the MCP endpoint's `Host` header; `*` allows any."""
    allowed_origins: list[str] = []
    """Exact `Origin` values accepted besides loopback origins, which are always allowed."""
    queue_max: Annotated[int, Meta(ge=1)] = 1000
    """Queued (not yet polled) commands per tunnel."""
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * MIB
    response_timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    """How long an MCP caller waits for the terminal frame."""
    client_seen_grace_s: Annotated[float, Meta(ge=0)] = 30.0
    """A gateway counts as connected while it polls and this long after its last poll ended."""
    poll_max_wait_ms: Annotated[int, Meta(ge=1)] = 25000
    """Default and cap of a poll's `timeout_ms`."""
    read_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    """How long a connection may take to send a request's headers (counted from when it opened
    or its previous request ended, so it also closes idle keep-alive connections) and, separately,
    its body; a slower request is closed (headers) or answered 408 (body)."""
    access_log: bool = False
    """One log line per HTTP request (off by default: it costs more CPU than relaying the request)."""
    session_ttl_s: Annotated[float, Meta(gt=0)] = 3600.0
    """How long a `proc_affinity` session stays bound to the gateway instance that owns it
    after its last command."""
    backend: BackendSpec = msgspec.field(default_factory=MemoryBackend)
    """Where queues live: `{kind: memory}` (default) or `{kind: redis, url: ..., key_prefix: ...}`."""
    public_url: str | None = None
    """The relay's address as MCP clients reach it (`https://mcp.example.com`: scheme and host, no
    path), for OAuth discovery: the `resource` of served metadata and the `resource_metadata` of
    forwarded challenges. Absent: the request's `Host` while `allowed_hosts` checks it (not `*`),
    over http; with `allowed_hosts: ['*']` discovery needs it."""
    oauth_discovery: OAuthDiscoverySpec = msgspec.field(default_factory=OAuthDiscoverySpec)
    identity: IdentitySpec | None = None
    """Workload identity: the token endpoint and the access tokens the tunnel API accepts."""
    ops: RelayOpsSpec = msgspec.field(default_factory=RelayOpsSpec)

    def __post_init__(self) -> None:
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            # msgspec turns this into a ValidationError; the suffix gives it a key path.
            raise ValueError(f"{exc} - at `$.listen`") from None
        mapped: set[str] = set()
        if self.identity is not None:
            for index, issuer in enumerate(self.identity.issuers):
                for subject, tunnels in issuer.subjects.items():
                    for tunnel_id in tunnels:
                        if tunnel_id not in self.tunnels:
                            raise ValueError(
                                f"Expected a tunnel this relay serves, got {tunnel_id!r}"
                                f" - at `$.identity.issuers[{index}].subjects.{subject}`"
                            )
                        mapped.add(tunnel_id)
        for tunnel_id, spec in self.tunnels.items():
            if spec.gateway_key is None and tunnel_id not in mapped:
                raise ValueError(
                    "Expected a `gateway_key`, or an `identity` subject that may use the tunnel"
                    f" - at `$.tunnels.{tunnel_id}.gateway_key`"
                )
        if self.public_url is not None and not _origin_url(self.public_url):
            raise ValueError(  # the value is not echoed: a URL can carry a password
                "Expected an http(s) URL of a host only (no path, query, fragment or userinfo) - at `$.public_url`"
            )


def _origin_url(value: str) -> bool:
    """`scheme://host[:port]` (a trailing `/` allowed): what `public_url` must be."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` -> (host, port); IPv6 hosts are bracketed (`[::1]:8780`) and returned bare."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"Expected `host:port`, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"Expected a port from 0 to 65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        bare = host[1:-1]
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"Expected an IPv6 address inside brackets, got {host!r}") from None
        return bare, port
    if ":" in host:
        raise ValueError(f"Expected IPv6 hosts in brackets (`[::1]:{port}`), got {listen!r}")
    return host, port


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<parent>[^`]*)`)?)?$", re.DOTALL)


def _split_validation(message: str) -> tuple[str, str]:
    """msgspec's "Expected X - at `$.a.b`" -> ("$.a.b", "Expected X")."""
    match = _AT.match(message)
    if match is None:  # pragma: no cover - the pattern matches any string
        return "$", message
    path = match["path"] or "$"
    if match["parent"]:  # a dict key failed: "- at `key` in `$.tunnels`"
        path = f"{match['parent']} (a key)"
        return path, match["problem"]
    problem = match["problem"]
    inner = _AT.match(problem)
    if inner is not None and inner["path"] and not inner["parent"]:
        # a nested struct's check named its own key ("... - at `$.x[1]`"), msgspec added the struct's path
        path, problem = f"{path}{inner['path'].removeprefix('$')}", inner["problem"]
    return path, problem


def _locate_tunnel(data: bytes, path: str, problem: str) -> tuple[str, str]:
    """msgspec reports a failing tunnel as `$.tunnels[...]` (or a bad id as a key of
    `$.tunnels`); find which one it is."""
    bad_key = path == "$.tunnels (a key)"
    if "$.tunnels[...]" not in path and not bad_key:
        return path, problem
    try:
        loose = msgspec.yaml.decode(data)
    except msgspec.DecodeError:  # pragma: no cover - it decoded a moment ago
        return path, problem
    tunnels = loose.get("tunnels") if isinstance(loose, dict) else None
    if not isinstance(tunnels, dict):  # pragma: no cover - msgspec just said it is a mapping
        return path, problem
    for tunnel_id, spec in tunnels.items():
        if bad_key:
            if not isinstance(tunnel_id, str) or re.match(TUNNEL_ID_PATTERN, tunnel_id) is None:
                return f"$.tunnels.{tunnel_id}", f"tunnel id {problem[0].lower()}{problem[1:]}"
            continue
        try:
            msgspec.convert(spec, TunnelSpec)
        except msgspec.ValidationError as exc:
            inner, inner_problem = _split_validation(str(exc))
            return f"$.tunnels.{tunnel_id}{inner.removeprefix('$')}", inner_problem
    return path, problem


def _absolute_file_refs(config: RelayConfig, base: Path) -> RelayConfig:
    """Make relative `file:` secret references relative to the config file's folder."""

    def fix(ref: str) -> str:
        if ref.startswith("file:") and not Path(ref[5:]).is_absolute():
            return f"file:{base / ref[5:]}"
        return ref

    def path(value: str | None) -> str | None:
        return None if value is None or Path(value).is_absolute() else str(base / value)

    tunnels = {
        tunnel_id: msgspec.structs.replace(
            spec,
            gateway_key=None if spec.gateway_key is None else fix(spec.gateway_key),
            client_tokens=[fix(t) for t in spec.client_tokens],
        )
        for tunnel_id, spec in config.tunnels.items()
    }
    backend = config.backend
    if isinstance(backend, RedisBackend):
        backend = msgspec.structs.replace(backend, url=fix(backend.url))
    identity = config.identity
    if identity is not None:
        issuers = [
            msgspec.structs.replace(
                issuer,
                jwks_file=path(issuer.jwks_file) or issuer.jwks_file,
                jwks_ca_file=path(issuer.jwks_ca_file) or issuer.jwks_ca_file,
                jwks_token=None if issuer.jwks_token is None else fix(issuer.jwks_token),
            )
            for issuer in identity.issuers
        ]
        identity = msgspec.structs.replace(
            identity, issuers=issuers, signing_keys=[fix(k) for k in identity.signing_keys]
        )
    return msgspec.structs.replace(config, tunnels=tunnels, backend=backend, identity=identity)


def decode_relay_config(data: bytes | str, *, source: str = "<relay config>") -> RelayConfig:
    """Decode YAML text into a RelayConfig; errors name `source`, the key and what was expected."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        return msgspec.yaml.decode(raw, type=RelayConfig)
    except msgspec.ValidationError as exc:
        path, problem = _split_validation(str(exc))
        path, problem = _locate_tunnel(raw, path, problem)
        raise RelayConfigError(source, path, problem) from None
    except msgspec.DecodeError as exc:
        raise RelayConfigError(source, "$", f"not valid YAML ({exc})") from None


def load_relay_config(path: str | Path) -> RelayConfig:
    """Read and validate `relay.yaml`; raises RelayConfigError naming the file, key and expectation."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise RelayConfigError(str(file), "$", f"cannot read the file ({exc.strerror})") from None
    config = decode_relay_config(data, source=str(file))
    return _absolute_file_refs(config, file.resolve().parent)
