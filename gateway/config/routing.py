"""routing.yaml: frozen msgspec Structs (range checks as `Meta` constraints), `load()`, cross-reference checks.
Builds no runtime objects and resolves no secrets; sans-IO apart from reading the one file it is given.

Owns the shape of the gateway's configuration and every load-time error
(naming the file, the key and what was expected). Secrets stay references
(`env:VAR`, `file:/path`) until provisioning.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta

from gateway.config import rates, service_auth
from gateway.config.admin import AuditSpec, BudgetSpec, TenantSpec, check_admin
from gateway.config.base import (
    Frozen,
    check_egress,
    check_listen,
    check_origin_url,
    check_url,
    url_on_loopback,
)
from gateway.config.egress import Egress
from gateway.config.globs import glob_error
from gateway.config.identity import WorkloadIdentitySpec, check_workload_identity
from gateway.protocol.errors import ConfigError

CHANNEL_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""Channel names the control plane accepts: lowercase letters, digits, `-`, `_`."""

T = TypeVar("T")

SERVER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Range checks msgspec applies while converting (a failure names the key; `_in_words` says it in words).
Seconds = Annotated[float, Meta(gt=0)]
"""A positive number of seconds."""
SecondsOrZero = Annotated[float, Meta(ge=0)]
AtLeastOne = Annotated[int, Meta(ge=1)]
NonEmpty = Annotated[str, Meta(min_length=1)]
SEPARATOR: Final = r"\A\S+\Z"
r"""A namespacing separator: non-empty, no whitespace (`\Z`, unlike `$`, refuses a final newline)."""


PYTHON: Final = "{python}"
"""A `command` of exactly this runs the Python interpreter that runs the gateway (its virtualenv's),
so servers shipped as Python modules start with the packages the gateway was installed with."""


class ProgramSpec(Frozen, frozen=True, kw_only=True):
    """A local program the gateway spawns (without a shell) and supervises."""

    command: NonEmpty
    """A program name looked up on PATH, a path, or `{python}` (the gateway's own interpreter)."""
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    inherit_env: bool = True

    def executable(self, interpreter: str) -> str:
        """The program to run, with `{python}` replaced by `interpreter` (the caller's sys.executable)."""
        return interpreter if self.command == PYTHON else self.command


class StdioSpec(ProgramSpec, frozen=True, kw_only=True):
    """A local program spoken to over its stdin/stdout."""


class HttpSpec(Egress, frozen=True, kw_only=True):
    """A Streamable HTTP MCP endpoint on the private network."""

    url: str
    headers: dict[str, str] = {}
    """Sent on every request; values may be `env:VAR` or `file:/path` references."""
    spawn: ProgramSpec | None = None
    """A local process that serves `url` (on loopback): started with the gateway, restarted with
    backoff when it exits, stopped when the gateway stops or the server leaves routing.yaml."""
    service_credential: service_auth.ServiceCredentialSpec | None = None
    """A token the gateway obtains replaces the user's `Authorization` (gateway.config.service_auth)."""


class ServerSpec(Frozen, frozen=True, kw_only=True):
    """One upstream MCP server: exactly one of `stdio` or `http`."""

    stdio: StdioSpec | None = None
    http: HttpSpec | None = None
    startup_timeout_s: Seconds = 30.0
    request_timeout_s: Seconds | None = None
    """Upper bound for one call to this server (waiting for a restart included): past it the call
    is cancelled and answered with the contract's `timeout` failure. A command's own earlier
    deadline still wins (it is abandoned without an answer). None: unbounded."""
    restart_backoff_max_s: float = 30.0
    required: bool = True
    """`/readyz` reports not ready while this server is down."""
    processes: AtLeastOne = 1
    """stdio: a pool of this many processes; each call goes to the least loaded one."""
    session: Literal["shared", "per-client"] = "shared"
    """stdio: `per-client` runs one process per client session (isolation for stateful servers)."""
    max_sessions: AtLeastOne = 32
    """`session: per-client`: most processes at once; the one idle longest is stopped to make room."""
    idle_timeout_s: Seconds = 300.0
    """`session: per-client`: a client's process is stopped after this long without a call."""
    max_concurrency: AtLeastOne | None = None
    """Calls running on this server at once (per process pool or HTTP endpoint); more wait their turn."""

    @property
    def transport(self) -> str:
        return "stdio" if self.stdio is not None else "http"


