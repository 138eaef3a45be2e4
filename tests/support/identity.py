"""Workload identity for tests: an issuer with keys made here, its JWKS served on loopback, relay
signing keys on disk, `gateway relay` processes, and a plain v1 poller that exchanges a subject
token for the relay's access token and serves one tunnel with it.

Tokens are real JWTs signed with PyJWT; the JWKS server is a real aiohttp server on 127.0.0.1
port 0 (plain HTTP, or HTTPS with a trustme CA, optionally demanding a Bearer credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.harness import PYTHON, Process, process

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "mcp-tunnel-relay"
SUBJECT = "system:serviceaccount:segment-a:gateway"
WAIT = 60.0
"""Generous bound for anything that should happen promptly (never a timing assert)."""

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class IssuerKey:
    """One signing key of a test issuer."""

    private: PrivateKey
    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def rsa(cls, alg: str = "RS256", bits: int = 2048) -> IssuerKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits), alg)

    @classmethod
    def ec(cls, alg: str = "ES256") -> IssuerKey:
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        return cls(ec.generate_private_key(curve), alg)

    @classmethod
    def ed25519(cls) -> IssuerKey:
        return cls(ed25519.Ed25519PrivateKey.generate(), "EdDSA")

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, kid: str | bool | None = True, **header: Any) -> str:
        headers = dict(header)
        if kid is True:
            headers["kid"] = self.kid
        elif isinstance(kid, str):
            headers["kid"] = kid
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


def claims(
    *, iss: str = ISSUER, aud: str | list[str] = AUDIENCE, sub: str = SUBJECT, ttl: int = 600, **extra: Any
) -> dict[str, Any]:
    """The claims of a Kubernetes projected service-account token."""
    now = int(time.time())
    return {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl, **extra}


def unsigned(body: dict[str, Any], kid: str) -> str:
    """An `alg: none` token (RFC 7519 section 6: an empty signature)."""
    return jwt.encode(body, None, algorithm="none", headers={"kid": kid})


def hs256_with_public_key(key: IssuerKey, body: dict[str, Any]) -> str:
    """The key-confusion attack: HS256 over the token with the issuer's public key PEM as the secret
    (PyJWT's own HMAC primitive; its encode() refuses an asymmetric key as a secret, rightly)."""
    head = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(body).encode())
    signing_input = head + b"." + payload
    signature = HMACAlgorithm(HMACAlgorithm.SHA256).sign(signing_input, key.public_pem())
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept."""
    head, payload, signature = token.split(".")
    body = json.loads(jwt.utils.base64url_decode(payload))
    body.update(changes)
    return ".".join([head, jwt.utils.base64url_encode(json.dumps(body).encode()).decode(), signature])


def write_signing_key(path: Path, kind: str = "ec") -> Path:
    """A relay signing key as an unencrypted PKCS#8 PEM file."""
    key: PrivateKey = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


# =========================================================================== the issuer's JWKS


