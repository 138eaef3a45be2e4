"""An enterprise identity provider's token endpoint on loopback: client credentials and token exchange.

`TokenService` is an aiohttp app on 127.0.0.1:0 (an async context manager) that speaks the standard
form-encoded token endpoint: RFC 6749 §4.4 `client_credentials` and RFC 8693 token exchange (the
subject an access token it issued to a user, `subject_token_type` access_token). Clients authenticate
by HTTP Basic (RFC 6749 §2.3.1). Every token is an RS256 JWT (PyJWT) with `iss`, `sub`, `aud`,
`client_id`, `exp` (and `act` for an exchange, RFC 8693 §4.1); the key is published at `/jwks`, so
tests/support/servers/oauth_resource_server.py verifies them as it would the IdP's. Refusals are
RFC 6749 §5.2 error bodies. It counts every request (`requests`: grant, subject, audience, status)
and writes down every way a client broke the contract in `violations`. The lifetime of the tokens it
issues is set per audience (`lifetimes`), so one test can hold a long-lived and a short-lived one.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.loopback_app import LoopbackApp

CLIENT_CREDENTIALS: Final = "client_credentials"
TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
USER_AUDIENCE: Final = "https://mcp.example/relay"
"""The audience of the tokens users bring (what the relay's channel would be)."""
KID: Final = "token-service-1"


@dataclass
class TokenRequest:
    """One `POST /token`, as the endpoint saw it (no token or secret is kept)."""

    grant: str
    status: int = 0
    error: str | None = None
    subject: str | None = None
    audience: str | None = None
    issued: str | None = field(default=None, repr=False)


class TokenService(LoopbackApp):
    """The token endpoint and its key. `user_token(sub)` mints what a signed-in user would bring."""

    def __init__(self, *, client_id: str, client_secret: str, lifetime_s: float = 3600) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime_s = lifetime_s
        self.lifetimes: dict[str, float] = {}
        """Audience -> lifetime of the tokens issued for it (default `lifetime_s`)."""
        self.refused_subjects: set[str] = set()
        """Users whose tokens are not exchanged (`invalid_grant`)."""
        self.requests: list[TokenRequest] = []
        self.violations: list[str] = []
        self.issued: list[str] = []
        """Every token minted (users' and issued ones), for the secret sweep."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)

    # ------------------------------------------------------------------ for tests

    def user_token(self, subject: str, *, audience: str = USER_AUDIENCE, lifetime_s: float = 3600) -> str:
        return self._mint({"sub": subject, "aud": audience, "client_id": "mcp-client"}, lifetime_s)

    def granted(self, grant: str, subject: str | None = None) -> list[TokenRequest]:
        """The requests of this grant (for this subject) that got a token."""
        return [r for r in self.requests if r.grant == grant and r.status == 200 and subject in (None, r.subject)]

    def counted(self, grant: str) -> int:
        return sum(1 for r in self.requests if r.grant == grant)

    # ------------------------------------------------------------------ the endpoint

    def _mint(self, claims: dict[str, Any], lifetime_s: float) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "iat": now, "exp": now + int(lifetime_s), "jti": secrets.token_hex(8), **claims}
        token = jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": KID})
        self.issued.append(token)
        return token

    async def _jwks(self, request: web.Request) -> web.Response:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return web.json_response({"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]})

    def _error(self, record: TokenRequest, status: int, error: str, description: str) -> web.Response:
        record.status, record.error = status, error
        return web.json_response({"error": error, "error_description": description}, status=status)

    def _client(self, request: web.Request, form: dict[str, str]) -> str | None:
        """The authenticated client id (RFC 6749 §2.3.1 Basic), or None."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            pair = base64.b64decode(encoded, validate=True).decode()
        except ValueError:
            return None
        client_id, _, secret = pair.partition(":")
        if (unquote_plus(client_id), unquote_plus(secret)) != (self.client_id, self.client_secret):
            return None
        if "client_secret" in form:
            self.violations.append("the client secret was sent in the body as well")
        return self.client_id

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            self.violations.append(f"Content-Type {request.content_type!r}")
        form = {name: str(value) for name, value in (await request.post()).items()}
        record = TokenRequest(grant=form.get("grant_type", "?"), audience=form.get("audience"))
        self.requests.append(record)
        if self._client(request, form) is None:
            return self._error(record, 401, "invalid_client", "client authentication failed")
        audience = form.get("audience") or form.get("resource")
        if not audience:
            return self._error(record, 400, "invalid_target", "an audience is required")
        lifetime = self.lifetimes.get(audience, self.lifetime_s)
        if record.grant == CLIENT_CREDENTIALS:
            record.subject = self.client_id
            claims = {"sub": self.client_id, "aud": audience, "client_id": self.client_id}
        elif record.grant == TOKEN_EXCHANGE:
            if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
                self.violations.append(f"subject_token_type {form.get('subject_token_type')!r}")
                return self._error(record, 400, "invalid_request", "subject_token_type must be an access token")
            try:
                user = jwt.decode(
                    form.get("subject_token", ""),
                    self._key.public_key(),
                    algorithms=["RS256"],
                    audience=USER_AUDIENCE,
                    issuer=self.issuer,
                )
            except jwt.PyJWTError as exc:
                return self._error(record, 400, "invalid_grant", f"subject token rejected: {type(exc).__name__}")
            record.subject = user["sub"]
            if user["sub"] in self.refused_subjects:
                return self._error(record, 400, "invalid_grant", f"no delegation for {user['sub']}")
            claims = {"sub": user["sub"], "aud": audience, "client_id": self.client_id, "act": {"sub": self.client_id}}
        else:
            return self._error(record, 400, "unsupported_grant_type", record.grant)
        token = self._mint(claims, lifetime)
        record.status, record.issued = 200, token
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime)}
        if record.grant == TOKEN_EXCHANGE:
            answer["issued_token_type"] = ACCESS_TOKEN_TYPE
        return web.json_response(answer)