class ControlPlaneSpec(Egress, frozen=True, kw_only=True):
    """The tunnel control plane to poll (OpenAI's service or a `gateway relay`)."""

    url: str
    tunnel_id: NonEmpty
    api_key: str | None = None
    """`env:VAR`, `file:/path` (re-read when it changes), `exec:COMMAND` (a short-lived token
    it prints, cached until it expires) or a literal; `env:TUNNEL_API_KEY` when neither this nor
    `workload_identity` is given (and the OPENAI_IDENTITY_* variables are not set)."""
    workload_identity: WorkloadIdentitySpec | None = None


class EmbeddedRelaySpec(Frozen, frozen=True, kw_only=True):
    """The relay started in-process when `control_plane` is omitted."""

    listen: str = "127.0.0.1:8780"
    tunnel_id: str = "tunnel_local"
    client_token: str | None = None
    """Bearer token MCP clients must present; None leaves the loopback endpoint open."""
    public_url: str | None = None
    """The relay's address as clients reach it when something public forwards to it (scheme and
    host): OAuth discovery names it; absent, the loopback address the client called."""


class GatewaySpec(Frozen, frozen=True, kw_only=True):
    """The poll channel and the dispatcher."""

    max_inflight: AtLeastOne = 64
    poll_timeout_ms: AtLeastOne = 25_000
    polls_in_flight: Annotated[int, Meta(ge=1, le=16)] = 1
    """Polls outstanding at once. One carries at most 25 commands per round trip: over a slow
    link raise it (and `max_inflight`) so the round trip does not cap throughput."""
    drain_timeout_s: float = 20.0
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    """Largest upstream message accepted (a stdio line, an HTTP body)."""


class TelemetrySpec(Frozen, frozen=True, kw_only=True):
    """OpenTelemetry export (OTLP); every key falls back to the standard OTEL_* variables."""

    enabled: bool | None = None
    """None: on when an OTLP endpoint is configured (here or OTEL_EXPORTER_OTLP_ENDPOINT)."""
    endpoint: str | None = None
    """OTLP base URL (`/v1/traces`, `/v1/metrics` are appended for http/protobuf)."""
    protocol: Literal["http/protobuf", "grpc"] | None = None
    """OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf; grpc needs the gRPC exporter installed."""
    headers: dict[str, str] = {}
    """Sent with every export; values may be `env:VAR` or `file:/path` references."""
    service_name: str | None = None
    resource_attributes: dict[str, str] = {}
    sampling_ratio: Annotated[float, Meta(ge=0, le=1)] | None = None
    """Parent-based trace-id ratio sampling; OTEL_TRACES_SAMPLER when absent."""
    capture_arguments: bool = False
    """Record tool arguments and results on spans (redacted, truncated)."""


class OpsSpec(Frozen, frozen=True, kw_only=True):
    """The local ops listener: `/healthz`, `/readyz`, `/metrics`, and the operator console."""

    listen: str
    ready_poll_age_s: Seconds | None = None
    """`/readyz` needs a successful poll this recent; default: the poll timeout plus 15 s."""
    token: str | None = None
    """A secret reference (env:VAR, file:/path, or a literal) the console and its JSON API require
    as `Authorization: Bearer`. Without one the console is served only on a loopback `listen`."""


class LoggingSpec(Frozen, frozen=True, kw_only=True):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


LIMIT_SCOPES: Final = ("global", "channel", "server", "tool", "route", "tenant")


class LimitSpec(Frozen, frozen=True, kw_only=True):
    """One limit: a rate and/or a concurrency cap on a scope."""

    scope: str
    """`global`, `channel`, `server`, `tool`, `route` (a routing rule's limit_key) or `tenant`."""
    match: str | None = None
    """Only this channel/server/tool/route key; absent: every value gets its own budget."""
    rate: str | None = None
    """`N/s`, `N/m` or `N/h`."""
    burst: AtLeastOne | None = None
    """Calls allowed at once before the rate applies (default: one second's worth, at least 1).
    A burst of 1 admits a little under the rate when requests arrive in bursts: use 2 or more."""
    concurrency: AtLeastOne | None = None
    policy: str | None = None
    """`wait` or `reject`; default from `limits.policy`."""
    name: str | None = None
    """Label in metrics; default `scope` or `scope:match`."""

    def rate_per_s(self) -> float | None:
        return None if self.rate is None else rates.per_second(self.rate)

    @property
    def label(self) -> str:
        return self.name or (self.scope if self.match is None else f"{self.scope}:{self.match}")


