"""An OAuth-protected MCP server over Streamable HTTP, built on the official MCP SDK's resource-server auth.

Run as a program: binds 127.0.0.1 on a free port, prints `PORT <n>` once the socket listens, then
serves `/mcp` behind the SDK's `RequireAuthMiddleware` (401 with `WWW-Authenticate: Bearer
resource_metadata="…"` without a valid token, RFC 6750 §3 / RFC 9728 §5.1) and its RFC 9728 metadata
at `/.well-known/oauth-protected-resource/mcp` (its `resource` is this private URL, as a server behind
a tunnel knows no better). Tokens are verified one of two ways:

    --issuer URL --jwks URL --audience URL   JWTs from tests/support/servers/oauth_authorization_server.py,
                                             signature by its JWKS, `iss`, `exp`, and `aud` one of the
                                             given URLs (the public URL the client was told)
    --static TOKEN=SUBJECT                   fixed tokens (repeatable), for tests without a server
    --scope SCOPE                            a required scope (repeatable)
    --legacy-only                            refuse 2026-07-28 requests (400), as a handshake-era server

Tools: `whoami` (the caller's subject, client, audience and a SHA-256 of the token the server saw), `echo`.
Test-only route: `GET /test/requests` -> `{"total": n, "authorized": m, "tokens": [sha256, …]}`, the
POSTs to /mcp seen, how many carried an `Authorization` header, and the SHA-256 of each distinct bearer
token they carried (so a test can prove a request, or a token, never reached the server).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import sys
from typing import Any

import httpx2
import jwt
import uvicorn
from asgi_json import json_answer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl

MODERN = b"2026-07-28"


class JwtVerifier:
    """The SDK's `TokenVerifier`: a JWT checked against the issuer's JWKS (fetched once, on first use)."""

    def __init__(self, issuer: str, jwks_url: str, audiences: list[str]) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audiences = audiences
        self.keys: dict[str, Any] | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        if self.keys is None:
            async with httpx2.AsyncClient() as http:
                document = (await http.get(self.jwks_url)).json()
            self.keys = {key["kid"]: jwt.PyJWK(key) for key in document["keys"]}
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys[kid]
            claims = jwt.decode(token, key, algorithms=["RS256"], issuer=self.issuer, audience=self.audiences, leeway=5)
        except (jwt.PyJWTError, KeyError):
            return None
        return AccessToken(
            token=token,
            client_id=claims.get("client_id", ""),
            scopes=claims.get("scope", "").split(),
            expires_at=claims["exp"],
            resource=claims.get("aud"),
            subject=claims["sub"],
        )


class StaticVerifier:
    def __init__(self, tokens: dict[str, str], scopes: list[str]) -> None:
        self.tokens = tokens
        self.scopes = scopes

    async def verify_token(self, token: str) -> AccessToken | None:
        subject = self.tokens.get(token)
        if subject is None:
            return None
        return AccessToken(token=token, client_id="static", scopes=self.scopes, subject=subject)


class TestRoutes:
    """ASGI wrapper: counts POSTs to /mcp, serves /test/requests, optionally refuses 2026-07-28."""

    def __init__(self, app: Any, *, legacy_only: bool) -> None:
        self.app = app
        self.legacy_only = legacy_only
        self.total = 0
        self.authorized = 0
        self.tokens: dict[str, None] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/test/requests":
            counts = {"total": self.total, "authorized": self.authorized, "tokens": list(self.tokens)}
            await json_answer(send, 200, json.dumps(counts).encode())
            return
        headers = dict(scope["headers"])
        if scope["path"] == "/mcp" and scope["method"] == "POST":
            self.total += 1
            self.authorized += b"authorization" in headers
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() == b"bearer":
                self.tokens[hashlib.sha256(token.strip()).hexdigest()] = None
        if self.legacy_only and headers.get(b"mcp-protocol-version") == MODERN:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Unsupported protocol version"}}'
            await json_answer(send, 400, body)
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--issuer")
    parser.add_argument("--jwks")
    parser.add_argument("--audience", action="append", default=[])
    parser.add_argument("--static", action="append", default=[])
    parser.add_argument("--scope", action="append", default=[])
    parser.add_argument("--legacy-only", action="store_true")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]

    verifier: JwtVerifier | StaticVerifier
    if args.static:
        verifier = StaticVerifier(dict(item.split("=", 1) for item in args.static), args.scope)
        issuer = args.issuer or "http://127.0.0.1:9/"
    else:
        verifier = JwtVerifier(args.issuer, args.jwks, args.audience)
        issuer = args.issuer
    mcp = MCPServer(
        "oauth-protected-server",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(issuer),
            resource_server_url=AnyHttpUrl(f"http://127.0.0.1:{port}/mcp"),
            required_scopes=args.scope or None,
            validate_token_resource=False,  # the verifier checks `aud` against the public URL itself
        ),
    )

    @mcp.tool()
    def whoami() -> str:
        """The caller as this server sees it: subject, client, scopes, SHA-256 of the bearer token."""
        token = get_access_token()
        if token is None:
            return json.dumps(None)
        digest = hashlib.sha256(token.token.encode()).hexdigest()
        return json.dumps(
            {
                "subject": token.subject,
                "client_id": token.client_id,
                "scopes": token.scopes,
                "audience": token.resource,
                "token_sha256": digest,
            }
        )

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    app = TestRoutes(mcp.streamable_http_app(host="127.0.0.1"), legacy_only=args.legacy_only)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"PORT {port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
    sys.exit(0)


if __name__ == "__main__":
    main()
