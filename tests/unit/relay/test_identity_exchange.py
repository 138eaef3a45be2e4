"""The relay's identity parts by themselves, second half: issuers' key caches (gateway/relay/jwks.py),
the exchange policy (gateway/relay/identity.py) and the token request's edge (gateway/relay/token_endpoint.py).

The key cache is driven through its own `JwksSource` interface with a source written here and a
hand-turned clock; `UrlSource` meets a real aiohttp server on loopback. Real keys and JWTs made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning

from gateway.relay.config import IdentitySpec
from gateway.relay.errors import InvalidGrant, IssuerUnavailable, TokenError, UnauthorizedClient
from gateway.relay.identity import GRANT_TYPE, TOKEN_TYPE_JWT, Identity, TokenRequest
from gateway.relay.jwks import FileSource, HttpClient, IssuerKeys, JwksUnavailable, UrlSource
from gateway.relay.token_endpoint import FORM, JSON, parse_request
from tests.support.identity import AUDIENCE, ISSUER, SUBJECT, IssuerKey, claims, write_signing_key

# =========================================================================== the key cache


class ScriptedSource:
    """A JwksSource whose answers the test sets; `gate`, when set, holds every fetch until opened."""

    def __init__(self, *keys: IssuerKey) -> None:
        self.keys = list(keys)
        self.failure: str | None = None
        self.fetches = 0
        self.gate: asyncio.Event | None = None

    @property
    def where(self) -> str:
        return "scripted"

    async def fetch(self) -> bytes:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise JwksUnavailable(self.failure)
        return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kids_fetch_again_at_most_once_per_cooldown() -> None:
    first, second = IssuerKey.ec(), IssuerKey.ec()
    source, clock = ScriptedSource(first), Clock()
    cache = IssuerKeys("i", source, refresh_s=300, cooldown_s=30, clock=clock)
    assert [key.kid for key in await cache.lookup(first.kid, "ES256")] == [first.kid]  # first use fetches
    assert source.fetches == 1
    source.keys.append(second)
    assert await cache.lookup(second.kid, "ES256") == []  # within the cooldown: no fetch
    assert await cache.lookup("nope", "ES256") == []
    assert source.fetches == 1
    clock.now += 30
    assert [key.kid for key in await cache.lookup(second.kid, "ES256")] == [second.kid]
    assert source.fetches == 2
    assert await cache.lookup(first.kid, "ES256")  # known kids never fetch
    assert await cache.lookup(None, "ES256")  # no kid: every key that fits
    assert source.fetches == 2


async def test_concurrent_lookups_share_one_fetch() -> None:
    key = IssuerKey.ec()
    source = ScriptedSource(key)
    source.gate = asyncio.Event()
    cache = IssuerKeys("i", source, refresh_s=300, cooldown_s=0, clock=Clock())
    lookups = [asyncio.create_task(cache.lookup(key.kid, "ES256")) for _ in range(10)]
    while source.fetches == 0:  # noqa: ASYNC110 - the scripted source has no event of its own to wait on
        await asyncio.sleep(0)  # let the first lookup reach the source
    source.gate.set()
    results = await asyncio.gather(*lookups)
    assert all(len(found) == 1 for found in results)
    assert source.fetches == 1


async def test_a_failed_fetch_keeps_the_keys_and_says_why() -> None:
    old, new = IssuerKey.ec(), IssuerKey.ec()
    source, clock = ScriptedSource(old), Clock()
    cache = IssuerKeys("i", source, refresh_s=300, cooldown_s=10, clock=clock)
    await cache.refresh()
    source.failure = "HTTP 503"
    await cache.refresh()
    assert cache.error == "HTTP 503"
    assert await cache.lookup(old.kid, "ES256")  # still trusted
    clock.now += 10
    with pytest.raises(JwksUnavailable):  # unknown, and the fetch that could have told failed
        await cache.lookup(new.kid, "ES256")
    source.failure = None
    source.keys = [new]
    clock.now += 10
    assert await cache.lookup(new.kid, "ES256")
    assert cache.error is None


async def test_never_fetched_keys_make_the_exchange_unavailable_not_a_refusal(tmp_path: Path) -> None:
    identity = _identity(tmp_path, jwks_file=tmp_path / "missing.json")
    request = TokenRequest(
        grant_type=GRANT_TYPE, subject_token_type=TOKEN_TYPE_JWT, subject_token=IssuerKey.ec().sign(claims())
    )
    with pytest.raises(IssuerUnavailable) as caught:
        await identity.exchange.exchange(request)
    assert caught.value.status == 503
    assert caught.value.oauth_error == "temporarily_unavailable"


# =========================================================================== fetching over HTTP


@contextlib.asynccontextmanager
async def _serving(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """`handler` at GET /jwks on 127.0.0.1; yields the URL."""
    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app, handler_cancellation=True)  # a handler that never answers ends with its client
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    finally:
        await runner.cleanup()


async def _fetch(handler: Callable[[web.Request], Any], **options: Any) -> bytes:
    client = HttpClient()
    await client.start()
    try:
        async with _serving(handler) as url:
            return await UrlSource(url, client, **{"timeout_s": 10.0, **options}).fetch()
    finally:
        await client.close()


async def test_url_source_bounds_what_it_fetches(tmp_path: Path) -> None:
    document = json.dumps({"keys": [IssuerKey.ec().jwk()]}).encode()

    async def good(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer sa-token"
        return web.Response(body=document, content_type="application/json")

    token = tmp_path / "token"
    token.write_text("sa-token\n")
    assert await _fetch(good, token_ref=f"file:{token}") == document

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b" " * (2 * 1024 * 1024))

    async def huge_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b" " * 64 * 1024)
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def refused(request: web.Request) -> web.Response:
        return web.Response(status=403)

    never = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    for handler, options, reason in [
        (huge, {}, "exceeds"),
        (huge_chunked, {}, "exceeds"),
        (redirect, {}, "HTTP 302"),
        (refused, {}, "HTTP 403"),
        (silent, {"timeout_s": 0.2}, "no answer within 0.2s"),
        (good, {"token_ref": f"file:{tmp_path / 'absent'}"}, "jwks_token: cannot read secret file"),
    ]:
        with pytest.raises(JwksUnavailable) as caught:
            await _fetch(handler, **options)
        assert reason in caught.value.reason, (handler.__name__, caught.value.reason)


async def test_file_source_reads_the_file_each_time(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    source = FileSource(str(path))
    with pytest.raises(JwksUnavailable, match="cannot read the file"):
        await source.fetch()
    path.write_bytes(b"{}")
    assert await source.fetch() == b"{}"
    path.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(JwksUnavailable, match="exceeds"):
        await source.fetch()


# =========================================================================== the exchange policy


def _identity(
    tmp_path: Path,
    *keys: IssuerKey,
    jwks_file: Path | None = None,
    subjects: dict[str, list[str]] | None = None,
    algorithms: list[str] | None = None,
) -> Identity:
    """An Identity trusting one issuer whose JWKS (of `keys`) is a file: no network needed. Identities
    made in one folder share their signing key."""
    signing = tmp_path / "signing.pem"
    if not signing.exists():
        write_signing_key(signing)
    if jwks_file is None:
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": [key.jwk() for key in keys]}))
    spec = msgspec.convert(
        {
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_file": str(jwks_file),
                    "subjects": subjects or {SUBJECT: ["a", "b"]},
                    "jwks_cooldown_s": 0,
                    **({"algorithms": algorithms} if algorithms else {}),
                }
            ],
            "signing_keys": [f"file:{signing}"],
        },
        IdentitySpec,
    )
    return Identity(spec)


def _request(token: str, **extra: str) -> TokenRequest:
    return TokenRequest(grant_type=GRANT_TYPE, subject_token_type=TOKEN_TYPE_JWT, subject_token=token, **extra)


async def test_every_allowed_algorithm_and_kidless_tokens_are_verified(tmp_path: Path) -> None:
    keys = [
        IssuerKey.rsa(),
        IssuerKey.rsa("PS256"),
        IssuerKey.rsa("RS512"),
        IssuerKey.ec(),
        IssuerKey.ec("ES384"),
        IssuerKey.ec("ES512"),
        IssuerKey.ed25519(),
    ]
    identity = _identity(tmp_path, *keys)
    for key in keys:
        exchanged = await identity.exchange.exchange(_request(key.sign(claims())))
        assert exchanged.tunnels == ("a", "b"), key.alg
        # no kid: every key of the issuer's that fits the algorithm is tried
        kidless = await identity.exchange.exchange(_request(key.sign(claims(), kid=None)))
        assert kidless.subject == SUBJECT
    narrowed = await identity.exchange.exchange(_request(keys[0].sign(claims()), service_account_id="b"))
    assert narrowed.tunnels == ("b",)


async def test_a_jwk_that_names_its_algorithm_refuses_others(tmp_path: Path) -> None:
    """RFC 7517 section 4.4: a key whose JWK says RS256 does not verify a PS256 token, even though the
    signature would (the same RSA key)."""
    key = IssuerKey.rsa("RS256")
    identity = _identity(tmp_path, key)
    ps256 = jwt.encode(claims(), key.private, algorithm="PS256", headers={"kid": key.kid})
    with pytest.raises(InvalidGrant, match=r"algorithm \(alg\) does not fit its issuer's key"):
        await identity.exchange.exchange(_request(ps256))


async def test_an_issuers_short_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = IssuerKey.rsa(bits=1024)
    identity = _identity(tmp_path, weak)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # PyJWT warns the signer; the relay refuses
        token = weak.sign(claims())
    with pytest.raises(InvalidGrant, match=r"unusable \(type, curve or size\)"):
        await identity.exchange.exchange(_request(token))


async def test_an_issuer_can_narrow_its_algorithms(tmp_path: Path) -> None:
    key = IssuerKey.rsa()
    identity = _identity(tmp_path, key, algorithms=["ES256"])
    with pytest.raises(InvalidGrant, match=r"algorithm \(alg\) is not allowed"):
        await identity.exchange.exchange(_request(key.sign(claims())))


def _raw_signed(key: IssuerKey, body: dict[str, Any]) -> str:
    """Claims PyJWT's encode() would refuse (a non-string `iss` or `sub`), signed all the same."""
    return jwt.api_jws.encode(json.dumps(body).encode(), key.private, algorithm=key.alg, headers={"kid": key.kid})