class LimitsSpec(Frozen, frozen=True, kw_only=True):
    """Rate limits and concurrency caps, and what happens when one is hit."""

    policy: str = "reject"
    """`reject` (429 at once) or `wait` (queue up to `max_wait_s`, never past the command's deadline)."""
    max_wait_s: Seconds = 10.0
    max_waiting: Annotated[int, Meta(ge=0)] = 16
    """Requests that may wait on one budget at once; more are rejected (no unbounded queues)."""
    tenant_header: str | None = None
    """Request header naming the tenant; absent or missing: the client's Mcp-Session-Id."""
    rules: list[LimitSpec] = []


class ServerInfoSpec(Frozen, frozen=True, kw_only=True):
    """The identity an aggregated channel reports as its `serverInfo`."""

    name: str
    version: str | None = None
    """Default: the gateway's version."""
    title: str | None = None


class ChannelSpec(Frozen, frozen=True, kw_only=True):
    """One channel in its long form, `channels.NAME: {servers: [...], ...}` (`[a, b]` is short for it)."""

    servers: list[str]
    server_info: ServerInfoSpec | None = None
    """What `initialize` / `server/discover` report; default: the channel's name (one server: its own)."""
    instructions: str | None = None
    """Default: the servers' instructions, each under its server's name."""
    prefix: Literal["always", "conditional"] | None = None
    """Namespacing of tool and prompt names: `always` (the default with several servers) or
    `conditional` (only names that collide); a one-server channel is never prefixed unless set."""
    separator: Annotated[str, Meta(pattern=SEPARATOR)] = "__"
    rename: dict[str, dict[str, str]] = {}
    """Per server: original tool/prompt name -> the exact name clients see (never prefixed)."""
    page_size: AtLeastOne | None = None
    """Items per page of a merged list (None: the whole list in one page)."""
    cache_ttl_s: SecondsOrZero = 60.0
    """How long a server's list is reused before it is fetched again (list_changed clears it sooner)."""
    list_timeout_s: Seconds = 10.0
    """How long a merged list waits for one server before leaving it out."""
    listen_timeout_s: Seconds = 50.0
    """A client's `subscriptions/listen` stream ends (gracefully) after this long; the client listens
    again. Keep it under the control plane's response timeout."""
    allow_tools: list[str] | None = None
    """Globs on tool names as clients see them: other tools are hidden and refused like a `deny` route."""


class RouteMatch(Frozen, frozen=True, kw_only=True):
    """What a routing rule matches; every given field must match (absent: anything)."""

    channel: str | list[str] | None = None
    method: str | None = None
    """A glob on the JSON-RPC method (`tools/*`)."""
    name: str | None = None
    """A glob on the tool or prompt name, or the resource URI, as the client sends it."""
    headers: dict[str, str] = {}
    """Request header (case-insensitive) -> a glob its value must match."""


class RouteSpec(Frozen, frozen=True, kw_only=True):
    """One routing rule: a match and what to do (first matching rule wins)."""

    match: RouteMatch = RouteMatch()
    to: str | None = None
    """Send the request to this server."""
    deny: str | None = None
    """Refuse with this message (denied tools, prompts and resources are hidden from lists too)."""
    limit_key: NonEmpty | None = None
    """Tag the request for `limits` rules of scope `route`."""


class SessionsSpec(Frozen, frozen=True, kw_only=True):
    """Client sessions the gateway issues (sealed tokens carrying the upstream sessions)."""

    key: str | None = None
    """`env:VAR`, `file:/path` or a literal secret (16+ characters); absent: a random key per process,
    so sessions do not survive a restart or reach another replica."""
    previous_keys: list[str] = []
    """Still accepted for opening sessions (key rotation)."""
    ttl_s: Seconds = 86400.0
    """A session older than this is expired (the client gets 404 and initializes again)."""


