"""The relay's `user_auth` token checks (gateway/relay/user_auth.py) against hostile tokens and key sets.

Driven through the relay app over loopback sockets, as tests/unit/relay/test_front_door.py drives it; the issuer's
key set is served by an aiohttp site on 127.0.0.1:0 in the test's loop that counts its fetches.
Tokens are signed in the test with PyJWT and keys made by `cryptography`. Each test names the
RFC 8725 (JWT best current practice) / RFC 7517 / RFC 6750 section it checks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.relay import RelayConfig, TunnelSpec
from gateway.relay.config import RelayConfigError, UserAuthSpec, decode_relay_config
from tests.support.relay_harness import KEY, TUNNEL, WAIT, Harness, HarnessFactory, relay_config, result

PUBLIC = "https://mcp.example.com"
ISSUER = "https://login.example.com"
AUDIENCE = f"{PUBLIC}/v1/mcp/{TUNNEL}/notes"


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **more: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, **more}


@dataclass
class KeySet:
    """The issuer's JWKS endpoint: serves `keys`, counts fetches."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def keyset() -> AsyncIterator[KeySet]:
    keys = KeySet()
    app = web.Application()
    app.router.add_get("/jwks", keys.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    keys.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    yield keys
    await runner.cleanup()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def token(key: Any, *, algorithm: str = "RS256", kid: str | None = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 600, "iat": now, "scope": "notes", **claims}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_keyed_with_the_public_key() -> str:
    """The classic algorithm confusion (RFC 8725 §2.1): HS256 "signed" with the issuer's public key
    as the secret. PyJWT will not write such a token, so it is put together here."""
    secret = RSA.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 600, "scope": "notes"}
    header = _b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def guarded(keys: KeySet) -> RelayConfig:
    spec = UserAuthSpec(issuer=ISSUER, jwks_uri=keys.url, required_scopes=["notes"], channels=["notes"])
    return relay_config(public_url=PUBLIC, tunnels={TUNNEL: TunnelSpec(gateway_key=KEY, user_auth=spec)})


