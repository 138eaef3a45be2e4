"""A server's service credential without I/O: the token request bodies, and the cache of what they got.
Sans-IO: no asyncio, no aiohttp; a user's token is a cache key only as its SHA-256, never kept.

Owns the RFC 6749 §4.4 client-credentials and RFC 8693 §2.1 token-exchange ("on behalf of") form
bodies, client authentication by HTTP Basic (RFC 6749 §2.3.1), the user's bearer token read from a
request's headers and the `Authorization` header replaced, and `TokenCache`: leases per key (one
for client credentials, one per user for an exchange), bounded, dropped at expiry, refreshed
`refresh_before_s` ahead of it (the schedule is gateway.protocol.workload_identity's `lease`),
and `Pauses`, the failures a key's callers hear for a moment instead of a new request.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from typing import Final, Generic, TypeVar
from urllib.parse import quote_plus, urlencode

from gateway.protocol.headers import AUTHORIZATION
from gateway.protocol.oauth_tokens import Granted
from gateway.protocol.wire import Headers
from gateway.protocol.workload_identity import GRANT_TYPE as TOKEN_EXCHANGE
from gateway.protocol.workload_identity import Lease, lease

CLIENT_CREDENTIALS: Final = "client_credentials"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
FORM: Final = "application/x-www-form-urlencoded"
SHARED: Final = ""
"""The cache key of a client-credentials token: one token for every caller."""
MAX_CACHED_USERS: Final = 4096
FAILURE_PAUSE_S: Final = 2.0
"""After a request for a key failed, callers with that key hear the same failure this long
(a flood of calls with a refused token, or at an endpoint that is down, is not a flood of requests)."""

T = TypeVar("T")


# --------------------------------------------------------------------------- requests


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The `Authorization` value of RFC 6749 §2.3.1: id and secret each form-encoded, then Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _form(members: dict[str, str | None]) -> bytes:
    return urlencode({name: value for name, value in members.items() if value is not None}).encode("ascii")


def client_credentials_form(
    *, scope: str | None = None, audience: str | None = None, resource: str | None = None
) -> bytes:
    """An RFC 6749 §4.4.2 request body (`audience` as RFC 8693 names it, `resource` per RFC 8707)."""
    return _form({"grant_type": CLIENT_CREDENTIALS, "scope": scope, "audience": audience, "resource": resource})


def token_exchange_form(
    subject_token: str,
    *,
    audience: str | None = None,
    resource: str | None = None,
    scope: str | None = None,
    requested_token_type: str | None = None,
    client_id: str | None = None,
) -> bytes:
    """An RFC 8693 §2.1 request body: the user's access token exchanged for one for this server.

    `client_id` goes in the body only for a client without a secret (RFC 6749 §3.2.1); one with a
    secret authenticates by `basic_authorization` instead."""
    members = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": audience,
        "resource": resource,
        "scope": scope,
        "requested_token_type": requested_token_type,
        "client_id": client_id,
    }
    return _form(members)


# --------------------------------------------------------------------------- headers


def bearer_token(headers: Headers) -> str | None:
    """The user's bearer token (RFC 6750 §2.1: `Authorization: Bearer <token>`, scheme in any case);
    None when there is none, or more than one `Authorization` value."""
    values = [value for name, found in headers.items() if name.lower() == AUTHORIZATION.lower() for value in found]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def with_bearer(headers: Headers, token: str) -> Headers:
    """`headers` with every `Authorization` value (any case of the name) replaced by `Bearer token`."""
    kept = {name: values for name, values in headers.items() if name.lower() != AUTHORIZATION.lower()}
    return {**kept, AUTHORIZATION: [f"Bearer {token}"]}


def user_key(token: str) -> str:
    """A user's cache key: the SHA-256 of their token (the token itself is never kept)."""
    return hashlib.sha256(token.encode()).hexdigest()


# --------------------------------------------------------------------------- the cache


class TokenCache:
    """Leases by key, at most `max_entries` (the least recently used goes first), none past its
    `usable_until`. Times are the caller's clock readings, in seconds."""

    def __init__(self, *, refresh_before_s: float, max_entries: int = MAX_CACHED_USERS) -> None:
        self.refresh_before_s = refresh_before_s
        self.max_entries = max(1, max_entries)
        self._leases: OrderedDict[str, Lease] = OrderedDict()

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, key: str, now: float) -> Lease | None:
        """The key's lease while it is usable (an expired one is dropped)."""
        found = self._leases.get(key)
        if found is None:
            return None
        if now >= found.usable_until:
            del self._leases[key]
            return None
        self._leases.move_to_end(key)
        return found

    @staticmethod
    def due(found: Lease, now: float) -> bool:
        """Time to refresh this lease (it is still usable meanwhile)."""
        return now >= found.refresh_at

    def put(self, key: str, granted: Granted, *, sent_at: float, now: float) -> Lease | None:
        """Keep a token obtained by a request sent at `sent_at`; None when it expired on the way."""
        new = lease(granted, sent_at=sent_at, refresh_before_s=self.refresh_before_s)
        if now >= new.usable_until:
            return None
        self._leases[key] = new
        self._leases.move_to_end(key)
        if len(self._leases) > self.max_entries:
            self._sweep(now)
        while len(self._leases) > self.max_entries:
            self._leases.popitem(last=False)
        return new

    def drop(self, key: str, token: str) -> bool:
        """Forget the key's lease if it still holds `token` (the server refused it); True if it did."""
        found = self._leases.get(key)
        if found is None or found.token != token:
            return False
        del self._leases[key]
        return True

    def _sweep(self, now: float) -> None:
        for key in [key for key, found in self._leases.items() if now >= found.usable_until]:
            del self._leases[key]


class Pauses(Generic[T]):
    """The last failure per key, kept `pause_s` after it happened, at most `max_entries` keys."""

    def __init__(self, *, pause_s: float = FAILURE_PAUSE_S, max_entries: int = MAX_CACHED_USERS) -> None:
        self.pause_s = pause_s
        self.max_entries = max(1, max_entries)
        self._failures: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def note(self, key: str, failure: T, now: float) -> None:
        self._failures[key] = (now + self.pause_s, failure)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def get(self, key: str, now: float) -> T | None:
        """The key's failure while its pause lasts (an ended one is dropped)."""
        found = self._failures.get(key)
        if found is None:
            return None
        until, failure = found
        if now >= until:
            del self._failures[key]
            return None
        return failure

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
