"""Structured logs: one JSON object or one text line per record on stderr, secrets redacted.
No line leaves unredacted; imports no opentelemetry (trace ids come from a function it is handed).

Owns the log formats, the `REQUEST_ID` context variable the dispatcher sets,
the trace and span ids on each record, and the redaction every line goes through:
known secret values registered at startup (and on each reload), `Authorization` values, bearer
tokens, JWTs, and credentials in URLs (userinfo, `token=`/`key=`-style parameters).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Final

import msgspec

from gateway.config import secrets as secret_refs
from gateway.config.references import secret_references
from gateway.config.routing import RoutingConfig
from gateway.relay.config import RelayConfig

REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("gateway_request_id", default=None)
"""The tunnel `request_id` of the command the current task serves (set by the dispatcher)."""

MASK: Final = "[REDACTED]"
MIN_SECRET_LENGTH: Final = 6
"""Shorter registered values are not masked verbatim (they would mask ordinary words)."""
OBTAINED_KEPT: Final = 64
"""Secrets obtained while running that are masked verbatim: the newest this many (each adds to every log
line's matching; 64 cost ~15 µs a line here)."""

_PATTERNS: Final = (
    # An Authorization / Proxy-Authorization value, as a header line, a dict entry or a key=value.
    (
        re.compile(r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\s\"',;}&][^\"'\r\n,;}&]*"),
        r"\1" + MASK,
    ),
    # An API key header or field.
    (re.compile(r"(?i)((?:x-)?api[-_]?key[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\"'\s,;}&#]+"), r"\1" + MASK),
    # A JWT anywhere (a subject token: a Kubernetes, Google or Azure token; a JWT-SVID).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"), MASK),
    # A bearer or basic credential anywhere.
    (re.compile(r"(?i)\b(bearer|basic)\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    # userinfo in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@\"']+@"), r"\1" + MASK + "@"),
    # credentials in a query string or fragment.
    (
        re.compile(
            r"(?i)([?&#;](?:access_token|refresh_token|id_token|token|api[-_]?key|key|secret|client_secret"
            r"|password|passwd|pwd|auth|sig|signature|code)=)[^&#\s\"']+"
        ),
        r"\1" + MASK,
    ),
)


class Redactor:
    """Masks secrets in text: registered values verbatim, plus the patterns above. Configured secrets
    are kept for good; secrets obtained while running (`learn`) only the newest `OBTAINED_KEPT`."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._obtained: dict[str, None] = {}
        self._known_re: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        """Register a secret value (and, for `Bearer x`/`Basic x`, the credential alone)."""
        fresh = _masked_forms(value) - self._known
        if fresh:
            self._known |= fresh
            self._compile()

    def add_all(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add(value)

    def learn(self, value: str) -> None:
        """Register a secret the process obtained while running (an access token, a subject token, a key it
        made): masked like a configured one until `OBTAINED_KEPT` newer ones have been learnt (tokens are
        refreshed, so the memory is bounded; JWTs and bearer values stay masked by the patterns). A value
        learnt again is the newest again: one still in use (an unchanged subject token) is never let go."""
        fresh = False
        for form in _masked_forms(value):
            if form in self._known:
                continue
            if form in self._obtained:
                del self._obtained[form]  # renewed: moved to the newest end below
            else:
                fresh = True
            self._obtained[form] = None
        if not fresh:
            return  # the same values: the compiled pattern stands
        while len(self._obtained) > OBTAINED_KEPT:
            del self._obtained[next(iter(self._obtained))]
        self._compile()

    def _compile(self) -> None:
        ordered = sorted(self._known | self._obtained.keys(), key=len, reverse=True)
        self._known_re = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def known(self, text: str) -> str:
        """Only the registered values masked: for text the gateway wrote itself from a key path and
        what it expected (`control_plane.api_key: expected …`), which the patterns would garble."""
        return self._known_re.sub(MASK, text) if self._known_re is not None else text

    def redact(self, text: str) -> str:
        text = self.known(text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def _masked_forms(value: str | None) -> set[str]:
    """What of a secret value is masked: the value, and for `Bearer x`/`Basic x` the credential alone;
    nothing shorter than `MIN_SECRET_LENGTH`."""
    if not value:
        return set()
    values = {value.strip()}
    scheme, _, credential = value.strip().partition(" ")
    if credential and scheme.lower() in ("bearer", "basic", "token"):
        values.add(credential.strip())
    return {v for v in values if len(v) >= MIN_SECRET_LENGTH}


def config_secrets(config: RoutingConfig, base: Path) -> Iterator[str]:
    """Every secret value routing.yaml names (`gateway.config.references`; references resolved now,
    unresolvable ones skipped: provisioning reports them), and the control-plane key from
    `TUNNEL_API_KEY` when the file names none (or App Service's identity header)."""
    refs = [found.ref for found in secret_references(config) if found.secret]
    cp = config.control_plane
    if cp is None or (cp.api_key is None and cp.workload_identity is None):
        refs.append("env:TUNNEL_API_KEY")
    elif cp.workload_identity is not None:
        provider = cp.workload_identity.provider
        if provider is not None and provider.azure_managed_identity is not None:
            refs.append("env:IDENTITY_HEADER")  # App Service's managed-identity secret, when set
    yield from resolve_all(refs, base)


def relay_secrets(config: RelayConfig, base: Path) -> Iterator[str]:
    """Every secret value relay.yaml names: each tunnel's gateway key and client tokens, the
    identity's JWKS fetch credentials, the console token, and each signing key (its whole PEM text and every line
    of it, so a fragment is masked too)."""
    refs = [ref for spec in config.tunnels.values() for ref in (spec.gateway_key, *spec.client_tokens) if ref]
    if config.ops.token:
        refs.append(config.ops.token)
    if config.identity is not None:
        refs += [issuer.jwks_token for issuer in config.identity.issuers if issuer.jwks_token]
    yield from resolve_all(refs, base)
    if config.identity is not None:
        for pem in resolve_all(config.identity.signing_keys, base):
            yield pem
            yield from (line.strip() for line in pem.splitlines() if not line.startswith("-----"))


def resolve_all(refs: Iterable[str], base: Path) -> Iterator[str]:
    """The values of secret references that resolve now (`exec:` ones are skipped: their short-lived
    output travels in Authorization headers, which the patterns mask)."""
    for ref in refs:
        if ref.startswith("exec:") or (ref == "env:TUNNEL_API_KEY" and not os.environ.get("TUNNEL_API_KEY")):
            continue
        try:
            yield secret_refs.resolve(ref, base=base).reveal()
        except secret_refs.SecretError:
            continue


# --------------------------------------------------------------------------- records


TraceIds = Callable[[], "tuple[str, str] | None"]


def _no_trace() -> tuple[str, str] | None:
    return None


class ContextFilter(logging.Filter):
    """Adds `trace_id`, `span_id` and `request_id` to each record and redacts its message and traceback."""

    def __init__(self, redactor: Redactor, trace_ids: TraceIds = _no_trace) -> None:
        super().__init__()
        self._redactor = redactor
        self._trace_ids = trace_ids

    def filter(self, record: logging.LogRecord) -> bool:
        ids = self._trace_ids()
        record.trace_id, record.span_id = ids if ids is not None else ("", "")
        record.request_id = REQUEST_ID.get() or ""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = self._redactor.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._redactor.redact(logging.Formatter().formatException(record.exc_info))
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id=… trace_id=… span_id=…]`, redacted once more as a whole."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={value}" for key in ("request_id", "trace_id", "span_id") if (value := getattr(record, key, ""))]
        if ids:
            line = f"{line} [{' '.join(ids)}]"
        return self._redactor.redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids when set, exception text."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor
        self._encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id"):
            value = getattr(record, key, "")
            if value:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._redactor.redact(self._encoder.encode(entry).decode())


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The gateway's stderr handler (recognised so that `setup` can replace it)."""


def setup(
    *,
    redactor: Redactor,
    fmt: str = "text",
    level: str | int = "INFO",
    trace_ids: TraceIds = _no_trace,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Route every log record through one redacting handler in the chosen format (replacing an
    earlier `setup`); returns the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream or sys.stderr)
    handler.addFilter(ContextFilter(redactor, trace_ids))
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
