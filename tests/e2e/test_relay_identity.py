"""`gateway relay` with `identity:`: RFC 8693 token exchange at `POST /oauth/token` and the tunnel API
accepting the access tokens it issues (issue 17, scope 2 and 3).

Everything is real: `gateway relay` processes, JWTs signed with keys made in the test, the issuer's
JWKS served on loopback (HTTPS under a trustme CA, fetched with a Bearer credential, as the Kubernetes
API server's is), Redis for replicas, and a plain v1 poller (tests/support/identity.py) that exchanges
its subject token and polls with the access token. Waits are for conditions, never for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import trustme

from tests.support.harness import PYTHON, process
from tests.support.identity import (
    ACCESS_TYPE,
    GRANT,
    ID_TOKEN_TYPE,
    ISSUER,
    JWT_TYPE,
    SUBJECT,
    WAIT,
    IssuerKey,
    JwksServer,
    RelayProcess,
    TokenPoller,
    access_token,
    claims,
    exchange,
    hs256_with_public_key,
    identity_yaml,
    jwks_server,
    mcp_call,
    relay_process,
    tampered,
    unsigned,
    write_signing_key,
)
from tests.support.openapi import validate
from tests.support.redis_server import RedisServer, redis_server

TUNNEL_A = "tunnel_a"
TUNNEL_B = "tunnel_b"
KEY_B = "gateway-key-b-Xs81"
SUBJECT_B = "system:serviceaccount:segment-b:gateway"
JWKS_BEARER = "relay-sa-token-Jq27"


def relay_yaml(
    jwks_url: str,
    signing_keys: list[Path],
    *,
    backend: str = "",
    issuer_extra: str = "",
    token_ttl_s: int = 900,
) -> str:
    """Tunnel A is reachable by access token only; tunnel B has a gateway key as well."""
    return (
        "listen: '127.0.0.1:0'\n"
        "response_timeout_s: 30\n"
        f"tunnels:\n  {TUNNEL_A}: {{name: A}}\n  {TUNNEL_B}: {{name: B, gateway_key: {KEY_B}}}\n"
        f"{backend}"
        + identity_yaml(
            jwks_url,
            signing_keys,
            {SUBJECT: [TUNNEL_A], SUBJECT_B: [TUNNEL_B]},
            token_ttl_s=token_ttl_s,
            issuer_extra=issuer_extra,
        )
    )


@dataclass
class Setup:
    relay: RelayProcess
    jwks: JwksServer
    rsa: IssuerKey
    ec: IssuerKey
    http: aiohttp.ClientSession


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """One relay trusting one issuer (an RSA and an EC key) whose JWKS needs TLS and a Bearer."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    token_file = tmp_path / "relay-sa-token"
    token_file.write_text(JWKS_BEARER)
    rsa_key, ec_key = IssuerKey.rsa(), IssuerKey.ec()
    async with (
        jwks_server([rsa_key, ec_key], tls=ca, bearer=JWKS_BEARER) as jwks,
        aiohttp.ClientSession() as http,
    ):
        extra = f"      jwks_ca_file: '{ca_file}'\n      jwks_token: 'file:{token_file}'\n"
        config = relay_yaml(jwks.url, [write_signing_key(tmp_path / "signing.pem")], issuer_extra=extra)
        async with relay_process(config, tmp_path / "relay") as relay:
            yield Setup(relay, jwks, rsa_key, ec_key, http)


def oauth_error(status: int, headers: dict[str, str], body: Any, expected: int, code: str, case: str) -> None:
    """An RFC 6749 section 5.2 error answer, never cached."""
    assert status == expected, (case, status, body)
    assert isinstance(body, dict), (case, body)
    assert set(body) == {"error", "error_description"}, (case, body)
    assert body["error"] == code, (case, body)
    assert isinstance(body["error_description"], str), (case, body)
    assert body["error_description"], (case, body)
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in body["error_description"]), (case, body)
    assert headers.get("Cache-Control") == "no-store", (case, headers)
    assert headers.get("Content-Type", "").startswith("application/json"), (case, headers)


# =========================================================================== the exchange


