"""A platform that issues subject tokens, and a token endpoint that exchanges them, on loopback.

`SubjectIssuer` mints real signed JWTs (an RSA key generated in the test, signed by PyJWT) the way
a platform does: a Kubernetes projected service-account token, a Google or Azure token, a
JWT-SVID. `TokenEndpoint` is OpenAI's workload-identity token endpoint as its reference describes
it (`POST /oauth/token`, RFC 8693): it checks every member of the JSON body (grant type, subject
token type, the subject token's signature, issuer, audience and lifetime, the identity provider
and the service account), issues opaque access tokens with the lifetime it is told (down to a few
seconds), answers refusals with RFC 6749 error bodies, and can be told to refuse, to fail, to
slow down or to revoke what it issued. It counts exchanges in flight at once, and writes down
every way the gateway broke the exchange's contract in `violations`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES: Final = {
    "urn:ietf:params:oauth:token-type:jwt": "jwt",
    "urn:ietf:params:oauth:token-type:id_token": "id_token",
}
MEMBERS: Final = frozenset(
    {"grant_type", "subject_token_type", "subject_token", "identity_provider_id", "service_account_id"}
)
KUBERNETES_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
OPENAI_AUDIENCE: Final = "https://api.openai.com/v1"
GATEWAY_SUBJECT: Final = "system:serviceaccount:segment-a:mcp-gateway"


def now() -> float:
    return time.monotonic()


class SubjectIssuer:
    """A platform's token issuer: one RSA key, made in the test; every token it mints is kept (for
    the secret sweep)."""

    def __init__(self, issuer: str = KUBERNETES_ISSUER, *, audience: str = OPENAI_AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = uuid.uuid4().hex[:16]
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.minted: list[str] = []

    def mint(
        self, subject: str = GATEWAY_SUBJECT, *, lifetime_s: float = 3600, audience: str | None = None, **claims: Any
    ) -> str:
        issued = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(lifetime_s),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        token = jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})
        self.minted.append(token)
        return token

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token this issuer signed for `audience`; raises jwt.InvalidTokenError."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        return claims


@dataclass
class Exchange:
    """One `POST /oauth/token`, as the endpoint saw it (the subject token itself is not kept)."""

    arrived: float
    finished: float | None = None
    status: int | None = None
    error: str | None = None
    subject: str | None = None
    """The subject token's `sub`, when it verified."""
    jti: str | None = None
    subject_token_type: str | None = None
    access_token: str | None = field(default=None, repr=False)