class RoutingConfig(Frozen, frozen=True, kw_only=True):
    control_plane: ControlPlaneSpec | None = None
    relay: EmbeddedRelaySpec = EmbeddedRelaySpec()
    gateway: GatewaySpec = GatewaySpec()
    limits: LimitsSpec = LimitsSpec()
    servers: dict[str, ServerSpec]
    channels: Annotated[dict[str, list[str]], Meta(min_length=1)]
    channel_specs: dict[str, ChannelSpec] = {}
    """Derived from `channels` at load: every channel in its long form."""
    routes: list[RouteSpec] = []
    sessions: SessionsSpec = SessionsSpec()
    telemetry: TelemetrySpec = TelemetrySpec()
    ops: OpsSpec | None = None
    logging: LoggingSpec = LoggingSpec()
    audit: AuditSpec | None = None
    budgets: list[BudgetSpec] = []
    tenants: dict[str, TenantSpec] = {}
    """Per tenant (a `limits.tenant_header` value; `*`: any other): tools it may use."""


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def parse(data: bytes, file: str) -> RoutingConfig:
    """Decode and check a routing document; raise ConfigError naming file and key."""
    try:
        document = msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(file, "(document)", f"valid YAML ({exc})") from None
    if isinstance(document, dict):
        # Convert named entries one by one so an error names the entry, not `[...]`.
        for section, kind in (("servers", ServerSpec), ("tenants", TenantSpec)):
            entries = document.get(section)
            if isinstance(entries, dict):
                for name, entry in entries.items():
                    _convert(entry, kind, file, f"{section}.{name}")
        document = _channel_specs(document, file)
    config = _convert(document, RoutingConfig, file, "")
    check(config, file)
    return config


def _channel_specs(document: dict[str, object], file: str) -> dict[str, object]:
    """Channels in either form become `channels` (server lists) plus `channel_specs` (long forms)."""
    if "channel_specs" in document:
        raise ConfigError(file, "channel_specs", "no such key (channel options go under `channels.NAME`)")
    entries = document.get("channels")
    if not isinstance(entries, dict):
        return document
    lists: dict[object, object] = {}
    specs: dict[object, ChannelSpec] = {}
    for name, entry in entries.items():
        if isinstance(entry, dict):
            spec = _convert(entry, ChannelSpec, file, f"channels.{name}")
            specs[name], lists[name] = spec, list(spec.servers)
        else:
            lists[name] = _convert(entry, list[str], file, f"channels.{name}")
    return {**document, "channels": lists, "channel_specs": specs}


def _convert(value: object, kind: type[T], file: str, prefix: str) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        assert match is not None
        path = (match["path"] or "").lstrip(".")
        key = ".".join(part for part in (prefix, path) if part) or "(top level)"
        message = _in_words(match["msg"], key)
        expected = message[:1].lower() + message[1:] if message.startswith("Expected") else message
        raise ConfigError(file, key, expected.removeprefix("expected ")) from None


_BOUND: Final = re.compile(r"Expected `(?P<kind>int|float)` (?P<op>>=|>|<=|<) (?P<bound>-?[0-9]+(?:\.[0-9]+)?)")
_OP_WORDS: Final = {">=": "of at least", ">": "greater than", "<=": "of at most", "<": "less than"}
_NON_EMPTY: Final = re.compile(r"Expected `(?P<kind>str|array|object)` of length >= 1")
_NON_EMPTY_WORDS: Final = {"str": "a non-empty string", "array": "at least one item", "object": "at least one entry"}
_PATTERN_WORDS: Final = {f"Expected `str` matching regex {SEPARATOR!r}": "a non-empty separator without spaces"}


def _in_words(message: str, key: str) -> str:
    """msgspec's sentence for a broken `Meta` constraint in the words of the other checks:
    "Expected `int` >= 1" -> "an integer of at least 1", "Expected `float` > 0.0" on a key
    ending in `_s` -> "a positive number of seconds". Any other sentence comes back unchanged."""
    if (words := _PATTERN_WORDS.get(message)) is not None:
        return words
    if (empty := _NON_EMPTY.fullmatch(message)) is not None:
        return _NON_EMPTY_WORDS[empty["kind"]]
    found = _BOUND.fullmatch(message)
    if found is None:
        return message
    noun = "integer" if found["kind"] == "int" else "number"
    bound = float(found["bound"])
    if bound == 0 and found["op"] in (">", ">="):
        phrase = f"a {'positive' if found['op'] == '>' else 'non-negative'} {noun}"
    else:
        shown = int(bound) if bound.is_integer() else bound
        phrase = f"{'an' if noun == 'integer' else 'a'} {noun} {_OP_WORDS[found['op']]} {shown}"
    return f"{phrase} of seconds" if noun == "number" and key.endswith("_s") else phrase


