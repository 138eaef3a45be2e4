"""Workload identity for the relay: RFC 8693 token exchange policy and the access tokens it yields.
Knows nothing of HTTP bodies; no refusal it raises holds a token or a key.

Owns verifying a subject token (signature against its issuer's JWKS, `iss`, `aud`, `exp`, `nbf`,
`iat` with bounded skew, `alg` from the issuer's allowlist), mapping its subject to tunnels,
issuing the access token, and deciding which tunnels a presented access token may use now.
Knows nothing of HTTP bodies; every refusal is a TokenError whose text holds no token or key.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import jwt
import msgspec

from gateway.config.proxy import choose_proxy
from gateway.config.secrets import SecretError, resolve
from gateway.relay.callers import TrustedProxies
from gateway.relay.config import IdentitySpec, IssuerSpec, RelayConfigError
from gateway.relay.errors import (
    InvalidGrant,
    IssuerUnavailable,
    TokenError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from gateway.relay.jwks import FileSource, HttpClient, IssuerKeys, JwksSource, JwksUnavailable, UrlSource, refreshed
from gateway.relay.tokens import AccessTokens, IssuedToken, SigningKeyError, load_signing_key, looks_like_jwt

log = logging.getLogger("gateway.relay")

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN: Final = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_ACCESS: Final = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES: Final = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN})
MAX_SUBJECT_TOKEN_CHARS: Final = 16 * 1024
_UNSAFE: Final = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
"""Characters RFC 6749 does not allow in `error_description`."""


def describe(text: str, limit: int = 200) -> str:
    """Configured text (an issuer, a tunnel id) made fit for `error_description` and one log line."""
    return _UNSAFE.sub("?", text[:limit])


class TokenRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The parameters of a token request (RFC 8693 section 2.1, plus OpenAI's two); others are ignored."""

    grant_type: str | None = None
    subject_token_type: str | None = None
    subject_token: str | None = None
    identity_provider_id: str | None = None
    service_account_id: str | None = None
    """When sent: one tunnel of the subject's, and the token is bound to that one alone."""
    requested_token_type: str | None = None
    actor_token: str | None = None


class SubjectClaims(msgspec.Struct, frozen=True):
    """What the relay reads of a verified subject token."""

    iss: str
    sub: str


@dataclass(frozen=True, slots=True)
class Exchanged:
    """A granted exchange: the token and what it was granted for (for the log line)."""

    issued: IssuedToken
    subject: str
    issuer: str
    tunnels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    spec: IssuerSpec
    keys: IssuerKeys

    @property
    def provider_id(self) -> str:
        return self.spec.id if self.spec.id is not None else self.spec.issuer


_SIGNATURE_ERRORS: Final = (jwt.InvalidSignatureError,)
_CLAIM_ERRORS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "the subject token has expired"),
    (jwt.ImmatureSignatureError, "the subject token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "the subject token's audience (aud) is not this relay's"),
    (jwt.InvalidIssuerError, "the subject token's issuer (iss) is not trusted by this relay"),
    (jwt.InvalidAlgorithmError, "the subject token's signing algorithm (alg) is not allowed"),
    (jwt.InvalidKeyError, "the issuer's key for this token is unusable (type, curve or size)"),
)


