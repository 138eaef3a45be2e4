"""A server's service credential: the token the gateway obtains and sends in place of the user's.
The I/O only (token endpoint POSTs, one in flight per key, their tasks); no token or secret reaches a log or error.

Owns, for one HTTP server with `service_credential` (gateway.config.service_auth): the requests to
its token endpoint with the server's egress settings (client credentials, or the user's token
exchanged "on behalf of" them, RFC 8693), one request in flight per key (the shared token, or each
user's; after a failure, none for a moment), refreshed in the background `refresh_before_s` ahead
of expiry, a cache entry dropped when the server refuses its token (and the request tried once
more), what a caller is answered when there is no token: 401 without a user token,
ServiceCredentialRefused, or a 502-style failure, and telling telemetry of each request.
Request bodies and the cache are gateway.protocol.service_tokens'; answers gateway.protocol.oauth_tokens'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

import aiohttp

from gateway.config import secrets
from gateway.config.routing import HttpSpec
from gateway.config.service_auth import ServiceCredentialSpec
from gateway.observe.hooks import NOOP, Telemetry, TokenGrant, TokenRequest
from gateway.protocol.errors import (
    ConfigError,
    ServiceCredentialRefused,
    UpstreamHttpError,
    UpstreamUnavailable,
)
from gateway.protocol.headers import WWW_AUTHENTICATE
from gateway.protocol.mcp import Call, Frame, Reply
from gateway.protocol.oauth_tokens import MAX_ANSWER_BYTES, Failed, Granted, read_answer
from gateway.protocol.service_tokens import (
    FAILURE_PAUSE_S,
    FORM,
    SHARED,
    Pauses,
    TokenCache,
    basic_authorization,
    bearer_token,
    client_credentials_form,
    token_exchange_form,
    user_key,
    with_bearer,
)
from gateway.protocol.wire import Headers, TunnelFailure
from gateway.protocol.workload_identity import Lease
from gateway.upstream.egress import Egress, egress
from gateway.upstream.http_errors import map_aiohttp_errors
from gateway.upstream.token_post import post_token_request

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT_S: Final = 30.0
"""One token request is given up after this long."""
DEFAULT_LIFETIME_S: Final = 300.0
"""How long a token whose answer has no `expires_in` is used (RFC 6749 §5.1 only recommends it)."""
BARE_CHALLENGE: Final[Headers] = {WWW_AUTHENTICATE: ["Bearer"]}
"""What a caller without a token hears when the server's own challenge is not known."""


@dataclass(frozen=True, slots=True)
class ServiceCredentialSettings:
    """`service_credential` with its secret resolved (held as a `Secret`: no repr shows it)."""

    token_url: str
    on_behalf_of: bool
    client_id: str | None = None
    client_secret: secrets.Secret | None = field(default=None, repr=False)
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None
    requested_token_type: str | None = None
    refresh_before_s: float = 60.0
    max_cached_users: int = 4096

    @classmethod
    def resolve(
        cls, spec: ServiceCredentialSpec, *, file: str, key: str, base: Path | None
    ) -> ServiceCredentialSettings:
        """The settings with `client_secret` read from its reference now (unresolvable: ConfigError)."""
        grant = spec.grant
        on_behalf_of = spec.token_exchange is not None
        grant_key = f"{key}.{'token_exchange' if on_behalf_of else 'client_credentials'}"
        secret = None
        if grant.client_secret is not None:
            try:
                secret = secrets.resolve(grant.client_secret, base=base)
            except secrets.SecretError as exc:
                raise ConfigError(file, f"{grant_key}.client_secret", f"a resolvable secret ({exc})") from None
        exchange = spec.token_exchange
        return cls(
            token_url=grant.token_url,
            on_behalf_of=on_behalf_of,
            client_id=grant.client_id,
            client_secret=secret,
            scope=grant.scope,
            audience=grant.audience,
            resource=grant.resource,
            requested_token_type=exchange.requested_token_type if exchange is not None else None,
            refresh_before_s=spec.refresh_before_s,
            max_cached_users=spec.max_cached_users,
        )


@dataclass(frozen=True, slots=True)
class Authorized:
    """A caller's headers with the service token in `Authorization`; `key` and `token` name the cache
    entry it came from (so a refusal drops that entry, and only while it still holds this token)."""

    headers: Headers = field(repr=False)
    key: str = field(repr=False)
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _NoToken:
    """A request that produced no token: `refused` (the endpoint said no) or a failure on the way."""

    failed: Failed
    failure: TunnelFailure | None = None
    message: str = ""