def _with_header(token: str, **header: Any) -> str:
    """The token with its header changed (the signature no longer fits; the relay must not get that far)."""
    head, payload, signature = token.split(".")
    changed = {**json.loads(jwt.utils.base64url_decode(head)), **header}
    return ".".join([jwt.utils.base64url_encode(json.dumps(changed).encode()).decode(), payload, signature])


async def test_refusals_say_why_in_their_own_words(tmp_path: Path) -> None:
    key = IssuerKey.ec()
    identity = _identity(tmp_path, key)
    cases: list[tuple[TokenRequest, type[TokenError], str]] = [
        (_request(key.sign(claims(ttl=-120))), InvalidGrant, "the subject token has expired"),
        (_request(key.sign(claims(aud=["x", "y"]))), InvalidGrant, "audience (aud) is not this relay's"),
        (_request(key.sign({**claims(), "iat": int(time.time()) + 3600})), InvalidGrant, "not valid yet"),
        (_request(_raw_signed(key, {**claims(), "sub": 7})), InvalidGrant, "the subject token is not a valid JWT"),
        (_request(key.sign({"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT})), InvalidGrant, "lacks the exp claim"),
        (_request(_raw_signed(key, {**claims(), "iss": 5})), InvalidGrant, "has no iss claim"),
        (_request(_with_header(key.sign(claims()), kid=7)), InvalidGrant, "not a well-formed JWT"),
        (_request(_with_header(key.sign(claims()), alg="none")), InvalidGrant, "algorithm (alg) is not allowed"),
        (_request(_with_header(key.sign(claims()), alg="HS256")), InvalidGrant, "algorithm (alg) is not allowed"),
        (_request(key.sign(claims(sub="other"))), UnauthorizedClient, "not allowed any tunnel by issuer"),
        (_request(key.sign(claims()), service_account_id="c"), UnauthorizedClient, "service_account_id"),
        (TokenRequest(subject_token="x"), TokenError, "grant_type is required"),
        (TokenRequest(grant_type=GRANT_TYPE, subject_token="x"), TokenError, "subject_token_type must be"),
    ]
    for request, kind, text in cases:
        with pytest.raises(kind) as caught:
            await identity.exchange.exchange(request)
        assert type(caught.value) is kind, (text, caught.value)
        assert text in caught.value.message, (text, caught.value.message)
        assert request.subject_token not in caught.value.message


async def test_a_token_serves_only_tunnels_its_subject_still_has(tmp_path: Path) -> None:
    """The tunnel API asks `tunnels_for`: the token's tunnels, cut to what the config allows its
    subject now, so removing a subject from `identity:` takes its tokens' tunnels away at once."""
    key = IssuerKey.ec()
    identity = _identity(tmp_path, key)
    token = (await identity.exchange.exchange(_request(key.sign(claims())))).issued.token
    assert identity.tunnels_for(token) == {"a", "b"}
    assert identity.tunnels_for("gateway-key") is None
    assert identity.tunnels_for(token + "x") is None
    narrower = _identity(tmp_path, key, subjects={SUBJECT: ["a"]})  # same signing key file, new config
    assert narrower.tunnels_for(token) == {"a"}
    gone = _identity(tmp_path, key, subjects={"someone-else": ["a"]})
    assert gone.tunnels_for(token) == frozenset()


# =========================================================================== the request's edge


def test_token_requests_are_read_from_json_or_a_form() -> None:
    expected = TokenRequest(grant_type="g", subject_token_type="t", subject_token="s")
    assert (
        parse_request(JSON, b'{"grant_type": "g", "subject_token_type": "t", "subject_token": "s", "x": [1]}')
        == expected
    )
    assert parse_request(FORM, b"grant_type=g&subject_token_type=t&subject_token=s&scope=x") == expected
    assert parse_request(FORM, b"").grant_type is None
    refused = [
        (JSON, b'{"subject_token": 5}', "subject_token must be a string"),
        (JSON, b"[]", "expected an object"),
        (JSON, b"{", "not a JSON object"),
        (FORM, b"a=1&a=2", "the parameter a is sent more than once"),
        (FORM, b"&".join(b"p%d=1" % n for n in range(40)), "at most 32 fields"),
        (FORM, b"subject_token=\xff", "UTF-8"),
        ("text/plain", b"{}", "Content-Type must be"),
        ("multipart/form-data", b"", "Content-Type must be"),
    ]
    for content_type, body, text in refused:
        with pytest.raises(TokenError) as caught:
            parse_request(content_type, body)
        assert caught.value.oauth_error == "invalid_request"
        assert text in caught.value.message, (body, caught.value.message)