class TokenEndpoint:
    """OpenAI's token exchange on 127.0.0.1:0 (HTTPS with `ssl_context`). An async context manager."""

    def __init__(
        self,
        issuer: SubjectIssuer,
        *,
        identity_provider_id: str = "idp_test_0001",
        service_account_id: str = "svcacct_test_0001",
        lifetime_s: float = 3600,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.issuer = issuer
        self.identity_provider_id = identity_provider_id
        self.service_account_id = service_account_id
        self.lifetime_s = lifetime_s
        """`expires_in` of the tokens it issues from now on."""
        self.refusal: tuple[int, str, str] | None = None
        self.delay_s = 0.0
        """Hold each exchange this long before answering (to see how many run at once)."""
        self.echo_subject = False
        """Quote the subject token in refusals (a careless endpoint; the gateway must not repeat it)."""
        self.exchanges: list[Exchange] = []
        self.violations: list[str] = []
        self.issued: dict[str, float] = {}
        """Access token -> when it expires (monotonic)."""
        self.revoked: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.peer_certs: list[dict[str, Any] | None] = []
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifetime

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}/oauth/token"

    async def __aenter__(self) -> TokenEndpoint:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ scripting

    def refuse(self, error: str = "invalid_grant", description: str = "subject token not accepted") -> None:
        """Answer every exchange 400 with this RFC 6749 error until `accept()`."""
        self.refusal = (400, error, description)

    def fail(self, status: int = 503, error: str = "temporarily_unavailable") -> None:
        self.refusal = (status, error, "try again later")

    def accept(self) -> None:
        self.refusal = None

    def revoke(self, token: str | None = None) -> None:
        """Revoke one issued token (every one when None): the control plane refuses it from now on."""
        self.revoked |= {token} if token is not None else set(self.issued)

    def valid(self, token: str) -> bool:
        """Issued here, not expired, not revoked: what the control plane double accepts."""
        expires = self.issued.get(token)
        return expires is not None and now() < expires and token not in self.revoked

    def granted(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.access_token is not None]

    def tokens(self) -> Iterator[str]:
        """Every access token issued (for the secret sweep)."""
        yield from self.issued

    async def until(self, predicate: Any, within_s: float = 30.0, what: str = "condition") -> None:
        async with asyncio.timeout(within_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # ------------------------------------------------------------------ the endpoint

    def _error(self, exchange: Exchange, status: int, error: str, description: str) -> web.Response:
        exchange.status, exchange.error = status, error
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def _token(self, request: web.Request) -> web.Response:
        exchange = Exchange(now())
        self.exchanges.append(exchange)
        if request.transport is not None:
            self.peer_certs.append(request.transport.get_extra_info("peercert"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._changed.set()
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self._answer(request, exchange)
        finally:
            self.in_flight -= 1
            exchange.finished = now()
            self._changed.set()

    async def _answer(self, request: web.Request, exchange: Exchange) -> web.Response:
        where = f"exchange {len(self.exchanges) - 1}"
        if request.content_type != "application/json":
            self.violations.append(f"{where}: Content-Type {request.content_type!r}, not application/json")
            return self._error(exchange, 400, "invalid_request", "expected a JSON body")
        if "application/json" not in request.headers.get("Accept", ""):
            self.violations.append(f"{where}: Accept does not name application/json")
        if request.headers.get("Authorization"):
            self.violations.append(f"{where}: an Authorization header was sent to the token endpoint")
        try:
            body = json.loads(await request.read())
        except ValueError:
            self.violations.append(f"{where}: the body is not JSON")
            return self._error(exchange, 400, "invalid_request", "malformed JSON")
        if not isinstance(body, dict) or set(body) != MEMBERS:
            members = sorted(body) if isinstance(body, dict) else type(body).__name__
            self.violations.append(f"{where}: members {members}, expected {sorted(MEMBERS)}")
            return self._error(exchange, 400, "invalid_request", "missing or unexpected parameters")
        if not all(isinstance(value, str) and value for value in body.values()):
            self.violations.append(f"{where}: a member is not a non-empty string")
            return self._error(exchange, 400, "invalid_request", "parameters must be non-empty strings")
        if body["grant_type"] != GRANT_TYPE:
            self.violations.append(f"{where}: grant_type {body['grant_type']!r}")
            return self._error(exchange, 400, "unsupported_grant_type", "token exchange only")
        exchange.subject_token_type = TOKEN_TYPES.get(body["subject_token_type"])
        if exchange.subject_token_type is None:
            self.violations.append(f"{where}: subject_token_type {body['subject_token_type']!r}")
            return self._error(exchange, 400, "invalid_request", "unsupported subject_token_type")
        if self.refusal is not None:
            status, error, description = self.refusal
            if self.echo_subject:
                description = f"{description}: {body['subject_token']}"
            return self._error(exchange, status, error, description)
        if body["identity_provider_id"] != self.identity_provider_id:
            self.violations.append(f"{where}: identity_provider_id {body['identity_provider_id']!r}")
            return self._error(exchange, 400, "invalid_grant", "unknown identity provider")
        try:
            claims = self.issuer.verify(body["subject_token"], self.issuer.audience)
        except jwt.InvalidTokenError as exc:
            return self._error(exchange, 400, "invalid_grant", f"subject token rejected: {type(exc).__name__}")
        exchange.subject, exchange.jti = claims["sub"], claims.get("jti")
        if body["service_account_id"] != self.service_account_id:
            self.violations.append(f"{where}: service_account_id {body['service_account_id']!r}")
            return self._error(exchange, 400, "invalid_grant", "no mapping to that service account")
        token = f"wif-at-{len(self.issued) + 1:04d}-{secrets.token_urlsafe(18)}"
        self.issued[token] = now() + self.lifetime_s
        exchange.status, exchange.access_token = 200, token
        return web.json_response(
            {
                "access_token": token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": int(self.lifetime_s) if float(self.lifetime_s).is_integer() else self.lifetime_s,
            }
        )
