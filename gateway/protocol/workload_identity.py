"""Workload identity without I/O: the RFC 8693 token exchange on the wire, and when to exchange.
Sans-IO: no asyncio, no aiohttp; no token (subject or access) is ever part of a message or reason.

Owns the request body OpenAI's token endpoint (and the relay's) takes (the answer and its RFC 6749
error body are gateway.protocol.oauth_tokens', re-exported here), the refresh schedule
(`refresh_before_s` ahead of expiry, at most half a short lifetime) and the pacing rules: one
exchange at a time, a backoff after a failure, and after a 401 from the control plane one more
exchange, then a pause. Sans-IO: the caller passes clock readings and bytes; no asyncio, no aiohttp.
Rule kept throughout: no token (subject or access) is ever part of a message, repr or reason.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
from msgspec import Struct

from gateway.protocol.oauth_tokens import MASK as MASK
from gateway.protocol.oauth_tokens import MAX_ANSWER_BYTES as MAX_ANSWER_BYTES
from gateway.protocol.oauth_tokens import Failed as Failed
from gateway.protocol.oauth_tokens import Granted as Granted
from gateway.protocol.oauth_tokens import describe as describe
from gateway.protocol.oauth_tokens import read_answer as read_answer

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES: Final = {
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
    "id_token": "urn:ietf:params:oauth:token-type:id_token",
}
SubjectTokenType = Literal["jwt", "id_token"]
DEFAULT_TOKEN_URL: Final = "https://auth.openai.com/oauth/token"
EXPIRY_MARGIN_S: Final = 30.0
"""A token is not sent in the last 30 s of its life (or the last tenth of a shorter one)."""
RETRY_BASE_S: Final = 0.5
RETRY_CAP_S: Final = 30.0
REJECTION_PAUSE_S: Final = 30.0
"""After a 401 was answered with a fresh exchange, further 401s cause no exchange for this long."""


# --------------------------------------------------------------------------- the wire


class ExchangeRequest(Struct, frozen=True, kw_only=True):
    """The JSON body of `POST token_url` (RFC 8693 section 2.1 with OpenAI's two extra members)."""

    grant_type: str = GRANT_TYPE
    subject_token_type: str
    subject_token: str
    identity_provider_id: str
    service_account_id: str

    def __repr__(self) -> str:
        return f"ExchangeRequest(identity_provider_id={self.identity_provider_id!r}, subject_token=<hidden>)"


_ENCODER: Final = msgspec.json.Encoder()


def encode_request(
    subject_token: str,
    *,
    subject_token_type: SubjectTokenType,
    identity_provider_id: str,
    service_account_id: str,
) -> bytes:
    """The exchange request body (JSON, members in RFC order)."""
    request = ExchangeRequest(
        subject_token_type=SUBJECT_TOKEN_TYPES[subject_token_type],
        subject_token=subject_token,
        identity_provider_id=identity_provider_id,
        service_account_id=service_account_id,
    )
    return _ENCODER.encode(request)


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class Lease:
    """An access token with its times on the caller's clock: refresh from `refresh_at`, send it
    only before `usable_until`."""

    token: str = field(repr=False)
    obtained_at: float
    refresh_at: float
    usable_until: float
    after_rejection: bool = False
    """Obtained because the control plane refused the token before it (a 401)."""


def lease(granted: Granted, *, sent_at: float, refresh_before_s: float, after_rejection: bool = False) -> Lease:
    """When to refresh and when to stop sending a token obtained by a request sent at `sent_at`.

    The lifetime counts from the request's departure (the endpoint started counting after it).
    Refresh `refresh_before_s` ahead of expiry, but no earlier than half-way through the lifetime,
    so a short-lived token is not exchanged again at once; stop sending it `EXPIRY_MARGIN_S` ahead
    of expiry (a tenth of a short lifetime), so it does not expire on the way."""
    lifetime = granted.lifetime_s
    usable_until = sent_at + lifetime - min(EXPIRY_MARGIN_S, lifetime / 10)
    refresh_at = sent_at + lifetime - min(max(refresh_before_s, 0.0), lifetime / 2)
    return Lease(granted.token, sent_at, min(refresh_at, usable_until), usable_until, after_rejection)


class Decision(enum.Enum):
    USE = "use"
    """The token is good and nothing is due."""
    USE_AND_REFRESH = "use and refresh"
    """The token is good, and an exchange is due: start one without waiting for it."""
    EXCHANGE = "exchange"
    """No usable token: exchange now and wait for the outcome."""
    FAIL = "fail"
    """No usable token, and the last exchange failed moments ago: report that, do not exchange yet."""


class Rejection(enum.Enum):
    """What follows the control plane's refusal of a token."""

    RENEW = "renew"
    """The token is dropped: exchange now; the next request carries the new one."""
    REPLACED = "replaced"
    """Not the current token (already dropped or replaced): the next request carries another."""
    REFUSED_AGAIN = "refused again"
    """A token exchanged because of a refusal was refused too: keep it, back off; no exchange."""


class TokenLifecycle:
    """The access token's life: events in (`granted`, `failed`, `rejected`), decisions out (`decide`).

    One exchange at a time is the caller's part (it runs each EXCHANGE/USE_AND_REFRESH once and
    lets every other caller wait for that one); this class says when one is due. Times are the
    caller's clock readings, in seconds."""

    def __init__(
        self,
        *,
        refresh_before_s: float,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        rejection_pause_s: float = REJECTION_PAUSE_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.refresh_before_s = refresh_before_s
        self._retry_base, self._retry_cap, self._pause = retry_base_s, retry_cap_s, rejection_pause_s
        self._rand = rand
        self.lease: Lease | None = None
        self.failure: Failed | None = None
        """The last exchange's failure, until an exchange succeeds."""
        self._failures = 0
        self._next_attempt = float("-inf")
        self._rejected_pending = False  # the next lease answers a 401
        self._exchange_on_rejection_from = float("-inf")

    def decide(self, now: float) -> Decision:
        usable = self.lease is not None and now < self.lease.usable_until
        may_exchange = now >= self._next_attempt
        if usable:
            assert self.lease is not None
            return Decision.USE_AND_REFRESH if now >= self.lease.refresh_at and may_exchange else Decision.USE
        return Decision.EXCHANGE if may_exchange else Decision.FAIL

    def granted(self, granted: Granted, *, sent_at: float, now: float) -> Lease | None:
        """Record a token from a request sent at `sent_at`; None (and a failure recorded) when its
        lifetime was spent before it arrived, so that it is not exchanged for again and again."""
        new = lease(
            granted, sent_at=sent_at, refresh_before_s=self.refresh_before_s, after_rejection=self._rejected_pending
        )
        if now >= new.usable_until:
            lifetime = f"expires_in {granted.lifetime_s:g}s, answered after {now - sent_at:.1f}s"
            self.failed(Failed(f"the token endpoint issued a token that expired on arrival ({lifetime})"), now=now)
            return None
        self.lease = new
        self._rejected_pending = False
        self.failure, self._failures, self._next_attempt = None, 0, float("-inf")
        return new

    def failed(self, failure: Failed, *, now: float) -> float:
        """Record a failed exchange; returns the pause before the next one (capped exponential,
        half of it jittered so that many gateways do not exchange in step)."""
        self.failure = failure
        ceiling = min(self._retry_cap, self._retry_base * 2.0 ** min(self._failures, 32))
        self._failures += 1
        delay = ceiling / 2 + ceiling / 2 * self._rand()
        self._next_attempt = now + delay
        return delay

    def rejected(self, token: str, *, now: float) -> Rejection:
        """The control plane refused `token` (401/403): what follows (see `Rejection`). A fresh
        exchange follows once per pause, and only for the current token (requests still out with
        an older one, or with this one after it was dropped, do not count twice)."""
        if self.lease is None or self.lease.token != token:
            return Rejection.REPLACED
        if self.lease.after_rejection and now < self._exchange_on_rejection_from:
            return Rejection.REFUSED_AGAIN  # a fresh token was refused too: it is not the token; back off
        self.lease = None
        self._rejected_pending = True
        self._exchange_on_rejection_from = now + self._pause
        self._next_attempt = float("-inf")
        return Rejection.RENEW

    def next_due(self, now: float) -> float:
        """When `decide` will next say something other than USE or FAIL (an exchange comes due):
        the refresh time (not before a failure's pause ends), else the pause's end."""
        if self.lease is not None and now < self.lease.usable_until:
            return min(self.lease.usable_until, max(self.lease.refresh_at, self._next_attempt))
        return max(now, self._next_attempt)

    def retry_in(self, now: float) -> float:
        """Seconds until the next exchange may start (0 when it may start now)."""
        return max(0.0, self._next_attempt - now)

    def problem(self, now: float) -> str | None:
        """Why there is no usable token (None while there is one)."""
        if self.lease is not None and now < self.lease.usable_until:
            return None
        if self.failure is not None:
            return self.failure.reason
        return "no access token yet" if self.lease is None else "the access token expired"

    def status(self, now: float) -> str:
        """The token's state in words (for `/readyz`)."""
        if self.lease is not None and now < self.lease.usable_until:
            text = f"access token valid for {self.lease.usable_until - now:.0f}s"
            if self.failure is not None:
                text += f"; refreshing failed: {self.failure.reason}"
            return text
        return self.problem(now) or "no access token yet"