def load(path: str | Path) -> RoutingConfig:
    """Read and check routing.yaml."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(file, "(file)", f"a readable file ({exc.strerror})") from None
    return parse(data, file)


def check(config: RoutingConfig, file: str) -> None:
    """Cross-reference and value checks msgspec's types and `Meta` constraints cannot express."""
    for name, server in config.servers.items():
        key = f"servers.{name}"
        if not SERVER_NAME.fullmatch(name):
            raise ConfigError(file, key, "a server name of letters, digits, '.', '-' or '_'")
        if (server.stdio is None) == (server.http is None):
            raise ConfigError(file, key, "exactly one of `stdio` or `http`")
        if server.http is not None:
            check_url(server.http.url, file, f"{key}.http.url")
            check_egress(server.http, file, f"{key}.http")
            if server.http.spawn is not None and not url_on_loopback(server.http.url):
                raise ConfigError(file, f"{key}.http.url", "a loopback URL (127.0.0.1, [::1], localhost) with `spawn`")
            credential = server.http.service_credential
            if credential is not None:
                grant_key = service_auth.check(credential, file, f"{key}.http.service_credential")
                check_url(credential.grant.token_url, file, f"{grant_key}.token_url")
    for channel, members in config.channels.items():
        key = f"channels.{channel}"
        if not CHANNEL_NAME.fullmatch(channel):
            raise ConfigError(file, key, "a channel name of lowercase letters, digits, '-' or '_'")
        if not members:
            raise ConfigError(file, key, "at least one server name")
        if len(set(members)) != len(members):
            raise ConfigError(file, key, "each server named once")
        for member in members:
            if member not in config.servers:
                known = ", ".join(sorted(config.servers)) or "none"
                raise ConfigError(file, key, f"a server defined under `servers` (got {member!r}; known: {known})")
        if len(members) > 1:
            _check_shared_lists(config, members, file, key)
    check_multiplexing(config, file)
    if config.control_plane is not None:
        check_url(config.control_plane.url, file, "control_plane.url")
        check_egress(config.control_plane, file, "control_plane")
        if config.control_plane.workload_identity is not None:
            if config.control_plane.api_key is not None:
                raise ConfigError(file, "control_plane", "`api_key` or `workload_identity`, not both")
            check_workload_identity(config.control_plane.workload_identity, file)
    check_listen(config.relay.listen, file, "relay.listen")
    if config.relay.public_url is not None:
        check_origin_url(config.relay.public_url, file, "relay.public_url")
    _check_limits(config.limits, file)
    _check_observability(config, file)
    allow = {name: spec.allow_tools for name, spec in config.channel_specs.items()}
    channels = list(config.channels)
    check_admin(
        config.audit,
        config.budgets,
        config.tenants,
        allow,
        tenant_header=config.limits.tenant_header,
        channels=channels,
        file=file,
    )
    for i, budget in enumerate(config.budgets):
        if budget.webhook is not None:
            check_url(budget.webhook.url, file, f"budgets[{i}].webhook.url")
            check_egress(budget.webhook, file, f"budgets[{i}].webhook")


def _check_shared_lists(config: RoutingConfig, members: list[str], file: str, key: str) -> None:
    """An aggregated channel fetches its servers' lists once for every caller, with no user's token;
    a `token_exchange` server answers only a user (its lists could differ per user), so it would be
    missing from the merged lists and its tools could not be called. Refused at load instead."""
    for member in members:
        http = config.servers[member].http
        if http is not None and http.service_credential is not None and http.service_credential.token_exchange:
            raise ConfigError(
                file,
                key,
                f"`{member}` in a channel of its own: it exchanges each user's token (`token_exchange`), and"
                " the lists of a channel with several servers are fetched once for every caller, without one",
            )


