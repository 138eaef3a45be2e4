"""routing.yaml's `servers.X.http.service_credential`: a token the gateway obtains for a server.
Shapes and load-time checks only; builds nothing and resolves no secret (`client_secret` stays a reference).

Exactly one of `client_credentials` (RFC 6749 §4.4: one token shared by every caller) or
`token_exchange` (RFC 8693: each user's token exchanged for one with the server's audience, "on
behalf of"); either way the user's own `Authorization` header is never sent to the server.
"""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta

from gateway.config.base import Frozen
from gateway.protocol.errors import ConfigError

SECRET_REFS: Final = ("env:", "file:")


class ClientCredentialsSpec(Frozen, frozen=True, kw_only=True):
    """The gateway's own client: one service token for every caller of the server."""

    token_url: str
    client_id: Annotated[str, Meta(min_length=1)]
    client_secret: str
    """`env:VAR` or `file:/path` (a literal works too, and is masked in logs like the rest)."""
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None
    """RFC 8707: the server's resource URI."""


class TokenExchangeSpec(Frozen, frozen=True, kw_only=True):
    """Each user's bearer token exchanged (RFC 8693 §2.1, subject_token_type access_token) for one
    the server accepts; cached per user until it expires."""

    token_url: str
    client_id: str | None = None
    client_secret: str | None = None
    """`env:VAR` or `file:/path`; with it the gateway authenticates by HTTP Basic (RFC 6749 §2.3.1)."""
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    requested_token_type: str | None = None


class ServiceCredentialSpec(Frozen, frozen=True, kw_only=True):
    """`service_credential:` under a server's `http:`."""

    client_credentials: ClientCredentialsSpec | None = None
    token_exchange: TokenExchangeSpec | None = None
    refresh_before_s: Annotated[float, Meta(ge=0)] = 60.0
    """Obtain a new token this long before the cached one expires (at most half its lifetime)."""
    max_cached_users: Annotated[int, Meta(ge=1)] = 4096
    """`token_exchange`: users whose exchanged token is kept at once (the least recently used goes)."""

    @property
    def grant(self) -> ClientCredentialsSpec | TokenExchangeSpec:
        chosen = self.client_credentials or self.token_exchange
        assert chosen is not None, "checked at load"
        return chosen


def check(spec: ServiceCredentialSpec, file: str, key: str) -> str:
    """Checks msgspec cannot express; returns the key of the chosen grant (for its URL's check)."""
    if (spec.client_credentials is None) == (spec.token_exchange is None):
        raise ConfigError(file, key, "exactly one of `client_credentials` or `token_exchange`")
    if spec.client_credentials is not None:
        grant_key = f"{key}.client_credentials"
        if spec.client_credentials.client_secret in ("", *SECRET_REFS):
            raise ConfigError(file, f"{grant_key}.client_secret", "a secret reference (env:VAR, file:/path)")
        return grant_key
    assert spec.token_exchange is not None
    grant_key = f"{key}.token_exchange"
    exchange = spec.token_exchange
    if exchange.client_secret is not None and not exchange.client_id:
        raise ConfigError(file, f"{grant_key}.client_id", "a client id to go with `client_secret`")
    if exchange.client_secret in ("", *SECRET_REFS):
        raise ConfigError(file, f"{grant_key}.client_secret", "a secret reference (env:VAR, file:/path)")
    return grant_key


def who_authorizes(spec: ServiceCredentialSpec | None) -> str:
    """Where the token of a server that wants authorization comes from, in the start-up line's words."""
    if spec is None:
        return "clients bring their own token"
    if spec.client_credentials is not None:
        return "the gateway sends its client-credentials token"
    return "the gateway exchanges each user's token for one with the server's audience"