def _claim_error(exc: jwt.PyJWTError) -> InvalidGrant:
    """PyJWT's verdict as the relay's own words (PyJWT's texts are never passed on)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidGrant(f"the subject token lacks the {describe(exc.claim, 20)} claim")
    for kind, text in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return InvalidGrant(text)
    if isinstance(exc, jwt.InvalidSignatureError):
        return InvalidGrant("the subject token's signature does not verify")
    return InvalidGrant("the subject token is not a valid JWT")


class TokenExchange:
    """Subject token in, access token out; the policy of `identity:`."""

    def __init__(self, issuers: Sequence[TrustedIssuer], tokens: AccessTokens, *, clock_skew_s: float) -> None:
        self._issuers = {issuer.spec.issuer: issuer for issuer in issuers}
        self._tokens = tokens
        self._skew_s = clock_skew_s

    async def exchange(self, request: TokenRequest) -> Exchanged:
        """Raises the TokenError the request earns."""
        if not request.grant_type:
            raise TokenError("grant_type is required")
        if request.grant_type != GRANT_TYPE:
            raise UnsupportedGrantType()
        if not request.subject_token:
            raise TokenError("subject_token is required")
        if request.subject_token_type not in SUBJECT_TOKEN_TYPES:
            raise TokenError(f"subject_token_type must be {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}")
        if request.requested_token_type not in (None, TOKEN_TYPE_ACCESS):
            raise TokenError(f"requested_token_type must be {TOKEN_TYPE_ACCESS} when sent")
        if request.actor_token:
            raise TokenError("actor_token (delegation) is not supported")
        issuer, claims = await self._verify(request.subject_token, request.identity_provider_id)
        tunnels = issuer.spec.subjects.get(claims.sub)
        if tunnels is None:
            raise UnauthorizedClient(f"the subject is not allowed any tunnel by issuer {describe(issuer.spec.issuer)}")
        if request.service_account_id is not None:
            if request.service_account_id not in tunnels:
                raise UnauthorizedClient("the subject may not use the tunnel service_account_id names")
            tunnels = [request.service_account_id]
        issued = self._tokens.issue(subject=claims.sub, provider=issuer.spec.issuer, tunnels=tunnels)
        return Exchanged(issued, claims.sub, issuer.spec.issuer, tuple(sorted(set(tunnels))))

    async def _verify(self, token: str, provider_id: str | None) -> tuple[TrustedIssuer, SubjectClaims]:
        if len(token) > MAX_SUBJECT_TOKEN_CHARS:
            raise InvalidGrant(f"the subject token is longer than {MAX_SUBJECT_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidGrant("the subject token is not a well-formed JWT") from None
        iss, alg, kid = unverified.get("iss"), header.get("alg"), header.get("kid")
        if not isinstance(iss, str):
            raise InvalidGrant("the subject token has no iss claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise InvalidGrant("the subject token's issuer (iss) is not trusted by this relay")
        if provider_id is not None and provider_id != issuer.provider_id:
            raise InvalidGrant("the subject token was not issued by the provider identity_provider_id names")
        if not isinstance(alg, str) or alg not in issuer.spec.algorithms:
            raise InvalidGrant("the subject token's signing algorithm (alg) is not allowed")
        if kid is not None and not isinstance(kid, str):
            raise InvalidGrant("the subject token is not a well-formed JWT")
        try:
            keys = await issuer.keys.lookup(kid, alg)
        except JwksUnavailable:
            raise IssuerUnavailable(
                f"the signing keys of issuer {describe(iss)} cannot be fetched right now; retry later"
            ) from None
        if not keys and issuer.keys.knows(kid):
            raise InvalidGrant("the subject token's algorithm (alg) does not fit its issuer's key")
        if not keys:
            raise InvalidGrant("the subject token's signing key (kid) is not in its issuer's key set")
        failure: jwt.PyJWTError | None = None
        for key in keys:
            try:
                payload = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=issuer.spec.audience,
                    issuer=issuer.spec.issuer,
                    leeway=self._skew_s,
                    options={"require": ["iss", "aud", "sub", "exp"], "enforce_minimum_key_length": True},
                )
            except _SIGNATURE_ERRORS as exc:
                failure = exc  # a kid-less token: another key of the issuer's may fit
                continue
            except jwt.PyJWTError as exc:
                raise _claim_error(exc) from None
            except (ValueError, TypeError):
                raise InvalidGrant("the subject token is not a valid JWT") from None
            try:
                return issuer, msgspec.convert(payload, SubjectClaims)
            except msgspec.ValidationError:
                raise InvalidGrant("the subject token's iss and sub must be strings") from None
        assert failure is not None
        raise _claim_error(failure)


class Identity:
    """The relay's identity runtime: the exchange, the access tokens, and the issuers' key caches.

    `lifetime()` (the app's cleanup context) runs the key caches' refresh tasks and the HTTP
    client they fetch with, and ends both.
    """

    def __init__(self, spec: IdentitySpec, *, source: str = "<relay config>", keys_of: Identity | None = None) -> None:
        """`keys_of`: a running Identity whose issuers' key caches (and HTTP client) this one shares,
        for a reload (only the first one's `lifetime()` runs; gateway.relay.reload checks that each
        issuer's key source is unchanged)."""
        self.spec = spec
        self.trusted_proxies = TrustedProxies(spec.trusted_proxies)
        """Whose `X-Forwarded-For` the token endpoint believes when it budgets a caller."""
        keys = []
        for index, ref in enumerate(spec.signing_keys):
            key_path = f"$.identity.signing_keys[{index}]"
            try:
                keys.append(load_signing_key(resolve(ref).reveal()))
            except (SecretError, SigningKeyError) as exc:
                raise RelayConfigError(source, key_path, str(exc)) from None
        self.tokens = AccessTokens(keys, ttl_s=spec.token_ttl_s, clock_skew_s=spec.clock_skew_s)
        self._client: HttpClient = HttpClient() if keys_of is None else keys_of._client
        held = {} if keys_of is None else {issuer.spec.issuer: issuer.keys for issuer in keys_of.issuers}
        self.issuers: list[TrustedIssuer] = [
            TrustedIssuer(issuer, held.get(issuer.issuer) or self._keys(issuer, f"$.identity.issuers[{index}]", source))
            for index, issuer in enumerate(spec.issuers)
        ]
        self.exchange = TokenExchange(self.issuers, self.tokens, clock_skew_s=spec.clock_skew_s)
        self._subjects = {issuer.issuer: issuer.subjects for issuer in spec.issuers}

    def _keys(self, spec: IssuerSpec, key_path: str, source: str) -> IssuerKeys:
        jwks: JwksSource
        if spec.jwks_url is not None:
            context = None
            if spec.jwks_ca_file is not None:
                try:
                    context = ssl.create_default_context(cafile=spec.jwks_ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise RelayConfigError(source, f"{key_path}.jwks_ca_file", f"unusable CA bundle ({exc})") from None
            if spec.jwks_token is not None:
                try:
                    resolve(spec.jwks_token)
                except SecretError as exc:
                    raise RelayConfigError(source, f"{key_path}.jwks_token", str(exc)) from None
            jwks = UrlSource(
                spec.jwks_url,
                self._client,
                timeout_s=spec.jwks_timeout_s,
                ssl_context=context,
                token_ref=spec.jwks_token,
                proxy=choose_proxy(spec.jwks_url, spec.jwks_proxy),
            )
        else:
            assert spec.jwks_file is not None
            jwks = FileSource(spec.jwks_file)
        return IssuerKeys(spec.issuer, jwks, refresh_s=spec.jwks_refresh_s, cooldown_s=spec.jwks_cooldown_s)

    def tunnels_for(self, token: str) -> frozenset[str] | None:
        """The tunnels a presented access token may use now: those it is bound to that its subject is
        still allowed by the current `identity:` (a subject removed from the config loses them at once).
        None when it is not a valid access token of this relay's keys."""
        if not looks_like_jwt(token):
            return None
        grant = self.tokens.verify(token)
        if grant is None:
            return None
        allowed = self._subjects.get(grant.provider, {}).get(grant.subject, ())
        return grant.tunnels.intersection(allowed)

    @contextlib.asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        """Refresh the issuers' keys while the relay serves."""
        async with refreshed(self._client, [issuer.keys for issuer in self.issuers]):
            yield