def _check_observability(config: RoutingConfig, file: str) -> None:
    telemetry = config.telemetry
    if telemetry.endpoint is not None:
        check_url(telemetry.endpoint, file, "telemetry.endpoint")
    if config.ops is not None:
        check_listen(config.ops.listen, file, "ops.listen")


def _check_limits(limits: LimitsSpec, file: str) -> None:
    policies = ("wait", "reject")
    if limits.policy not in policies:
        raise ConfigError(file, "limits.policy", f"`wait` or `reject` (got {limits.policy!r})")
    for i, rule in enumerate(limits.rules):
        key = f"limits.rules[{i}]"
        if rule.scope not in LIMIT_SCOPES:
            raise ConfigError(file, f"{key}.scope", f"one of {', '.join(LIMIT_SCOPES)} (got {rule.scope!r})")
        if rule.scope == "global" and rule.match is not None:
            raise ConfigError(file, f"{key}.match", "no `match` on a global limit")
        if rule.rate is None and rule.concurrency is None:
            raise ConfigError(file, key, "a `rate`, a `concurrency`, or both")
        if rule.rate is not None and rates.per_second(rule.rate) is None:
            raise ConfigError(file, f"{key}.rate", f"{rates.EXPECTED} (got {rule.rate!r})")
        if rule.burst is not None and rule.rate is None:
            raise ConfigError(file, f"{key}.burst", "a positive integer, with a `rate`")
        if rule.policy is not None and rule.policy not in policies:
            raise ConfigError(file, f"{key}.policy", f"`wait` or `reject` (got {rule.policy!r})")


def check_multiplexing(config: RoutingConfig, file: str) -> None:
    """Channel options, routing rules, process management and sessions."""
    for name, server in config.servers.items():
        key = f"servers.{name}"
        if server.stdio is None and (server.processes != 1 or server.session != "shared"):
            raise ConfigError(file, key, "`processes` and `session` only on a stdio server")
        if server.session == "per-client" and server.processes != 1:
            raise ConfigError(file, f"{key}.processes", "1 with `session: per-client` (one process per session)")
    for name, spec in config.channel_specs.items():
        key = f"channels.{name}"
        for renamed, names in spec.rename.items():
            if renamed not in spec.servers:
                members = ", ".join(spec.servers)
                raise ConfigError(file, f"{key}.rename.{renamed}", f"a server of this channel ({members})")
            exposed = list(names.values())
            if len(set(exposed)) != len(exposed) or not all(exposed):
                raise ConfigError(file, f"{key}.rename.{renamed}", "distinct, non-empty new names")
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        channels = [route.match.channel] if isinstance(route.match.channel, str) else route.match.channel or []
        for channel in channels:
            if channel not in config.channels:
                known = ", ".join(sorted(config.channels))
                expected = f"a channel defined under `channels` (got {channel!r}; known: {known})"
                raise ConfigError(file, f"{key}.match.channel", expected)
        for field, pattern in (("method", route.match.method), ("name", route.match.name)):
            problem = glob_error(pattern) if pattern is not None else None
            if problem is not None:
                raise ConfigError(file, f"{key}.match.{field}", f"a glob pattern ({problem})")
        for header, pattern in route.match.headers.items():
            problem = glob_error(pattern)
            if not header or problem is not None:
                expected = f"a header name and a glob pattern ({problem or 'empty header name'})"
                raise ConfigError(file, f"{key}.match.headers.{header}", expected)
        if route.to is None and route.deny is None and route.limit_key is None:
            raise ConfigError(file, key, "one of `to`, `deny` or `limit_key`")
        if route.to is not None and route.deny is not None:
            raise ConfigError(file, key, "`to` or `deny`, not both")
        if route.to is not None and route.to not in config.servers:
            known = ", ".join(sorted(config.servers))
            raise ConfigError(file, f"{key}.to", f"a server defined under `servers` (got {route.to!r}; known: {known})")


def channel_spec(config: RoutingConfig, name: str) -> ChannelSpec:
    """A channel in its long form (the short form `[a, b]` has every option at its default)."""
    spec = config.channel_specs.get(name)
    return spec if spec is not None else ChannelSpec(servers=list(config.channels[name]))
