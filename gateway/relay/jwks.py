"""Trusted issuers' signing keys: JWKS documents fetched (bounded) or read from a file, refreshed.
Knows nothing of token claims, and keeps public keys only.

Owns each issuer's key cache and the fetches behind it; knows nothing of token claims. Keeps public
keys only: a private member in a JWK is dropped and symmetric (`oct`) keys are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import aiohttp
import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.config.base import redact_url
from gateway.config.secrets import SecretError, resolve
from gateway.protocol.errors import GatewayError
from gateway.protocol.wire import JsonDecoder

log = logging.getLogger("gateway.relay")

MAX_JWKS_BYTES: Final = 1024 * 1024
MAX_KEYS: Final = 100
"""Keys kept from one document (a JWKS holds a handful; more is not an issuer's key set)."""

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
_PRIVATE: Final = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_EC_ALGORITHMS: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JwksUnavailable(GatewayError):
    """The issuer's key set could not be had; `reason` names the cause (never a credential)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, repr=False)
class VerifyKey:
    """One public key of an issuer, with what its JWK said about it."""

    kid: str | None
    algorithm: str | None
    """The JWK's `alg` when it names one: then only that algorithm may use the key."""
    key: PublicKey

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with `algorithm` may be verified with this key."""
        if self.algorithm is not None and self.algorithm != algorithm:
            return False
        key = self.key
        if algorithm.startswith(("RS", "PS")):
            return isinstance(key, rsa.RSAPublicKey)
        if algorithm in _EC_ALGORITHMS:
            return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_ALGORITHMS[algorithm]
        if algorithm == "EdDSA":
            return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False

    def __repr__(self) -> str:
        return f"VerifyKey(kid={self.kid!r}, algorithm={self.algorithm!r})"


class _Document(msgspec.Struct):
    keys: list[object]


_DOCUMENT: Final = JsonDecoder(_Document)


def parse_jwks(data: bytes) -> tuple[VerifyKey, ...]:
    """The signature keys of a JWKS document (RFC 7517); JwksUnavailable when it has none."""
    try:
        document = _DOCUMENT.decode(data)
    except msgspec.MsgspecError:
        raise JwksUnavailable("not a JWKS document (a JSON object with a `keys` array)") from None
    found: list[VerifyKey] = []
    for member in document.keys[:MAX_KEYS]:
        if not isinstance(member, dict):
            continue
        if member.get("kty") not in ("RSA", "EC", "OKP") or member.get("use", "sig") != "sig":
            continue
        kid, alg = member.get("kid"), member.get("alg")
        try:
            parsed = jwt.PyJWK(member)  # the JWK's own `alg` or its kty's default; we only want the key
        except Exception:  # any member PyJWT cannot load is skipped, whatever it raises
            continue
        key = parsed.key
        if isinstance(key, _PRIVATE):
            key = key.public_key()  # an issuer that published a private member: keep the public half only
        if not isinstance(key, PublicKey):
            continue
        found.append(VerifyKey(kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None, key))
    if not found:
        raise JwksUnavailable("the JWKS document holds no usable signature key")
    return tuple(found)


# --------------------------------------------------------------------------- sources


class JwksSource(Protocol):
    """Where one issuer's JWKS document comes from."""

    @property
    def where(self) -> str:
        """How logs name it (a URL or a path; never a credential)."""
        ...

    async def fetch(self) -> bytes:
        """The document's bytes; JwksUnavailable when it cannot be had."""
        ...


class HttpClient:
    """The relay's one HTTP client for JWKS fetches, alive between `start()` and `close()`."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            # no proxy or netrc from the environment: each source passes the proxy it chose (or none)
            self._session = aiohttp.ClientSession(trust_env=False, auto_decompress=True)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise JwksUnavailable("the relay is not running")
        return self._session


class UrlSource:
    """A JWKS over HTTP(S): one GET, no redirects, at most MAX_JWKS_BYTES, within `timeout_s`, through
    `proxy` when one is given (CONNECT for https://, TLS to the issuer end to end)."""

    def __init__(
        self,
        url: str,
        client: HttpClient,
        *,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        token_ref: str | None = None,
        proxy: str | None = None,
    ) -> None:
        self._url = url
        self._proxy = proxy
        """A forward proxy URL (it may hold credentials: only `where`'s redacted form is ever shown)."""
        self._client = client
        self._timeout_s = timeout_s
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._token_ref = token_ref

    @property
    def where(self) -> str:
        return self._url if self._proxy is None else f"{self._url} via proxy {redact_url(self._proxy)}"

    async def fetch(self) -> bytes:
        headers = {"Accept": "application/json"}
        if self._token_ref is not None:
            try:
                token = await asyncio.to_thread(resolve, self._token_ref)
            except SecretError as exc:
                raise JwksUnavailable(f"jwks_token: {exc}") from None
            headers["Authorization"] = f"Bearer {token.reveal()}"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.session.get(
                    self._url, headers=headers, allow_redirects=False, ssl=self._ssl, proxy=self._proxy
                ) as resp:
                    if resp.status == 407 and self._proxy is not None:
                        raise JwksUnavailable("the proxy refused the request (HTTP 407)")
                    if resp.status != 200:
                        raise JwksUnavailable(f"HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > MAX_JWKS_BYTES:
                        raise JwksUnavailable(f"the document exceeds {MAX_JWKS_BYTES} bytes")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > MAX_JWKS_BYTES:
                            raise JwksUnavailable(f"the document exceeds {MAX_JWKS_BYTES} bytes")
                    return bytes(body)
        except TimeoutError:
            raise JwksUnavailable(f"no answer within {self._timeout_s:g}s") from None
        except aiohttp.ClientHttpProxyError as exc:  # its text holds the proxy URL: only the status is used
            raise JwksUnavailable(f"the proxy refused the tunnel (HTTP {exc.status})") from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise JwksUnavailable(f"cannot connect to the proxy ({type(exc).__name__})") from None
        except aiohttp.ClientSSLError:
            raise JwksUnavailable("TLS failed (certificate not trusted, or no TLS there)") from None
        except aiohttp.ClientConnectionError as exc:
            raise JwksUnavailable(f"cannot connect ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise JwksUnavailable(f"bad answer ({type(exc).__name__})") from None


class FileSource:
    """A JWKS document on disk, read again on every refresh (e.g. a mounted ConfigMap)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    @property
    def where(self) -> str:
        return str(self._path)

    async def fetch(self) -> bytes:
        return await asyncio.to_thread(self._read)

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as file:
                data = file.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise JwksUnavailable(f"cannot read the file ({exc.strerror})") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"the document exceeds {MAX_JWKS_BYTES} bytes")
        return data


# --------------------------------------------------------------------------- the cache


class IssuerKeys:
    """The current keys of one issuer.

    `run()` (a task its owner runs and cancels) fetches at once, then every `refresh_s`
    (`cooldown_s` after a failure). `lookup()` fetches again when a token names a `kid` the
    cache lacks, at most once per `cooldown_s`; concurrent lookups share one fetch. A failed
    fetch keeps the keys held before it.
    """

    def __init__(
        self,
        issuer: str,
        source: JwksSource,
        *,
        refresh_s: float,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._source = source
        self._refresh_s = refresh_s
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._keys: tuple[VerifyKey, ...] = ()
        self._lock = asyncio.Lock()
        self._attempts = 0
        self._last_attempt: float | None = None
        self._error: str | None = None
        self.fetches = 0
        """Fetch attempts so far (scheduled and on demand)."""

    @property
    def keys(self) -> tuple[VerifyKey, ...]:
        return self._keys

    @property
    def error(self) -> str | None:
        """Why the latest fetch failed; None after a good one."""
        return self._error

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s if self._error is None else max(self._cooldown_s, 1.0))

    async def refresh(self) -> None:
        """Fetch now (the schedule's refresh: not rate-limited)."""
        async with self._lock:
            await self._fetch()

    async def lookup(self, kid: str | None, algorithm: str) -> list[VerifyKey]:
        """The keys that may verify a token with this `kid` (any, when None) and `alg`.

        Raises JwksUnavailable when none is known and the latest fetch failed: the token can
        then be neither accepted nor refused."""
        if not self.knows(kid):
            await self._refresh_for_unknown(self._attempts)
        if not self.knows(kid) and self._error is not None:
            raise JwksUnavailable(self._error)
        return [key for key in self._keys if (kid is None or key.kid == kid) and key.fits(algorithm)]

    def knows(self, kid: str | None) -> bool:
        """Whether the cache holds a key with this `kid` (any key, when None)."""
        return any(kid is None or key.kid == kid for key in self._keys)

    async def _refresh_for_unknown(self, attempts_seen: int) -> None:
        async with self._lock:
            if self._attempts != attempts_seen:
                return  # another lookup fetched while this one waited: use its result
            if self._last_attempt is not None and self._clock() - self._last_attempt < self._cooldown_s:
                return
            await self._fetch()

    async def _fetch(self) -> None:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._source.fetch())
        except JwksUnavailable as exc:
            if exc.reason != self._error:
                log.warning("identity: JWKS of issuer %s from %s unavailable: %s", self.issuer, self._source.where, exc)
            self._error = exc.reason
            return
        finally:
            self._attempts += 1  # after the fetch: lookups that waited for it see it done
        before = {key.kid for key in self._keys}
        after = {key.kid for key in keys}
        if before != after or self._error is not None:
            log.info(
                "identity: issuer %s has %d signing keys (kids %s)", self.issuer, len(keys), sorted(map(str, after))
            )
        self._keys, self._error = keys, None


@contextlib.asynccontextmanager
async def refreshed(client: HttpClient, caches: Iterable[IssuerKeys]) -> AsyncIterator[None]:
    """The key caches refreshed on their schedules while the block runs, and `client` open for them.
    The tasks are owned here, not in a TaskGroup: aiohttp may run a cleanup context's two halves in
    different tasks."""
    await client.start()
    refreshers = [asyncio.create_task(keys.run(), name="jwks-refresh") for keys in caches]
    try:
        yield
    finally:
        for task in refreshers:
            task.cancel()
        await asyncio.gather(*refreshers, return_exceptions=True)
        await client.close()
