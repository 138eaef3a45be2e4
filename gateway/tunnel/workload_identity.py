"""Workload identity as the control-plane credential: exchange a platform token for access tokens.
The I/O only: when to exchange is protocol/workload_identity.py's; no token reaches a log or an error.

Owns the I/O of the RFC 8693 exchange (the POST to `token_url` with the control plane's egress
settings, a fresh subject token each time), the one exchange in flight however many polls and
posts ask for a token, its task's lifetime, the log lines and readiness words of a failing
exchange, and telling telemetry of each exchange (`Telemetry.token_request`). When to exchange,
and what an answer means, is `gateway.protocol.workload_identity`'s.
Implements `Credential` (gateway.tunnel.credentials). No token reaches a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from gateway.config import secrets
from gateway.config.identity import WorkloadIdentitySpec
from gateway.observe.hooks import NOOP, Telemetry, TokenRequest
from gateway.protocol.errors import ConfigError, CredentialsUnavailable
from gateway.protocol.headers import JSON
from gateway.protocol.workload_identity import (
    MAX_ANSWER_BYTES,
    Decision,
    Failed,
    Granted,
    Rejection,
    SubjectTokenType,
    TokenLifecycle,
    encode_request,
    read_answer,
)
from gateway.tunnel.subject_tokens import SubjectSource, SubjectTokenError
from gateway.upstream.egress import Egress
from gateway.upstream.token_post import post_token_request

log = logging.getLogger(__name__)

EXCHANGE_TIMEOUT_S: Final = 30.0
"""One exchange (reading the subject token included) is given up after this long."""


@dataclass(frozen=True, slots=True)
class ExchangeSettings:
    """The resolved, non-secret half of `workload_identity`: who asks, and where."""

    token_url: str
    identity_provider_id: str
    service_account_id: str
    subject_token_type: SubjectTokenType = "jwt"
    refresh_before_s: float = 1200.0

    @classmethod
    def resolve(cls, spec: WorkloadIdentitySpec, *, file: str, base: Path | None, key: str) -> ExchangeSettings:
        """The ids read from their references now (a missing variable is a configuration error)."""

        def value(name: str, ref: str) -> str:
            try:
                return secrets.resolve(ref, base=base).reveal()
            except secrets.SecretError as exc:
                raise ConfigError(file, f"{key}.{name}", f"a resolvable id ({exc})") from None

        return cls(
            token_url=spec.token_url,
            identity_provider_id=value("identity_provider_id", spec.identity_provider_id),
            service_account_id=value("service_account_id", spec.service_account_id),
            subject_token_type="id_token" if spec.subject_token_type == "id_token" else "jwt",
            refresh_before_s=spec.refresh_before_s,
        )


class WorkloadIdentity:
    """Access tokens for one identity: cached, refreshed ahead of expiry in the background, one
    exchange at a time. `start()` begins the first exchange; `close()` ends any in flight."""

    def __init__(
        self,
        settings: ExchangeSettings,
        subject: SubjectSource,
        session: aiohttp.ClientSession,
        egress: Egress | None = None,
        *,
        lifecycle: TokenLifecycle | None = None,
        telemetry: Telemetry = NOOP,
        learn_secret: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._learn = learn_secret
        self._subject = subject
        self._session = session
        self._egress = egress
        self._telemetry = telemetry
        self._request = TokenRequest("workload_identity", settings.token_url)
        self._life = lifecycle or TokenLifecycle(refresh_before_s=settings.refresh_before_s)
        self._flight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._context = f"identity provider {settings.identity_provider_id}"
        parts = urlsplit(settings.token_url)
        self._endpoint = parts.hostname or "?"
        self._reported: str | None = None
        self.exchanges = 0
        """Exchanges that produced a token."""
        self.attempts = 0
        """Exchanges begun."""

    # ------------------------------------------------------------------ Credential

    @property
    def label(self) -> str:
        return f"workload_identity ({self._context}, service account {self.settings.service_account_id})"

    async def get(self) -> str:
        while True:
            now = self._now()
            decision = self._life.decide(now)
            lease = self._life.lease
            if decision is Decision.USE and lease is not None:
                return lease.token
            if decision is Decision.USE_AND_REFRESH and lease is not None:
                self._launch()
                return lease.token
            if decision is Decision.FAIL:
                reason = self._life.problem(now) or "no access token"
                raise CredentialsUnavailable(reason, self._life.retry_in(now))
            # No usable token: wait for the exchange in flight (started now if none is). The
            # shield keeps a caller that gives up (a cancelled poll) from cancelling it for all.
            await asyncio.shield(self._launch())

    def invalidate(self, rejected: str | None = None) -> bool:
        if rejected is None:
            return False
        outcome = self._life.rejected(rejected, now=self._now())
        if outcome is Rejection.RENEW:
            log.warning("credentials: the control plane refused the access token; exchanging again")
            self._launch()
            self._wake.set()
        return outcome is not Rejection.REFUSED_AGAIN

    def status(self) -> str:
        return self._life.status(self._now())

    def problem(self) -> str | None:
        return self._life.problem(self._now())

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        """Exchange now (at start), and from then on whenever one is due, whether or not anyone asks
        for a token: refreshes happen ahead of expiry even while a long poll is out."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._keep_fresh(), name="token-refresher")

    async def close(self) -> None:
        tasks = [task for task in (self._refresher, self._flight) if task is not None]
        self._refresher = self._flight = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_fresh(self) -> None:
        while True:
            now = self._now()
            if self._life.decide(now) in (Decision.EXCHANGE, Decision.USE_AND_REFRESH):
                await self._launch()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._life.next_due(now) - now))

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _launch(self) -> asyncio.Task[None]:
        if self._flight is None or self._flight.done():
            self._flight = asyncio.create_task(self._exchange(), name="token-exchange")
        return self._flight

    # ------------------------------------------------------------------ one exchange

    async def _exchange(self) -> None:
        self.attempts += 1
        sent_at = self._now()
        deadline = sent_at + EXCHANGE_TIMEOUT_S
        outcome: Granted | Failed
        try:
            async with asyncio.timeout_at(deadline):
                subject = await self._subject.read()
            if self._learn is not None:
                self._learn(subject)
            sent_at = self._now()
            outcome = await self._post(subject, deadline)
        except SubjectTokenError as exc:
            outcome = Failed(str(exc))
        except TimeoutError:
            outcome = Failed(f"token exchange failed: no answer within {EXCHANGE_TIMEOUT_S:g}s ({self._context})")
        except Exception as exc:  # a bug must not leave every caller waiting on a dead flight
            log.exception("credentials: the token exchange failed inside the gateway")
            outcome = Failed(f"token exchange failed inside the gateway ({type(exc).__name__})")
        self._record(outcome, sent_at)

    async def _post(self, subject: str, deadline: float) -> Granted | Failed:
        """The exchange, given up at `deadline` (what is left of EXCHANGE_TIMEOUT_S once the subject
        token is read) with a TimeoutError; the telemetry scope is outside that timeout, so it sees
        the TimeoutError (or aiohttp's own error) rather than a cancellation."""
        body = encode_request(
            subject,
            subject_token_type=self.settings.subject_token_type,
            identity_provider_id=self.settings.identity_provider_id,
            service_account_id=self.settings.service_account_id,
        )
        try:
            with self._telemetry.token_request(self._request) as scope:
                async with asyncio.timeout_at(deadline):
                    status, answer = await post_token_request(
                        self._session,
                        self.settings.token_url,
                        body,
                        content_type=JSON,
                        egress=self._egress,
                        max_bytes=MAX_ANSWER_BYTES,
                    )
                outcome = self._read(status, answer, subject)
                scope.settled(status, outcome)
        except aiohttp.ClientError as exc:
            kind = type(exc).__name__
            return Failed(f"token endpoint {self._endpoint} unreachable ({kind}; {self._context})")
        return outcome

    def _read(self, status: int, answer: bytes, subject: str) -> Granted | Failed:
        if len(answer) > MAX_ANSWER_BYTES:
            return Failed(f"the token endpoint's answer is over {MAX_ANSWER_BYTES} bytes ({self._context})")
        outcome = read_answer(status, answer, context=self._context, hide=(subject,))
        if isinstance(outcome, Granted) and self._learn is not None:
            self._learn(outcome.token)  # before the token is sent anywhere
        return outcome

    def _record(self, outcome: Granted | Failed, sent_at: float) -> None:
        now = self._now()
        if isinstance(outcome, Granted):
            usable_before = self._life.lease is not None and now < self._life.lease.usable_until
            lease = self._life.granted(outcome, sent_at=sent_at, now=now)
            if lease is not None:
                self.exchanges += 1
                recovered, self._reported = self._reported is not None, None
                lifetime = outcome.lifetime_s
                if self.exchanges == 1 or recovered:
                    again = " again" if recovered else ""
                    log.info(
                        "credentials: access token%s for %s (service account %s, subject token from %s), "
                        "valid %.0fs, refreshed after %.0fs",
                        again,
                        self._context,
                        self.settings.service_account_id,
                        self._subject.description,
                        lifetime,
                        lease.refresh_at - lease.obtained_at,
                    )
                else:
                    log.debug("credentials: access token refreshed, valid %.0fs", lifetime)
                return
            usable = usable_before
        else:
            usable = self._life.lease is not None and now < self._life.lease.usable_until
            self._life.failed(outcome, now=now)
        failure = self._life.failure
        if failure is not None and failure.reason != self._reported:
            self._reported = failure.reason
            if usable:
                log.warning("credentials: %s; the current access token is still valid", failure.reason)
            else:
                log.error("credentials: %s", failure.reason)
