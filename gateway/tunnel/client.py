"""The outbound channel to the control plane: poll loop, response POSTs, retry policy.
Knows nothing about upstreams: commands go to a `CommandSink`, frames come in as encoded payloads.

Owns the v1 client side of the wire (identity headers, auth, `GET /poll` with
backpressure, `POST /response` with the shard-token header) and when to retry.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
import msgspec
from msgspec import Raw

from gateway import __version__
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.errors import CommandGone, ControlPlaneError, CredentialsUnavailable
from gateway.protocol.headers import (
    ACCEPT,
    AUTHORIZATION,
    CLIENT_NAME_HEADER,
    CLIENT_VERSION_HEADER,
    CONTENT_TYPE,
    INSTANCE_HEADER,
    JSON,
    RETRY_AFTER,
    SERVER_INFO_HEADER,
    SHARD_HEADER,
)
from gateway.protocol.wire import MAX_POLL_LIMIT, Codec, JsonDecoder, PolledCommand, TunnelClientMetadata
from gateway.tunnel.credentials import Credential
from gateway.tunnel.http1 import Dial, H1Client, H1Error, valid_field_value
from gateway.upstream.egress import Egress

log = logging.getLogger(__name__)

CLIENT_NAME: Final = "mcp-tunnel-gateway"
RETRY_POST_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
RETRY_AFTER_CAP_S: Final = 300.0
AUTH_BACKOFF_S: Final = 30.0
POST_ATTEMPTS_WITHOUT_DEADLINE: Final = 8
POLL_GRACE_S: Final = 30.0
METADATA_TIMEOUT_S: Final = 10.0
FIRST_POLL_TIMEOUT_MS: Final = 1
"""`timeout_ms` of the polls sent before any poll was answered (a quick first answer, not a long wait)."""
"""How long past its `timeout_ms` a poll may take before the connection is given up."""
MAX_POLL_BYTES: Final = 256 * 1024 * 1024
"""A poll body larger than this is refused instead of exhausting memory."""
JSON_CONTENT: Final = f"{CONTENT_TYPE}: {JSON}\r\n".encode()
CREDENTIALS_RETRY_MIN_S: Final = 0.05
NO_CREDENTIALS: Final = "waiting for an access token (see credentials)"
"""The control plane's problem while there is no credential to send it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this gateway says it is on every control-plane request."""

    instance_id: str
    server_info: str | None
    name: str = CLIENT_NAME
    version: str = __version__

    @classmethod
    def new(cls, server_info: str | None) -> Identity:
        return cls(instance_id=uuid.uuid4().hex, server_info=server_info)


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, rand: Callable[[], float] = random.random) -> None:
        self._base, self._cap, self._rand = base, cap, rand
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._base * 2**self._attempt)
        self._attempt += 1
        return float(ceiling * self._rand())

    def reset(self) -> None:
        self._attempt = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date in any of its three forms), capped;
    None when absent, malformed, negative or in the past."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(delta, RETRY_AFTER_CAP_S) if delta > 0 else None


class CommandSink(Protocol):
    """Where polled commands go (the dispatcher)."""

    @property
    def free(self) -> int: ...

    async def wait_capacity(self, reserved: int) -> None:
        """Until more slots are free than `reserved` (asked for by polls still out)."""

    def capacity_changed(self) -> None:
        """Wake waiters: reservations were given back."""

    def submit(self, command: PolledCommand, received_at: float) -> None: ...