async def test_a_valid_subject_token_is_exchanged(setup: Setup) -> None:
    """RFC 8693 section 2.2.1: the answer; JSON and form bodies, both subject token types, RSA and EC."""
    for key in (setup.rsa, setup.ec):
        for form in (False, True):
            for token_type in (JWT_TYPE, ID_TOKEN_TYPE):
                subject = key.sign(claims())
                status, headers, body = await exchange(
                    setup.http, setup.relay.url, subject, form=form, subject_token_type=token_type
                )
                assert status == 200, body
                assert headers["Cache-Control"] == "no-store"
                assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
                assert body["issued_token_type"] == ACCESS_TYPE
                assert body["token_type"] == "Bearer"
                assert body["expires_in"] == 900
                header = jwt.get_unverified_header(body["access_token"])
                assert header["typ"] == "at+jwt"
                assert header["alg"] == "ES256"
                payload = jwt.decode(body["access_token"], options={"verify_signature": False})
                assert payload["tunnels"] == [TUNNEL_A]
                assert payload["sub"] == SUBJECT
                assert payload["exp"] - payload["iat"] == 900
    # OpenAI's two extra parameters: the provider must be this issuer; the service account narrows
    status, _, body = await exchange(
        setup.http, setup.relay.url, setup.rsa.sign(claims()), identity_provider_id=ISSUER, service_account_id=TUNNEL_A
    )
    assert status == 200, body
    # the JWKS was fetched over TLS with the relay's Bearer credential; nothing got in without it
    assert setup.jwks.fetches >= 1
    assert setup.jwks.refused == 0