async def status_of(h: Harness, bearer: str | None, channel: str = "notes") -> int:
    """A `tools/list` with this token: when the relay queues it, answered as the gateway would (200)."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with asyncio.timeout(WAIT):
        caller = asyncio.create_task(h.call(channel=channel, headers=headers))
        queued = asyncio.create_task(h.queue.enqueued.get())
        done, _ = await asyncio.wait([caller, queued], return_when=asyncio.FIRST_COMPLETED)
        if queued in done:
            (command,) = await h.commands()
            await h.respond(command, resp_json=result("rpc-1", {}))
        else:
            queued.cancel()
        return (await caller).status


@pytest.fixture
async def relay(make_harness: HarnessFactory, keyset: KeySet) -> Harness:
    keyset.keys = [jwk(RSA, "k1")]
    h = await make_harness(guarded(keyset))
    await h.seen()
    return h


async def test_a_valid_token_passes_and_other_channels_are_not_checked(relay: Harness) -> None:
    assert await status_of(relay, token(RSA)) == 200
    assert await status_of(relay, None, channel="files") == 200  # `channels: [notes]` only


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(
            lambda: jwt.encode({"iss": ISSUER, "sub": "a", "aud": AUDIENCE, "exp": 2**31}, None, "none"), id="alg none"
        ),
        pytest.param(hmac_keyed_with_the_public_key, id="HS256 keyed with the public key"),
        pytest.param(lambda: token(RSA, kid="k9"), id="a kid the issuer does not have"),
        pytest.param(lambda: token(RSA, kid=None, aud="https://other.example/mcp"), id="another resource"),
        pytest.param(lambda: token(RSA, exp=int(time.time()) - 120), id="expired past the leeway"),
        pytest.param(lambda: token(RSA, nbf=int(time.time()) + 3600), id="not valid yet"),
        pytest.param(lambda: token(RSA, sub=None), id="no subject"),
    ],
)
async def test_hostile_tokens_are_refused_and_never_queued(relay: Harness, forged: Callable[[], str]) -> None:
    """RFC 8725 §2.1, §3.1: only the configured asymmetric algorithms, never `none`, never a public
    key used as an HMAC secret; §3.9: the audience is this resource; RFC 7519 §4.1.4-4.1.5: `exp`,
    `nbf`. A refused request is never queued (RFC 6750 §3.1: 401 `invalid_token`)."""
    assert await status_of(relay, forged()) == 401
    assert relay.queue.enqueued.empty()


async def test_a_jwk_that_names_its_algorithm_is_used_for_no_other(
    make_harness: HarnessFactory, keyset: KeySet
) -> None:
    """RFC 7517 §4.4 and RFC 8725 §3.1: a key published with `alg: RS256` verifies no PS256 token."""
    keyset.keys = [jwk(RSA, "k1", alg="RS256")]
    h = await make_harness(guarded(keyset))
    await h.seen()
    assert await status_of(h, token(RSA, algorithm="PS256")) == 401
    assert await status_of(h, token(RSA, algorithm="RS256")) == 200


async def test_unknown_kids_refetch_the_key_set_but_never_faster_than_the_floor(
    make_harness: HarnessFactory, keyset: KeySet
) -> None:
    """RFC 7517 key rotation: a `kid` the relay does not hold makes it fetch the set again (a key
    published since is found); a stream of forged `kid`s cannot make it fetch more often than
    `jwks_refresh_min_s` (30 s by default)."""
    keyset.keys = [jwk(RSA, "k1")]
    spec = UserAuthSpec(issuer=ISSUER, jwks_uri=keyset.url, jwks_refresh_min_s=0)
    eager = await make_harness(
        relay_config(public_url=PUBLIC, tunnels={TUNNEL: TunnelSpec(gateway_key=KEY, user_auth=spec)})
    )
    await eager.seen()
    assert await status_of(eager, token(RSA)) == 200
    keyset.keys.append(jwk(EC, "k2"))  # rotated in after the relay fetched the set
    assert await status_of(eager, token(EC, algorithm="ES256", kid="k2")) == 200
    assert keyset.fetches == 2
    fetched = keyset.fetches
    floored = await make_harness(guarded(keyset))
    await floored.seen()
    assert await status_of(floored, token(RSA)) == 200
    for n in range(5):
        assert await status_of(floored, token(RSA, kid=f"forged-{n}")) == 401
    assert keyset.fetches == fetched + 1


async def test_a_rotated_in_key_is_found(make_harness: HarnessFactory, keyset: KeySet) -> None:
    """RFC 7517: the issuer publishes a new key (EC here) under a new `kid`; its tokens pass."""
    keyset.keys = [jwk(RSA, "k1"), jwk(EC, "k2")]
    h = await make_harness(guarded(keyset))
    await h.seen()
    assert await status_of(h, token(EC, algorithm="ES256", kid="k2")) == 200


async def test_private_and_symmetric_keys_in_a_key_set_are_ignored(
    make_harness: HarnessFactory, keyset: KeySet
) -> None:
    """RFC 7517 §4 / RFC 8725 §3.1: an issuer's set holds public keys; a shared secret (`oct`) in it
    cannot be used to sign tokens the relay accepts."""
    secret = b"a shared secret of thirty-two bytes or more"
    keyset.keys = [{"kty": "oct", "kid": "k1", "k": base64.urlsafe_b64encode(secret).decode()}]
    h = await make_harness(guarded(keyset))
    await h.seen()
    assert (
        await status_of(
            h,
            jwt.encode(
                {"iss": ISSUER, "sub": "a", "aud": AUDIENCE, "exp": 2**31},
                secret,
                algorithm="HS256",
                headers={"kid": "k1"},
            ),
        )
        == 401
    )


# =========================================================================== jwks_proxy in the config


def _user_auth_doc(proxy: str) -> str:
    return (
        "tunnels:\n"
        "  a:\n"
        "    gateway_key: k\n"
        f"    user_auth: {{issuer: '{ISSUER}', jwks_uri: '{ISSUER}/jwks', jwks_proxy: '{proxy}'}}\n"
    )


@pytest.mark.parametrize("proxy", ["none", "http://proxy.corp:3128", "https://relay:pw@proxy.corp"])
def test_user_auth_jwks_proxy_takes_a_proxy_url_or_none(proxy: str) -> None:
    spec = decode_relay_config(_user_auth_doc(proxy)).tunnels["a"].user_auth
    assert spec is not None
    assert spec.jwks_proxy == proxy


@pytest.mark.parametrize("proxy", ["socks5://relay:pw-Qx7@proxy.corp:1080", "http://relay:pw-Qx7@", "None", ""])
def test_a_bad_user_auth_jwks_proxy_is_named_without_its_credentials(proxy: str) -> None:
    """The same check and words as `identity.issuers[].jwks_proxy` (tests/unit/relay/test_identity.py)."""
    with pytest.raises(RelayConfigError) as caught:
        decode_relay_config(_user_auth_doc(proxy), source="relay.yaml")
    assert caught.value.file == "relay.yaml"
    assert caught.value.key == "$.tunnels.a.user_auth"
    expected = "Expected `jwks_proxy` to be an http:// or https:// proxy URL or `none`, got"
    assert caught.value.problem.startswith(expected)
    assert "pw-Qx7" not in str(caught.value)