class ControlPlane:
    """HTTP client for one tunnel on one control plane."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tunnel_id: str,
        credential: Credential,
        identity: Identity,
        codec: Codec,
        egress: Egress | None = None,
        *,
        telemetry: Telemetry = NOOP,
        dial: Dial | None = None,
    ) -> None:
        self._session = session
        self._key = credential
        self._telemetry = telemetry
        self._ssl: ssl.SSLContext | bool = egress.ssl if egress else True
        self._proxy = egress.proxy if egress else None
        base = f"{base_url.rstrip('/')}/v1/tunnels/{tunnel_id}"
        self._metadata_url = base
        # `dial`: the embedded relay's in-process link (polls and responses; the metadata request stays on TCP)
        self._polls = H1Client(f"{base}/poll", ssl_context=self._ssl, proxy=self._proxy, dial=dial)
        self._responses = H1Client(f"{base}/response", ssl_context=self._ssl, proxy=self._proxy, dial=dial)
        self._header_lines: tuple[str, bytes] | None = None  # (key, lines) for the key they were built with
        self._codec = codec
        self._metadata = JsonDecoder(TunnelClientMetadata)
        headers = {
            ACCEPT: JSON,
            CLIENT_NAME_HEADER: identity.name,
            CLIENT_VERSION_HEADER: identity.version,
            INSTANCE_HEADER: identity.instance_id,
        }
        if identity.server_info is not None:
            headers[SERVER_INFO_HEADER] = identity.server_info
        self._identity_headers = headers
        self.last_poll_ok: float | None = None
        """Loop time of the last poll the control plane answered (200 or 204)."""
        self.problem: str | None = None
        """Why the last request to the control plane failed, for operators (None after a success)."""
        self.poll_round_trip_s: float | None = None
        """How long the last answered poll took (its long-poll wait included), for the status page."""
        self.post_latency_s: float | None = None
        """How long the last response POST took to be answered: the link's round trip."""
        self.errors: dict[str, int] = {}
        """Failed polls since start, by kind (`network`, `timeout`, `http_503`, `credentials`, …)."""

    @property
    def credential(self) -> Credential:
        return self._key

    async def _headers(self) -> tuple[str, dict[str, str]]:
        """(the key, identity headers plus `Authorization` with it); the key is read again after
        rotation or a 401, and comes from a token exchange under workload identity."""
        key = await self._key.get()
        return key, {**self._identity_headers, AUTHORIZATION: f"Bearer {key}"}

    async def _lines(self) -> tuple[str, bytes]:
        """(the key, identity and `Authorization` as header lines), built again only when the key changes."""
        key = await self._key.get()
        if self._header_lines is None or self._header_lines[0] != key:
            if not valid_field_value(key):
                raise ControlPlaneError("the API key has characters a header cannot carry")
            lines = {**self._identity_headers, AUTHORIZATION: f"Bearer {key}"}
            self._header_lines = key, "".join(f"{k}: {v}\r\n" for k, v in lines.items()).encode("latin-1")
        return self._header_lines

    def _refused(self, what: str, status: int, retry_after: str | None, key: str) -> ControlPlaneError:
        renewed = self.credentials_rejected(key) if status in (401, 403) else False
        return _refused(what, status, retry_after, renewed=renewed)

    def count_error(self, exc: ControlPlaneError) -> None:
        """Count one failed poll by kind (the status page's "errors by kind")."""
        if isinstance(exc, CredentialsUnavailable):
            kind = "credentials"
        elif exc.status:
            kind = f"http_{exc.status}"
        elif exc.timed_out:
            kind = "timeout"
        else:
            kind = "network"
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def declare(self, server_info: str | None) -> None:
        """Change the `X-Tunnel-MCP-Server-Info` declaration (channels changed on reload)."""
        if server_info is None:
            self._identity_headers.pop(SERVER_INFO_HEADER, None)
        else:
            self._identity_headers[SERVER_INFO_HEADER] = server_info
        self._header_lines = None

    def close(self) -> None:
        """Drop the poll and response connections (the aiohttp session belongs to the caller)."""
        self._polls.close()
        self._responses.close()

    def credentials_rejected(self, key: str | None = None) -> bool:
        """The control plane said 401/403 to `key`: read the key again (or exchange for a new
        token, once) before the next request; True when a new credential is on its way."""
        return self._key.invalidate(key)

    async def metadata(self) -> TunnelClientMetadata:
        """The tunnel's metadata (startup diagnostics: the key and tunnel id are checked at once)."""
        key, headers = await self._headers()
        try:
            async with self._session.get(self._metadata_url, headers=headers, ssl=self._ssl, proxy=self._proxy) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise self._refused("metadata", resp.status, resp.headers.get(RETRY_AFTER), key)
        except aiohttp.ClientError as exc:
            raise ControlPlaneError(f"metadata request failed: {type(exc).__name__}") from None
        try:
            metadata = self._metadata.decode(body)
        except msgspec.MsgspecError as exc:
            raise ControlPlaneError("control plane sent invalid tunnel metadata") from exc
        self.problem = None
        return metadata

    async def poll(self, limit: int, timeout_ms: int) -> tuple[float, list[Raw]]:
        """One long-poll: (receipt time on the loop clock, raw commands).

        Bounded by the poll's own timeout plus a grace, so a connection that died
        silently cannot hold the channel."""
        query = f"?limit={limit}&timeout_ms={timeout_ms}"
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout_ms / 1000 + POLL_GRACE_S):
                key, lines = await self._lines()
                resp = await self._polls.get(lines, query=query, max_body=MAX_POLL_BYTES)
        except H1Error as exc:
            raise ControlPlaneError(f"poll failed: {exc}") from None
        except TimeoutError:
            bound = timeout_ms / 1000 + POLL_GRACE_S
            raise ControlPlaneError(f"poll got no answer within {bound:.0f}s", timed_out=True) from None
        received = resp.headers_at  # deadlines count from here, as the contract says
        if resp.status not in (200, 204):
            raise self._refused("poll", resp.status, resp.retry_after, key)
        self.last_poll_ok, self.problem = received, None
        self.poll_round_trip_s = max(0.0, received - started)
        if resp.status == 204:
            return received, []
        if resp.truncated:
            raise ControlPlaneError(f"control plane sent a poll body over {MAX_POLL_BYTES} bytes")
        try:
            return received, self._codec.batch(resp.body).commands
        except msgspec.MsgspecError as exc:
            raise ControlPlaneError("control plane sent a poll body that is not a command list") from exc

    async def post(self, body: bytes, shard_token: str, *, terminal: bool) -> bool:
        """Deliver one response frame; retries what the contract allows.

        Returns True when accepted, False when a frame could not be delivered;
        raises CommandGone when the control plane no longer waits for the
        command (404: its caller left, the cancellation signal). The caller
        bounds the whole exchange by the command's deadline.
        """
        if not valid_field_value(shard_token):
            log.warning("the control plane sent a shard token a header cannot carry; response not delivered")
            return False
        shard = f"{SHARD_HEADER}: {shard_token}\r\n".encode()
        backoff = Backoff(base=0.1, cap=5.0)
        attempts = 0
        reauthenticated = False
        while True:
            attempts += 1
            retry_after: float | None = None
            try:
                key, lines = await self._lines()
            except CredentialsUnavailable as exc:
                # Nothing to send it with (the token exchange is failing): a terminal frame waits
                # for the next exchange within its deadline, a notification is dropped.
                if not terminal:
                    return False
                reason, retry_after = "credentials", exc.retry_after
                resp = None
            else:
                try:
                    sent = asyncio.get_running_loop().time()
                    resp = await self._responses.post(lines + JSON_CONTENT + shard, body)
                    self.post_latency_s = asyncio.get_running_loop().time() - sent
                except H1Error as exc:
                    # A notify is retried only when it never left (no connection was made).
                    if not terminal and exc.sent:
                        log.warning("notify frame not delivered: %s", exc)
                        return False
                    reason, resp = "disconnected" if exc.sent else "connect", None
            if resp is not None:
                if resp.status == 200:
                    return True
                if resp.status == 404:
                    raise CommandGone()
                if resp.status == 401 and not reauthenticated:
                    # The key may have rotated: read it again and send the same frame once more.
                    self.credentials_rejected(key)
                    reauthenticated = True
                    continue
                retryable = resp.status in RETRY_POST_STATUSES if terminal else resp.status == 429
                if not retryable:
                    log.warning("control plane refused a response frame: HTTP %d", resp.status)
                    return False
                retry_after = parse_retry_after(resp.retry_after)
                reason = str(resp.status)
            if attempts >= POST_ATTEMPTS_WITHOUT_DEADLINE * (4 if terminal else 1):
                log.warning("giving up on a response frame after %d attempts", attempts)
                return False
            delay = max(backoff.next(), retry_after or 0.0)
            self._telemetry.post_retry(attempts, reason, delay)
            await asyncio.sleep(delay)