async def test_bad_subject_tokens_and_requests_are_refused(setup: Setup) -> None:
    """Each refusal with its RFC 6749 / 8693 error and a 4xx, never a 500 (issue 17 scope 3)."""
    rsa_key, http, url = setup.rsa, setup.http, setup.relay.url
    stranger = IssuerKey.rsa()  # not in the issuer's JWKS
    impostor = IssuerKey.rsa()
    impostor.kid = rsa_key.kid  # claims a kid the JWKS has, signs with another key
    good = rsa_key.sign(claims())
    tokens: list[tuple[str, str, int, str]] = [
        ("expired", rsa_key.sign(claims(ttl=-3600)), 400, "invalid_grant"),
        ("not yet valid", rsa_key.sign({**claims(), "nbf": claims()["iat"] + 3600}), 400, "invalid_grant"),
        ("wrong audience", rsa_key.sign(claims(aud="someone-else")), 400, "invalid_grant"),
        ("wrong issuer", rsa_key.sign(claims(iss="https://issuer.example")), 400, "invalid_grant"),
        ("no subject", rsa_key.sign({k: v for k, v in claims().items() if k != "sub"}), 400, "invalid_grant"),
        ("no expiry", rsa_key.sign({k: v for k, v in claims().items() if k != "exp"}), 400, "invalid_grant"),
        ("alg none", unsigned(claims(), rsa_key.kid), 400, "invalid_grant"),
        ("HS256 with the public key", hs256_with_public_key(rsa_key, claims()), 400, "invalid_grant"),
        ("tampered subject", tampered(good, sub=SUBJECT_B), 400, "invalid_grant"),
        ("tampered audience", tampered(good, aud="x"), 400, "invalid_grant"),
        ("unknown kid", stranger.sign(claims()), 400, "invalid_grant"),
        ("impostor key", impostor.sign(claims()), 400, "invalid_grant"),
        ("unknown subject", rsa_key.sign(claims(sub="system:serviceaccount:x:y")), 400, "unauthorized_client"),
        ("malformed", "not.a.jwt", 400, "invalid_grant"),
        ("two parts", "eyJhbGciOiJSUzI1NiJ9.e30", 400, "invalid_grant"),
        ("garbage", "x" * 5000, 400, "invalid_grant"),
        ("too long", "a" * 20000, 400, "invalid_grant"),
        ("a relay access token", await access_token(http, url, good), 400, "invalid_grant"),
    ]
    for case, token, expected, code in tokens:
        oauth_error(*await exchange(http, url, token), expected, code, case)
    params: list[tuple[str, dict[str, Any], int, str]] = [
        ("wrong grant_type", {"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ("no grant_type", {"grant_type": None}, 400, "invalid_request"),
        ("no subject_token", {"subject_token": None}, 400, "invalid_request"),
        ("empty subject_token", {"subject_token": ""}, 400, "invalid_request"),
        ("wrong token type", {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, 400, "invalid_request"),
        ("a number", {"subject_token": 42}, 400, "invalid_request"),
        ("actor token", {"actor_token": good}, 400, "invalid_request"),
        ("other provider", {"identity_provider_id": "https://other.example"}, 400, "invalid_grant"),
        ("not its tunnel", {"service_account_id": TUNNEL_B}, 400, "unauthorized_client"),
        ("wrong requested type", {"requested_token_type": "urn:x"}, 400, "invalid_request"),
    ]
    base = {"grant_type": GRANT, "subject_token_type": JWT_TYPE, "subject_token": good}
    for case, change, expected, code in params:
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        async with http.post(f"{url}/oauth/token", json=body) as resp:
            oauth_error(resp.status, dict(resp.headers), await resp.json(content_type=None), expected, code, case)
    raw: list[tuple[str, str, bytes | str, dict[str, str], int]] = [
        ("wrong content type", "POST", json.dumps(base), {"Content-Type": "text/plain"}, 400),
        ("no content type", "POST", b"grant_type=x", {"Content-Type": ""}, 400),
        ("not JSON", "POST", b"{nope", {"Content-Type": "application/json"}, 400),
        ("a JSON array", "POST", b"[1, 2]", {"Content-Type": "application/json"}, 400),
        ("deep JSON", "POST", b"[" * 10000 + b"]" * 10000, {"Content-Type": "application/json"}, 400),
        ("huge body", "POST", b"x" * (1024 * 1024), {"Content-Type": "application/json"}, 413),
        ("bad UTF-8 form", "POST", b"grant_type=\xff\xfe", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        (
            "twice in a form",
            "POST",
            b"grant_type=a&grant_type=b",
            {"Content-Type": "application/x-www-form-urlencoded"},
            400,
        ),
        ("GET", "GET", b"", {}, 405),
    ]
    for case, method, data, headers, expected in raw:
        async with http.request(method, f"{url}/oauth/token", data=data, headers=headers) as resp:
            oauth_error(
                resp.status, dict(resp.headers), await resp.json(content_type=None), expected, "invalid_request", case
            )

    # a chunked body with no length is cut off at the bound too
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * 1024

    async with http.post(f"{url}/oauth/token", data=chunks(), headers={"Content-Type": "application/json"}) as resp:
        oauth_error(
            resp.status, dict(resp.headers), await resp.json(content_type=None), 413, "invalid_request", "chunked"
        )
    # the relay still serves, and printed no traceback
    assert (await exchange(http, url, good))[0] == 200
    assert not [line for line in setup.relay.process.lines if "Traceback" in line]


# =========================================================================== the tunnel API


async def test_a_token_polls_and_answers_its_tunnel_and_no_other(setup: Setup) -> None:
    """A token bound to tunnel A serves A's calls end to end; on tunnel B (which exists, with a key) and
    on a tunnel that does not exist it is refused alike: 401 on poll and response, 403 on metadata
    (the contract's codes: openapi.json lists 401 for those two and 403 for the metadata request)."""
    http, url = setup.http, setup.relay.url
    token_a = await access_token(http, url, setup.ec.sign(claims()))
    bearer_a = {"Authorization": f"Bearer {token_a}"}
    async with http.get(f"{url}/v1/tunnels/{TUNNEL_A}", headers=bearer_a) as resp:
        assert resp.status == 200
        validate("TunnelClientMetadata", await resp.json())
    for tunnel in (TUNNEL_B, "tunnel_nope"):
        async with http.get(f"{url}/v1/tunnels/{tunnel}", headers=bearer_a) as resp:
            body = await resp.json()
            assert resp.status == 403, body
            validate("APIErrorResponse", body)
            assert body["error"]["code"] == "tunnel_use_forbidden"
        async with http.get(f"{url}/v1/tunnels/{tunnel}/poll?timeout_ms=1", headers=bearer_a) as resp:
            body = await resp.json()
            assert resp.status == 401, body
            validate("APIErrorResponse", body)
            assert body["error"]["code"] == "tunnel_use_forbidden"
    # tunnel B's gateway key still works alongside; B's own subject gets a token for B only
    key_b = {"Authorization": f"Bearer {KEY_B}"}
    async with http.get(f"{url}/v1/tunnels/{TUNNEL_B}/poll?timeout_ms=1", headers=key_b) as resp:
        assert resp.status == 204
    token_b = await access_token(http, url, setup.rsa.sign(claims(sub=SUBJECT_B)))
    async with http.get(
        f"{url}/v1/tunnels/{TUNNEL_A}/poll?timeout_ms=1", headers={"Authorization": f"Bearer {token_b}"}
    ) as resp:
        assert resp.status == 401
    # tunnel A has no gateway key: nothing but a token opens it
    for bad in (KEY_B, "", tampered(token_a, tunnels=[TUNNEL_A, TUNNEL_B]), token_a[:-4] + "AAAA"):
        async with http.get(
            f"{url}/v1/tunnels/{TUNNEL_A}/poll?timeout_ms=1", headers={"Authorization": f"Bearer {bad}"}
        ) as resp:
            assert resp.status == 401

    poller = TokenPoller(http, TUNNEL_A, setup.ec.sign(claims()), url, url, token=token_a)
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(poller.run())
        # a call on tunnel B waits for B's gateway; A's token may neither take it nor answer it
        call_b = tg.create_task(mcp_call(http, url, TUNNEL_B, 7))
        async with asyncio.timeout(WAIT):
            while True:
                async with http.get(f"{url}/v1/tunnels/{TUNNEL_B}/poll?timeout_ms=1000", headers=key_b) as resp:
                    if resp.status == 200:
                        (command,) = (await resp.json())["commands"]
                        break
        frame = {
            "request_id": command["request_id"],
            "resp_code": 200,
            "resp_json": {"jsonrpc": "2.0", "id": 7, "result": {}},
        }
        shard = {"X-Tunnel-Shard-Token": command["shard_token"]}
        async with http.post(
            f"{url}/v1/tunnels/{TUNNEL_B}/response", json=frame, headers={**bearer_a, **shard}
        ) as resp:
            assert resp.status == 401
        async with http.post(f"{url}/v1/tunnels/{TUNNEL_B}/response", json=frame, headers={**key_b, **shard}) as resp:
            assert resp.status == 200
        assert (await call_b)[0] == 200
        # tunnel A's calls are served by the token-holding poller
        for n in range(5):
            status, body = await mcp_call(http, url, TUNNEL_A, n)
            assert status == 200, body
            assert body["result"] == {"by": "gw", "echo": {"name": "echo", "arguments": {"n": n}}}
        serving.cancel()
    assert poller.exchanges == 0  # the token it was handed served throughout
    assert all(status in (200, 204) for _, status in poller.statuses)


async def test_an_expired_access_token_is_refused_and_a_fresh_one_serves(tmp_path: Path) -> None:
    """`token_ttl_s: 1`: the token stops working once expired (checked by `exp`, with no skew allowed
    here), the poller gets a 401 (on a poll, or on an answer posted just after the expiry), exchanges
    again and goes on."""
    key = IssuerKey.ec()
    async with jwks_server([key]) as jwks, aiohttp.ClientSession() as http:
        config = relay_yaml(jwks.url, [write_signing_key(tmp_path / "k.pem")], token_ttl_s=1)
        config = config.replace("  token_ttl_s: 1\n", "  token_ttl_s: 1\n  clock_skew_s: 0\n")
        async with relay_process(config, tmp_path / "relay") as relay:
            poller = TokenPoller(http, TUNNEL_A, key.sign(claims()), relay.url, relay.url, max_unauthorized=5)
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(poller.run())
                await poller.serving()
                async with asyncio.timeout(WAIT):
                    while poller.exchanges < 3:  # two expiries noticed, each answered by an exchange
                        status, body = await mcp_call(http, relay.url, TUNNEL_A, poller.exchanges)
                        assert status == 200, body
                serving.cancel()
            assert any(status == 401 for _, status in poller.statuses)


async def test_bad_signing_key_stops_the_relay_naming_the_key_not_its_content(tmp_path: Path) -> None:
    for content in ("not a key at all", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"):
        key_file = tmp_path / "bad.pem"
        key_file.write_text(content)
        config = relay_yaml("http://127.0.0.1:9/jwks", [key_file])
        (tmp_path / "relay.yaml").write_text(config)
        with (tmp_path / "stderr").open("wb") as stderr:
            async with process(
                PYTHON, "-m", "gateway.cli", "relay", "--config", tmp_path / "relay.yaml", stderr=stderr
            ) as relay:
                assert await relay.proc.wait() == 2
        text = (tmp_path / "stderr").read_text()
        assert "$.identity.signing_keys[0]: not an unencrypted PEM private key" in text
        assert "AAAA" not in text
        assert "not a key at all" not in text


# =========================================================================== the issuer's keys


async def test_a_key_rotated_in_at_the_issuer_is_picked_up(tmp_path: Path) -> None:
    """The issuer rotates (a new key in its JWKS, the old one gone): a token naming the new kid makes
    the relay fetch again at once (`jwks_cooldown_s: 0`); the old key's tokens are then refused."""
    old, new = IssuerKey.rsa(), IssuerKey.ec()
    async with jwks_server([old]) as jwks, aiohttp.ClientSession() as http:
        extra = "      jwks_cooldown_s: 0\n      jwks_refresh_s: 3600\n"
        config = relay_yaml(jwks.url, [write_signing_key(tmp_path / "k.pem")], issuer_extra=extra)
        async with relay_process(config, tmp_path / "relay") as relay:
            assert (await exchange(http, relay.url, old.sign(claims())))[0] == 200
            jwks.keys = [new]
            status, _, body = await exchange(http, relay.url, new.sign(claims()))
            assert status == 200, body
            oauth_error(*await exchange(http, relay.url, old.sign(claims())), 400, "invalid_grant", "old key")


async def test_the_schedule_picks_up_a_rotation(tmp_path: Path) -> None:
    """With a long cooldown on unknown kids, the scheduled refresh (`jwks_refresh_s: 1`) is what brings
    the issuer's new key in; its tokens then pass."""
    old, new = IssuerKey.rsa(), IssuerKey.rsa("PS256")
    async with jwks_server([old]) as jwks, aiohttp.ClientSession() as http:
        extra = "      jwks_cooldown_s: 3600\n      jwks_refresh_s: 1\n"
        config = relay_yaml(jwks.url, [write_signing_key(tmp_path / "k.pem")], issuer_extra=extra)
        async with relay_process(config, tmp_path / "relay") as relay:
            await jwks.fetched(1)
            assert (await exchange(http, relay.url, old.sign(claims())))[0] == 200
            jwks.keys = [old, new]
            await jwks.fetched(jwks.fetches + 2)  # two scheduled fetches later the new key is surely in
            status, _, body = await exchange(http, relay.url, new.sign(claims()))
            assert status == 200, body


async def test_unknown_kids_fetch_the_jwks_at_most_once_per_cooldown(tmp_path: Path) -> None:
    """20 tokens naming kids the issuer never had, one after another, right after the start-up fetch:
    with `jwks_cooldown_s: 3600` none of them makes the relay fetch again, and each is refused."""
    key = IssuerKey.ec()
    async with jwks_server([key]) as jwks, aiohttp.ClientSession() as http:
        extra = "      jwks_cooldown_s: 3600\n      jwks_refresh_s: 3600\n"
        config = relay_yaml(jwks.url, [write_signing_key(tmp_path / "k.pem")], issuer_extra=extra)
        async with relay_process(config, tmp_path / "relay") as relay:
            await jwks.fetched(1)
            for _ in range(20):
                oauth_error(
                    *await exchange(http, relay.url, IssuerKey.ec().sign(claims())), 400, "invalid_grant", "kid"
                )
            assert jwks.fetches == 1
            assert (await exchange(http, relay.url, key.sign(claims())))[0] == 200


# =========================================================================== replicas on Redis


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server


def redis_backend(redis: RedisServer) -> str:
    return f"backend: {{kind: redis, url: '{redis.url}', key_prefix: wif, recheck_s: 0.1}}\n"


@pytest.mark.timeout(300)
async def test_replicas_on_redis_accept_each_others_tokens(redis: RedisServer, tmp_path: Path) -> None:
    """Two `gateway relay` processes sharing Redis and signing keys: a token from either polls the
    other; calls through either are answered by a poller holding the other's token."""
    key = IssuerKey.ec()
    signing = [write_signing_key(tmp_path / "k.pem", "rsa")]
    async with jwks_server([key]) as jwks, aiohttp.ClientSession() as http:
        config = relay_yaml(jwks.url, signing, backend=redis_backend(redis))
        async with relay_process(config, tmp_path / "r1") as r1, relay_process(config, tmp_path / "r2") as r2:
            poller = TokenPoller(http, TUNNEL_A, key.sign(claims()), r1.url, r2.url, name="p")
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(poller.run())  # token from r1, polling r2
                await poller.serving()
                for n in range(10):
                    status, body = await mcp_call(http, (r1, r2)[n % 2].url, TUNNEL_A, n)
                    assert status == 200, body
                serving.cancel()
            token_r2 = await access_token(http, r2.url, key.sign(claims()))
            async with http.get(
                f"{r1.url}/v1/tunnels/{TUNNEL_A}/poll?timeout_ms=1", headers={"Authorization": f"Bearer {token_r2}"}
            ) as resp:
                assert resp.status == 204
            assert poller.exchanges == 1
            assert all(status in (200, 204) for _, status in poller.statuses)


@pytest.mark.timeout(300)
async def test_a_signing_key_rotation_loses_no_call(redis: RedisServer, tmp_path: Path) -> None:
    """Rolling a new signing key in, on replicas sharing Redis, while calls flow all the time:

    1. replica R1 signs with K1; the poller holds a K1 token and polls R1;
    2. replica R2 starts with `[K2, K1]` (K2 signs, K1 still verifies); the poller moves to R2 with its
       K1 token, which R2 accepts; callers move to R2; R1 stops;
    3. the poller's next exchange (at R2) gives a K2 token, which serves on.
    Every call made during the whole run is answered (200, its own id)."""
    key = IssuerKey.rsa()
    k1, k2 = write_signing_key(tmp_path / "k1.pem"), write_signing_key(tmp_path / "k2.pem", "rsa")
    async with jwks_server([key]) as jwks, aiohttp.ClientSession() as http:
        old_config = relay_yaml(jwks.url, [k1], backend=redis_backend(redis))
        new_config = relay_yaml(jwks.url, [k2, k1], backend=redis_backend(redis))
        outcomes: list[Outcome] = []
        front: list[str] = []
        stop_calls = asyncio.Event()

        async def caller(worker: int) -> None:
            n = worker * 100_000
            while not stop_calls.is_set():
                n += 1
                relay = front[-1]
                status, body = await mcp_call(http, relay, TUNNEL_A, n)
                outcomes.append(Outcome(worker, relay, n, status, body))

        async with contextlib.AsyncExitStack() as r1_stack:
            r1 = await r1_stack.enter_async_context(relay_process(old_config, tmp_path / "r1"))
            front.append(r1.url)
            poller = TokenPoller(http, TUNNEL_A, key.sign(claims()), r1.url, r1.url)
            await poller.refresh()
            k1_token = poller.token
            assert k1_token is not None
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(poller.run())
                await poller.serving()
                callers = [tg.create_task(caller(w)) for w in range(4)]
                await _until(lambda: len(outcomes) >= 20)
                async with relay_process(new_config, tmp_path / "r2") as r2:
                    poller.poll_at = r2.url  # the K1 token, now at a replica that signs with K2
                    seen = len(outcomes)
                    await _until(lambda: len(outcomes) >= seen + 20)
                    front.append(r2.url)  # callers move to R2
                    # R1 stops once every caller's last call there was answered
                    await _until(lambda: {o.worker for o in outcomes if o.relay == r2.url} == {0, 1, 2, 3})
                    await r1_stack.aclose()
                    poller.exchange_at = r2.url
                    await poller.refresh()  # the next exchange: a K2 token
                    seen = len(outcomes)
                    await _until(lambda: len(outcomes) >= seen + 20)
                    stop_calls.set()
                    await asyncio.gather(*callers)
                    serving.cancel()
        assert poller.token is not None
        k1_kid = jwt.get_unverified_header(k1_token)["kid"]
        k2_kid = jwt.get_unverified_header(poller.token)["kid"]
        assert k1_kid != k2_kid
        bad = [o for o in outcomes if o.status != 200 or o.body.get("id") != o.n]
        assert not bad, bad[:5]
        assert {o.relay for o in outcomes} == {r1.url, r2.url}
        assert all(status in (200, 204) for _, status in poller.statuses)  # never a 401 on the way


@dataclass
class Outcome:
    worker: int
    relay: str
    n: int
    status: int
    body: Any


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds: calls run concurrently with this wait and change it."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - the callers append; there is no event to wait on
            await asyncio.sleep(0.01)
