"""An OAuth 2.1 authorization server on loopback, built on the official MCP SDK's authorization routes.

Run as a program: binds 127.0.0.1 on a free port, prints `PORT <n>` once the socket listens, then
serves the SDK's `create_auth_routes` (RFC 8414 metadata, `/authorize` with PKCE, `/token`, RFC 7591
dynamic client registration, `/revoke`) with an in-memory provider whose one test user signs in
without a page: `/authorize` approves at once and redirects with the code. Access tokens are JWTs
(RS256, PyJWT) with `iss`, `sub`, `aud` (the RFC 8707 `resource` the client asked for), `exp`,
`scope`, `client_id`; their key is published at `/jwks` (RFC 7517).

    --user NAME        the subject every sign-in gets (default: alice)
    --scope SCOPE      a scope clients may ask for (repeatable; default: notes)
    --lifetime-s N     access token lifetime (default: 3600)

Test-only routes: `GET /test/issued` -> how many access tokens were issued (JSON); `POST /test/mint`
with JSON claims (and optional `"foreign": true`: signed with a key the JWKS does not hold) -> a token
as JSON `{"token": …}`, so a test can present expired, foreign or misdirected tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import sys
import time
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import create_auth_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

KID = "test-key-1"


class AutoApprovingProvider:
    """The SDK's `OAuthAuthorizationServerProvider`, in memory, one test user, approvals automatic."""

    def __init__(self, issuer: str, user: str, lifetime_s: int) -> None:
        self.issuer = issuer
        self.user = user
        self.lifetime_s = lifetime_s
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.issued = 0

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        code = secrets.token_urlsafe(32)
        assert client.client_id is not None
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or [],
            expires_at=time.time() + 300,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject=self.user,  # the test user signed in and approved
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        code = self.codes.get(authorization_code)
        return code if code is not None and code.client_id == client.client_id else None

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        self.codes.pop(authorization_code.code, None)
        return self._tokens(
            authorization_code.client_id, authorization_code.scopes, authorization_code.resource, self.user
        )

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        token = self.refresh.get(refresh_token)
        return token if token is not None and token.client_id == client.client_id else None

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        self.refresh.pop(refresh_token.token, None)
        return self._tokens(refresh_token.client_id, scopes or refresh_token.scopes, refresh_token.resource, self.user)

    async def load_access_token(self, token: str) -> AccessToken | None:
        try:
            claims = jwt.decode(
                token, self.key.public_key(), algorithms=["RS256"], issuer=self.issuer, options={"verify_aud": False}
            )
        except jwt.PyJWTError:
            return None
        return AccessToken(
            token=token,
            client_id=claims["client_id"],
            scopes=claims.get("scope", "").split(),
            expires_at=claims["exp"],
            resource=claims.get("aud"),
            subject=claims["sub"],
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        if isinstance(token, RefreshToken):
            self.refresh.pop(token.token, None)

    async def exchange_identity_assertion(self, *args: Any, **kwargs: Any) -> OAuthToken:
        raise TokenError("unsupported_grant_type", "no identity assertions here")

    def _tokens(self, client_id: str, scopes: list[str], resource: str | None, subject: str) -> OAuthToken:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "iat": now,
            "exp": now + self.lifetime_s,
            "scope": " ".join(scopes),
            "client_id": client_id,
            "jti": secrets.token_hex(8),
        }
        if resource is not None:
            claims["aud"] = resource
        access = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})
        refresh = secrets.token_urlsafe(32)
        self.refresh[refresh] = RefreshToken(
            token=refresh, client_id=client_id, scopes=scopes, resource=resource, subject=subject
        )
        self.issued += 1
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=self.lifetime_s,
            scope=" ".join(scopes) or None,
            refresh_token=refresh,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", default="alice")
    parser.add_argument("--scope", action="append", default=None)
    parser.add_argument("--lifetime-s", type=int, default=3600)
    args = parser.parse_args()
    scopes = args.scope or ["notes"]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    provider = AutoApprovingProvider(issuer, args.user, args.lifetime_s)

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(provider.jwks())

    async def issued(request: Request) -> JSONResponse:
        return JSONResponse({"issued": provider.issued})

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def mint(request: Request) -> JSONResponse:
        claims = await request.json()
        key = foreign if claims.pop("foreign", False) else provider.key
        claims.setdefault("iss", issuer)
        return JSONResponse({"token": jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})})

    routes = create_auth_routes(
        provider,
        AnyHttpUrl(issuer),
        client_registration_options=ClientRegistrationOptions(enabled=True, valid_scopes=scopes, default_scopes=scopes),
        revocation_options=RevocationOptions(enabled=True),
    )
    extra = [Route("/jwks", jwks), Route("/test/issued", issued), Route("/test/mint", mint, methods=["POST"])]
    app = Starlette(routes=[*routes, *extra])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    print(f"PORT {port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
    sys.exit(0)


if __name__ == "__main__":
    main()