class JwksServer:
    """An issuer's JWKS endpoint on loopback: `keys` is what it serves now; `fetches` counts GETs.

    With `tls` it serves HTTPS under a trustme CA (`ca_file` for the relay's `jwks_ca_file`); with
    `bearer` it answers 401 to a fetch without `Authorization: Bearer <bearer>`.
    """

    def __init__(self, keys: list[IssuerKey], *, tls: trustme.CA | None = None, bearer: str | None = None) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.refused = 0
        self.bearer = bearer
        self._tls = tls
        self._fetched = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _jwks(self, request: web.Request) -> web.Response:
        if self.bearer is not None and request.headers.get("Authorization") != f"Bearer {self.bearer}":
            self.refused += 1
            return web.Response(status=401)
        async with self._fetched:
            self.fetches += 1
            self._fetched.notify_all()
        return web.json_response({"keys": [key.jwk() for key in self.keys]})

    async def fetched(self, count: int) -> None:
        """Wait until the relay fetched at least `count` times."""
        async with asyncio.timeout(WAIT), self._fetched:
            await self._fetched.wait_for(lambda: self.fetches >= count)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/openid/v1/jwks", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.issue_cert("127.0.0.1").configure_cert(context)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{port}/openid/v1/jwks"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def jwks_server(keys: list[IssuerKey], **options: Any) -> AsyncIterator[JwksServer]:
    server = JwksServer(keys, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class TlsIssuer:
    """An issuer whose JWKS is served over HTTPS under a CA made in the test (`ca_file`, its PEM)."""

    key: IssuerKey
    jwks: JwksServer
    ca_file: Path

    @property
    def port(self) -> int:
        return int(self.jwks.url.split(":")[2].split("/")[0])


@contextlib.asynccontextmanager
async def tls_issuer(folder: Path) -> AsyncIterator[TlsIssuer]:
    """A TlsIssuer with one EC key; its CA's PEM written into `folder`."""
    ca = trustme.CA()
    ca_file = folder / "issuer-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key = IssuerKey.ec()
    async with jwks_server([key], tls=ca) as jwks:
        yield TlsIssuer(key, jwks, ca_file)


# =========================================================================== relay processes


def identity_yaml(
    jwks_url: str,
    signing_keys: list[Path],
    subjects: dict[str, list[str]],
    *,
    token_ttl_s: int = 900,
    issuer_extra: str = "",
) -> str:
    """The `identity:` section of a relay.yaml, its token rate limit out of the way (these tests are
    about something else; tests/unit/relay/test_token_rate.py is about that)."""
    subject_map = ", ".join(f"{json.dumps(subject)}: [{', '.join(tunnels)}]" for subject, tunnels in subjects.items())
    keys = ", ".join(f"'file:{path}'" for path in signing_keys)
    return (
        "identity:\n"
        "  issuers:\n"
        f"    - issuer: {ISSUER}\n"
        f"      jwks_url: '{jwks_url}'\n"
        f"      audience: {AUDIENCE}\n"
        f"      subjects: {{{subject_map}}}\n"
        f"{issuer_extra}"
        f"  token_ttl_s: {token_ttl_s}\n"
        f"  signing_keys: [{keys}]\n"
        "  token_rate_per_s: 1000\n"
        "  token_burst: 1000\n"
    )


@dataclass
class RelayProcess:
    process: Process
    url: str


@contextlib.asynccontextmanager
async def relay_process(
    config: str,
    folder: Path,
    *,
    stderr: IO[bytes] | None = None,
    log_level: str = "INFO",
    env: dict[str, str] | None = None,
) -> AsyncIterator[RelayProcess]:
    """`gateway relay --config` on a relay.yaml written into `folder`; ready at its `relay: ready URL` line."""
    file = folder / "relay.yaml"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(file.write_text, config)
    args = ("-m", "gateway.cli", "--log-level", log_level, "relay", "--config", file)
    async with process(PYTHON, *args, stderr=stderr, env=env) as proc:
        match = await proc.wait_for(r"relay: ready (\S+)")
        yield RelayProcess(proc, match[1])


# =========================================================================== a gateway with a token


async def exchange(
    http: aiohttp.ClientSession, relay: str, subject_token: str, *, form: bool = False, **extra: str
) -> tuple[int, dict[str, str], Any]:
    """One RFC 8693 exchange at the relay; (status, headers, JSON body)."""
    params = {"grant_type": GRANT, "subject_token_type": JWT_TYPE, "subject_token": subject_token, **extra}
    sent: dict[str, Any] = {"data": params} if form else {"json": params}
    async with http.post(f"{relay}/oauth/token", **sent) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def access_token(http: aiohttp.ClientSession, relay: str, subject_token: str, **extra: str) -> str:
    status, _, body = await exchange(http, relay, subject_token, **extra)
    assert status == 200, body
    return str(body["access_token"])


@dataclass
class TokenPoller:
    """A plain v1 gateway for one tunnel that authenticates with an exchanged access token.

    It polls `poll_url()` (which the test may change mid-run), answers every `jsonrpc` command with
    `{"result": {"by": name, "echo": params}}`, and exchanges its subject token again after a 401
    (once; a second 401 in a row fails the test). Every status it got is counted.
    """

    http: aiohttp.ClientSession
    tunnel: str
    subject_token: str
    exchange_at: str
    poll_at: str
    name: str = "gw"
    token: str | None = None
    statuses: list[tuple[str, int]] = field(default_factory=list)
    answered: int = 0
    exchanges: int = 0
    max_unauthorized: int = 1
    """401s in a row it takes (each followed by an exchange) before it fails the test."""
    polled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a poll was answered 200 or 204: the relay has seen this gateway."""

    async def serving(self) -> None:
        """Wait until the relay has seen this gateway poll."""
        async with asyncio.timeout(WAIT):
            await self.polled.wait()

    async def refresh(self) -> None:
        self.token = await access_token(self.http, self.exchange_at, self.subject_token)
        self.exchanges += 1

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Tunnel-Client-Instance-Id": self.name}

    async def run(self) -> None:
        if self.token is None:
            await self.refresh()
        unauthorized = 0
        while True:
            url = f"{self.poll_at}/v1/tunnels/{self.tunnel}/poll?limit=25&timeout_ms=500"
            try:
                async with self.http.get(url, headers=self._headers()) as resp:
                    self.statuses.append(("poll", resp.status))
                    body = await resp.json() if resp.status == 200 else None
                    status = resp.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # retry pacing: the relay it polls is going away and the test moves it on
                continue
            if status == 401:
                unauthorized += 1
                assert unauthorized <= self.max_unauthorized, self.statuses[-5:]
                await self.refresh()
                continue
            unauthorized = 0
            assert status in (200, 204), status
            self.polled.set()
            for command in (body or {}).get("commands", []):
                await self._answer(command)

    async def _answer(self, command: dict[str, Any]) -> None:
        rpc = command["jsonrpc"]
        answer = {"jsonrpc": "2.0", "id": rpc["id"], "result": {"by": self.name, "echo": rpc.get("params")}}
        frame = {"request_id": command["request_id"], "resp_code": 200, "resp_json": answer}
        if command.get("channel"):
            frame["channel"] = command["channel"]
        url = f"{self.poll_at}/v1/tunnels/{self.tunnel}/response"
        for attempt in (1, 2):  # the token may expire between the poll and this answer: exchange, then once more
            headers = {**self._headers(), "X-Tunnel-Shard-Token": command["shard_token"]}
            async with self.http.post(url, json=frame, headers=headers) as resp:
                self.statuses.append(("response", resp.status))
                if resp.status == 401 and attempt == 1:
                    await self.refresh()
                    continue
                assert resp.status == 200, await resp.text()
            break
        self.answered += 1


async def mcp_call(http: aiohttp.ClientSession, relay: str, tunnel: str, n: int) -> tuple[int, Any]:
    """One `tools/call` through the relay's MCP endpoint; (status, JSON body)."""
    message = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "echo", "arguments": {"n": n}}}
    async with http.post(f"{relay}/v1/mcp/{tunnel}", json=message, headers={"Accept": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)