class ServiceCredentials:
    """The service tokens of one server, over the shared aiohttp session (which it does not own).
    `close()` ends the requests in flight."""

    def __init__(
        self,
        server: str,
        settings: ServiceCredentialSettings,
        session: aiohttp.ClientSession,
        egress: Egress | None = None,
        *,
        failure_pause_s: float = FAILURE_PAUSE_S,
        telemetry: Telemetry = NOOP,
        learn_secret: Callable[[str], None] | None = None,
    ) -> None:
        self._server = server
        self._learn = learn_secret
        self.settings = settings
        self._http = session
        self._egress = egress
        cap = settings.max_cached_users if settings.on_behalf_of else 1
        self._cache = TokenCache(refresh_before_s=settings.refresh_before_s, max_entries=cap)
        self._pauses: Pauses[_NoToken] = Pauses(pause_s=failure_pause_s, max_entries=cap)
        self._flights: dict[str, asyncio.Task[Lease | _NoToken]] = {}
        self._grant = "token exchange" if settings.on_behalf_of else "client credentials request"
        self._telemetry = telemetry
        grant: TokenGrant = "token_exchange" if settings.on_behalf_of else "client_credentials"
        self._token_request = TokenRequest(grant, settings.token_url, server)
        self._context = f"server {server!r}, token endpoint {urlsplit(settings.token_url).hostname or '?'}"
        self._client_auth = None
        if settings.client_id is not None and settings.client_secret is not None:
            self._client_auth = basic_authorization(settings.client_id, settings.client_secret.reveal())
        self.requests = 0
        """Token requests begun (for tests and the status page)."""
        self._reported: str | None = None

    # ------------------------------------------------------------------ callers

    async def authorize(self, headers: Headers, challenge: Headers) -> Authorized:
        """`headers` with the service token in place of the user's `Authorization`. Without a user
        token on an on-behalf-of server: UpstreamHttpError 401 with `challenge` (the server's, when
        known), and nothing is requested."""
        user = None
        key = SHARED
        if self.settings.on_behalf_of:
            user = bearer_token(headers)
            if user is None:
                raise UpstreamHttpError(self._server, 401, challenge or BARE_CHALLENGE)
            key = user_key(user)
        found = await self._token(key, user)
        return Authorized(with_bearer(headers, found.token), key, found.token)

    def rejected(self, authorized: Authorized) -> None:
        """The server answered 401 to this token: forget it (a later call obtains another)."""
        if self._cache.drop(authorized.key, authorized.token):
            log.info("server %r refused its service token (HTTP 401); obtaining another", self._server)

    async def retrying(self, headers: Headers, challenge: Headers, attempt: Callable[[Headers], Awaitable[T]]) -> T:
        """`attempt` with authorized headers; after a 401, once more with a fresh token."""
        for tries in (1, 2):
            authorized = await self.authorize(headers, challenge)
            try:
                return await attempt(authorized.headers)
            except UpstreamHttpError as exc:
                if exc.resp_code != 401 or tries == 2:
                    raise
                self.rejected(authorized)
        raise AssertionError("unreachable")  # pragma: no cover

    async def calls(
        self, call: Call, send: Callable[[Call], AsyncIterator[Frame]], challenge: Headers
    ) -> AsyncIterator[Frame]:
        """One call's frames, sent with the service token; a 401 before any frame (an HTTP error,
        or a JSON-RPC answer with status 401) drops the token and sends the call once more."""
        for tries in (1, 2):
            authorized = await self.authorize(call.headers, challenge)
            again = sent = False
            frames = send(dataclasses.replace(call, headers=authorized.headers))
            try:
                async for frame in frames:
                    if tries == 1 and not sent and isinstance(frame, Reply) and frame.status == 401:
                        again = True
                        break
                    sent = True
                    yield frame
            except UpstreamHttpError as exc:
                if exc.resp_code != 401 or tries == 2 or sent:
                    raise
                again = True
            finally:
                close = getattr(frames, "aclose", None)
                if close is not None:
                    await close()
            if not again:
                return
            self.rejected(authorized)

    async def close(self) -> None:
        flights, self._flights = list(self._flights.values()), {}
        for task in flights:
            task.cancel()
        for task in flights:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ the cache

    async def _token(self, key: str, user: str | None) -> Lease:
        now = self._now()
        found = self._cache.get(key, now)
        paused = self._pauses.get(key, now)
        if found is not None:
            if self._cache.due(found, now) and paused is None:
                self._launch(key, user)  # refreshed in the background; this one is still good
            return found
        if paused is not None:
            raise self._error(paused)  # failed moments ago: the same answer, no new request
        # The shield keeps a caller that gives up (a cancelled call) from cancelling it for all.
        outcome = await asyncio.shield(self._launch(key, user))
        if isinstance(outcome, Lease):
            return outcome
        raise self._error(outcome)

    def _launch(self, key: str, user: str | None) -> asyncio.Task[Lease | _NoToken]:
        flight = self._flights.get(key)
        if flight is None or flight.done():
            flight = asyncio.create_task(self._request(key, user), name=f"service-token:{self._server}")
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return flight

    def _landed(self, key: str, done: asyncio.Task[Lease | _NoToken]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _error(self, outcome: _NoToken) -> Exception:
        if outcome.failed.refused:
            return ServiceCredentialRefused(self._server, self._grant, outcome.failed.code)
        failure = outcome.failure or TunnelFailure(
            source="client_internal", transport_error_kind="unknown", upstream_response_received=False
        )
        message = outcome.message or f"upstream {self._server!r}: no service token (its token endpoint failed)"
        return UpstreamUnavailable(message, failure)

    # ------------------------------------------------------------------ one request

    async def _request(self, key: str, user: str | None) -> Lease | _NoToken:
        self.requests += 1
        sent_at = self._now()
        try:
            outcome = await self._post(user)
        except Exception as exc:  # a bug must not leave every caller waiting on a dead flight
            log.exception("server %r: the service token request failed inside the gateway", self._server)
            outcome = _NoToken(Failed(f"the {self._grant} failed inside the gateway ({type(exc).__name__})"))
        if isinstance(outcome, Granted):
            found = self._cache.put(key, outcome, sent_at=sent_at, now=self._now())
            if found is not None:
                self._pauses.clear(key)
                self._report(None, outcome.lifetime_s)
                return found
            outcome = _NoToken(Failed(f"the token endpoint issued a token that expired on arrival ({self._context})"))
        self._pauses.note(key, outcome, self._now())
        self._report(outcome.failed.reason, 0.0)
        return outcome

    async def _post(self, user: str | None) -> Granted | _NoToken:
        settings = self.settings
        if user is not None:
            body = token_exchange_form(
                user,
                audience=settings.audience,
                resource=settings.resource,
                scope=settings.scope,
                requested_token_type=settings.requested_token_type,
                client_id=settings.client_id if self._client_auth is None else None,
            )
        else:
            body = client_credentials_form(scope=settings.scope, audience=settings.audience, resource=settings.resource)
        unreachable = f"upstream {self._server!r}: its token endpoint could not be reached"
        try:
            # The telemetry scope inside the translation and outside the timeout: it sees aiohttp's
            # own error, and a TimeoutError rather than the cancellation a timeout is made of.
            with map_aiohttp_errors(self._server), self._telemetry.token_request(self._token_request) as scope:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, answer = await post_token_request(
                        self._http,
                        settings.token_url,
                        body,
                        content_type=FORM,
                        egress=self._egress,
                        max_bytes=MAX_ANSWER_BYTES,
                        authorization=self._client_auth,
                    )
                outcome = self._read(status, answer, user)
                scope.settled(status, outcome.failed if isinstance(outcome, _NoToken) else outcome)
        except UpstreamUnavailable as exc:
            reason = f"{self._grant} failed: token endpoint unreachable ({exc.failure.source}; {self._context})"
            return _NoToken(Failed(reason), exc.failure, unreachable)
        except TimeoutError:
            failure = TunnelFailure(source="timeout", transport_error_kind="timeout", upstream_response_received=False)
            reason = f"{self._grant} failed: no answer within {REQUEST_TIMEOUT_S:g}s ({self._context})"
            return _NoToken(Failed(reason), failure, unreachable)
        return outcome

    def _read(self, status: int, answer: bytes, user: str | None) -> Granted | _NoToken:
        """What the token endpoint's answer means."""
        if len(answer) > MAX_ANSWER_BYTES:
            return _NoToken(Failed(f"the token endpoint's answer is over {MAX_ANSWER_BYTES} bytes ({self._context})"))
        if 300 <= status < 400:
            return _NoToken(Failed(f"the token endpoint answered a redirect, which is not followed ({self._context})"))
        hide = [value for value in (user, self._secret) if value]
        outcome = read_answer(
            status, answer, context=self._context, hide=hide, what=self._grant, default_lifetime_s=DEFAULT_LIFETIME_S
        )
        if not isinstance(outcome, Granted):
            return _NoToken(outcome)
        if self._learn is not None:
            self._learn(outcome.token)  # before the token is sent anywhere
        return outcome

    @property
    def _secret(self) -> str | None:
        return self.settings.client_secret.reveal() if self.settings.client_secret is not None else None

    def _report(self, problem: str | None, lifetime_s: float) -> None:
        """Log a change: the first token, a failure (once until it changes), a recovery."""
        if problem is None:
            if self._reported is not None or self.requests == 1:
                kind = "on behalf of its users" if self.settings.on_behalf_of else "by client credentials"
                log.info("server %r: service token obtained %s, valid %.0fs", self._server, kind, lifetime_s)
            else:
                log.debug("server %r: service token obtained, valid %.0fs", self._server, lifetime_s)
            self._reported = None
            return
        if problem != self._reported:
            self._reported = problem
            log.warning("server %r: %s", self._server, problem)


def service_credentials(
    server: str,
    spec: HttpSpec,
    *,
    session: aiohttp.ClientSession,
    file: str,
    base: Path,
    telemetry: Telemetry = NOOP,
    learn_secret: Callable[[str], None] | None = None,
) -> ServiceCredentials | None:
    """The server's service credential as configured (None without `service_credential`): its secret
    resolved now, its token endpoint reached with the server's egress settings, each request told to
    `telemetry`, each token it obtains to `learn_secret` (the log redactor)."""
    if spec.service_credential is None:
        return None
    key = f"servers.{server}.http.service_credential"
    settings = ServiceCredentialSettings.resolve(spec.service_credential, file=file, key=key, base=base)
    token_egress = egress(settings.token_url, spec, file=file, key=f"servers.{server}.http", base=base)
    return ServiceCredentials(server, settings, session, token_egress, telemetry=telemetry, learn_secret=learn_secret)