def _refused(what: str, status: int, retry_after: str | None, *, renewed: bool = False) -> ControlPlaneError:
    message = f"control plane refused {what}: HTTP {status}"
    return ControlPlaneError(message, status, parse_retry_after(retry_after), renewed=renewed)


async def _dispatched() -> None:
    """Two loop steps: in the first, the commands just submitted run up to their first wait (a request
    queued on a stdio pipe, or sent); in the second, the pipes' per-tick flushes write them. With one
    poll channel the next poll's request goes out after that, so it is not on the commands' path
    (c=1: 0.95 -> 0.83 ms p50). With several polls in flight another poll is already out; there the
    order is left as it was (with it, the several-polls accounting contract test failed once under load)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class Poller:
    """The poll channel: asks only for free capacity, hands commands to the sink.

    One logical channel, with `polls` requests in flight at once when the round
    trip to the control plane would otherwise cap throughput (each poll carries
    at most 25 commands per round trip). Together they never ask for more than
    the free slots: each poll reserves its `limit` until it returns.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        sink: CommandSink,
        codec: Codec,
        timeout_ms: int,
        *,
        polls: int = 1,
        telemetry: Telemetry = NOOP,
    ) -> None:
        self._telemetry = telemetry
        self._cp = control_plane
        self._sink = sink
        self._codec = codec
        self._timeout_ms = timeout_ms
        self._polls = polls
        self._reserved = 0
        self._out = 0
        self._backoff = Backoff()
        self._auth_reported = False
        self.fault: str | None = None
        """Why the poll loop is backing off after an unexpected error; None while it runs cleanly."""

    async def run(self) -> None:
        """Introduce the gateway (the startup metadata request, bounded), then poll until cancelled."""
        await self._introduce()
        async with asyncio.TaskGroup() as polls:
            for _ in range(self._polls):
                polls.create_task(self._supervised())

    async def _supervised(self) -> None:
        """One poll loop that nothing but cancellation ends: an unexpected error is logged once
        (until a poll goes through again), shown as `fault` (and so on `/readyz`), and followed
        by a backoff and the next poll."""
        while True:
            try:
                await self._poll_loop()
            except Exception as exc:
                if self.fault is None:
                    log.exception("the poll loop failed unexpectedly; polling again after a backoff")
                self.fault = f"the poll loop failed ({type(exc).__name__}); retrying"
                await asyncio.sleep(self._backoff.next())

    async def _poll_loop(self) -> None:
        while True:
            await self._sink.wait_capacity(self._reserved)
            free = self._sink.free - self._reserved
            idle = self._polls - self._out  # this poll included: each takes a fair share of the free slots
            limit = max(1, min(MAX_POLL_LIMIT, free, -(-free // idle)))
            self._reserved += limit
            self._out += 1
            # Until a poll was answered, ask for no wait: the gateway knows at once that the control
            # plane serves it (readiness), and the relay has seen it poll before anyone is told so.
            timeout_ms = self._timeout_ms if self._cp.last_poll_ok is not None else FIRST_POLL_TIMEOUT_MS
            try:
                with self._telemetry.poll(limit) as span:
                    received, commands = await self._cp.poll(limit, timeout_ms)
                    span.polled(len(commands))
            except ControlPlaneError as exc:
                await asyncio.sleep(self._delay_after(exc))
                continue
            finally:
                self._reserved -= limit
                self._out -= 1
                self._sink.capacity_changed()
            self._backoff.reset()
            self._auth_reported = False
            dropped = 0
            for raw in commands:
                try:
                    command = self._codec.command(raw)
                except msgspec.MsgspecError:
                    dropped += 1  # no usable request_id or shard_token: nothing can answer it
                    continue
                self._sink.submit(command, received)
            if dropped:
                log.warning("dropped %d command(s) without a usable request_id or shard_token", dropped)
            self.fault = None
            if commands and self._polls == 1:
                await _dispatched()

    async def _introduce(self) -> None:
        """Ask for the tunnel's metadata once: a quick answer to "is the control plane there, and does it
        take our key", long before the first long poll returns. Failures are logged; polling goes on."""
        try:
            async with asyncio.timeout(METADATA_TIMEOUT_S):
                metadata = await self._cp.metadata()
        except CredentialsUnavailable:
            self._cp.problem = NO_CREDENTIALS  # the credential logs its own failure
        except ControlPlaneError as exc:
            self._cp.problem = str(exc)
            log.warning("%s; polling all the same", exc)
        except TimeoutError:
            self._cp.problem = f"no answer to the metadata request within {METADATA_TIMEOUT_S:g}s"
            log.warning("control plane: %s; polling all the same", self._cp.problem)
        except Exception:  # a diagnostic request never stops the poll loops beside it
            log.exception("control plane: the metadata request failed inside the gateway; polling all the same")
        else:
            log.info("control plane: tunnel %r (%s)", metadata.id, metadata.name)

    def _delay_after(self, exc: ControlPlaneError) -> float:
        self._cp.problem = str(exc)
        self._cp.count_error(exc)
        retry_after = exc.retry_after
        if isinstance(exc, CredentialsUnavailable):
            # Nothing was sent: the credential (the token exchange) logs and reports its own failure,
            # and says when it exchanges next; the poll goes then, so it recovers with the credential.
            self._cp.problem = NO_CREDENTIALS
            log.debug("%s; polling again in %.1fs", exc, retry_after or 0.0)
            return max(retry_after or 0.0, CREDENTIALS_RETRY_MIN_S)
        delay = self._backoff.next()
        if exc.status in (401, 403) and exc.renewed:
            # The credential exchanged the refused token for a new one: try that at once (once;
            # were it refused too, the credential would not renew it again so soon).
            log.warning("%s; polling again with a new access token", exc)
        elif exc.status in (401, 403):
            # The client has already told the credential (it reads the key again, or exchanges once).
            if not self._auth_reported:
                log.error(
                    "control plane rejected the tunnel credentials (HTTP %d): check tunnel_id and %s",
                    exc.status,
                    self._cp.credential.label,
                )
                self._auth_reported = True
            delay = max(delay, AUTH_BACKOFF_S)
        else:
            log.warning("%s; retrying in %.1fs", exc, max(delay, retry_after or 0.0))
        return max(delay, retry_after or 0.0)
