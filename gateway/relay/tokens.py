"""The relay's own access tokens: signing keys from PEM, issuing tokens, verifying any replica's.
Does no I/O and no signature math of its own (PyJWT's); never puts a key or token in a repr or error.

Owns the token format (an RFC 9068-style JWT, `typ: at+jwt`, bound to tunnels by its `tunnels`
claim) and key ids (RFC 7638 thumbprints). Does no I/O; keys and tokens stay out of reprs and
error text. Signatures are PyJWT's, never ours.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import jwt
import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.protocol.errors import GatewayError

ISSUER: Final = "urn:mcp-tunnel-gateway:relay"
"""`iss` of every access token a relay issues (replicas sharing signing keys accept each other's)."""
AUDIENCE: Final = "urn:mcp-tunnel-gateway:tunnel-api"
TOKEN_TYPE: Final = "at+jwt"
MIN_RSA_BITS: Final = 2048
MAX_TOKEN_CHARS: Final = 8192
"""A longer Bearer value is not one of ours (ours are well under 2 KiB)."""

SigningPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_CURVES: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_THUMBPRINT_MEMBERS: Final = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


class SigningKeyError(GatewayError, ValueError):
    """A configured signing key is unusable; the message says why, never the key."""


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """One of the relay's keys: signs (the first configured) or verifies (every one)."""

    kid: str
    algorithm: str
    private: SigningPrivateKey
    public: VerifyingPublicKey

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"


def load_signing_key(pem: str) -> SigningKey:
    """An unencrypted PEM private key (RSA of 2048 bits or more, EC P-256/384/521, Ed25519)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError("not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise SigningKeyError(f"an RSA key needs at least {MIN_RSA_BITS} bits, this one has {key.key_size}")
        rsa_public = key.public_key()
        return SigningKey(thumbprint(RSAAlgorithm.to_jwk(rsa_public, as_dict=True)), "RS256", key, rsa_public)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise SigningKeyError(f"EC keys must use P-256, P-384 or P-521, not {key.curve.name}")
        ec_public = key.public_key()
        return SigningKey(thumbprint(ECAlgorithm.to_jwk(ec_public, as_dict=True)), algorithm, key, ec_public)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        ed_public = key.public_key()
        return SigningKey(thumbprint(OKPAlgorithm.to_jwk(ed_public, as_dict=True)), "EdDSA", key, ed_public)
    raise SigningKeyError("expected an RSA, EC or Ed25519 private key")


def thumbprint(jwk: dict[str, object]) -> str:
    """RFC 7638: the SHA-256 thumbprint of the public key's required JWK members."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[str(jwk["kty"])]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims of a relay access token (RFC 9068 plus `idp` and `tunnels`)."""

    iss: str
    aud: str
    sub: str
    client_id: str
    iat: int
    exp: int
    jti: str
    idp: str
    """The issuer of the subject token this one was exchanged for."""
    tunnels: list[str]


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified access token lets its bearer do."""

    subject: str
    provider: str
    tunnels: frozenset[str]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed access token; its value never shows in a repr."""

    token: str = field(repr=False)
    expires_in: int
    kid: str


class AccessTokens:
    """Signs access tokens with the first key and verifies them with any of `keys`."""

    def __init__(self, keys: Sequence[SigningKey], *, ttl_s: int, clock_skew_s: float) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._signer = keys[0]
        self._by_kid = {key.kid: key for key in keys}
        self._ttl_s = ttl_s
        self._skew_s = clock_skew_s

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._by_kid)

    def issue(self, *, subject: str, provider: str, tunnels: Sequence[str], now: float | None = None) -> IssuedToken:
        issued_at = int(time.time() if now is None else now)
        claims = AccessClaims(
            iss=ISSUER,
            aud=AUDIENCE,
            sub=subject,
            client_id=subject,
            iat=issued_at,
            exp=issued_at + self._ttl_s,
            jti=secrets.token_urlsafe(16),
            idp=provider,
            tunnels=sorted(set(tunnels)),
        )
        signer = self._signer
        token = jwt.encode(
            msgspec.to_builtins(claims),
            signer.private,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": TOKEN_TYPE},
        )
        return IssuedToken(token=token, expires_in=self._ttl_s, kid=signer.kid)

    def verify(self, token: str) -> Grant | None:
        """The grant of a valid, unexpired token signed by one of the keys; None for anything else."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            key = self._by_kid.get(kid) if isinstance(kid, str) else None
            if key is None or header.get("alg") != key.algorithm or header.get("typ") != TOKEN_TYPE:
                return None
            payload = jwt.decode(
                token,
                key.public,
                algorithms=[key.algorithm],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._skew_s,
                options={
                    "require": ["iss", "aud", "sub", "iat", "exp", "jti"],
                    "strict_aud": True,
                    "enforce_minimum_key_length": True,
                },
            )
            claims = msgspec.convert(payload, AccessClaims)
        except (jwt.PyJWTError, msgspec.ValidationError, ValueError, TypeError):
            return None
        return Grant(subject=claims.sub, provider=claims.idp, tunnels=frozenset(claims.tunnels))


def looks_like_jwt(value: str) -> bool:
    """Three dot-separated parts: worth verifying as a token rather than comparing as a key."""
    return value.count(".") == 2 and len(value) <= MAX_TOKEN_CHARS
