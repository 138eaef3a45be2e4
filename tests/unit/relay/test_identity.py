"""The relay's identity parts by themselves, first half: `identity:` config, the relay's access tokens
(gateway/relay/tokens.py) and JWKS documents (gateway/relay/jwks.py `parse_jwks`).

Real keys and JWTs made here. The key cache, fetching, the exchange policy and the token request's
edge are in test_identity_exchange.py; the whole relay, as processes, in tests/e2e/test_relay_identity.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from gateway.relay.config import RelayConfigError, decode_relay_config, load_relay_config
from gateway.relay.jwks import JwksUnavailable, VerifyKey, parse_jwks
from gateway.relay.tokens import AccessTokens, SigningKeyError, load_signing_key, looks_like_jwt, thumbprint
from tests.support.identity import IssuerKey, unsigned

# =========================================================================== config


def _doc(identity: str, tunnels: str = "{a: {}, b: {gateway_key: k}}") -> str:
    return f"tunnels: {tunnels}\nidentity:\n{identity}"


def _issuer(fields: str) -> str:
    return f"  issuers: [{{issuer: i, audience: x, {fields}}}]\n  signing_keys: [k]\n"


ISSUER_OK = "  issuers: [{issuer: i, audience: x, subjects: {s: [a]}, jwks_url: 'https://idp/jwks'}]\n"


def test_identity_config_decodes_with_its_defaults() -> None:
    config = decode_relay_config(_doc(ISSUER_OK + "  signing_keys: [file:k.pem]\n"))
    assert config.identity is not None
    assert config.identity.token_ttl_s == 900
    assert config.identity.clock_skew_s == 60
    assert (config.identity.token_rate_per_s, config.identity.token_burst) == (5.0, 20)
    assert config.identity.trusted_proxies == []  # X-Forwarded-For is never read
    issuer = config.identity.issuers[0]
    assert issuer.algorithms[:2] == ["RS256", "RS384"]
    assert "EdDSA" in issuer.algorithms
    assert config.tunnels["a"].gateway_key is None  # tunnel a: access tokens only


@pytest.mark.parametrize(
    ("document", "key", "problem"),
    [
        ("tunnels: {a: {}}\n", "$.tunnels.a.gateway_key", "Expected a `gateway_key`, or an `identity` subject"),
        (
            _doc(_issuer("subjects: {s: [c]}, jwks_url: 'https://h/j'")),
            "$.identity.issuers[0].subjects.s",
            "Expected a tunnel this relay serves, got 'c'",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_url: 'http://idp/j'")),
            "$.identity.issuers[0]",
            "http:// on loopback only",
        ),
        (
            _doc("  issuers: [{issuer: i, audience: x, subjects: {s: [a]}}]\n  signing_keys: [k]\n"),
            "$.identity.issuers[0]",
            "exactly one of `jwks_url` and `jwks_file`",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_file: j, jwks_token: t")),
            "$.identity.issuers[0]",
            "only with `jwks_url`",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_file: j, jwks_proxy: none")),
            "$.identity.issuers[0]",
            "only with `jwks_url`",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_url: 'https://h/j', jwks_proxy: 'proxy.corp:3128'")),
            "$.identity.issuers[0]",
            "Expected `jwks_proxy` to be an http:// or https:// proxy URL or `none`, got 'proxy.corp:3128'",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_file: j, algorithms: [HS256]")),
            "$.identity.issuers[0].algorithms[0]",
            "Invalid enum value 'HS256'",
        ),
        (
            _doc(_issuer("subjects: {s: [a]}, jwks_file: j, algorithms: [none]")),
            "$.identity.issuers[0].algorithms[0]",
            "Invalid enum value 'none'",
        ),
        (_doc(ISSUER_OK + "  signing_keys: []\n"), "$.identity.signing_keys", "length >= 1"),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  token_ttl_s: 0\n"), "$.identity.token_ttl_s", ">= 1"),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  clock_skew_s: 3600\n"), "$.identity.clock_skew_s", "<= 300"),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  surprise: 1\n"), "$.identity", "unknown field `surprise`"),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  token_rate_per_s: 0\n"), "$.identity.token_rate_per_s", "> 0"),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  token_rate_per_s: -1\n"), "$.identity.token_rate_per_s", "> 0"),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  token_rate_per_s: 5/s\n"),
            "$.identity.token_rate_per_s",
            "Expected `float`, got `str`",
        ),
        (_doc(ISSUER_OK + "  signing_keys: [k]\n  token_burst: 0\n"), "$.identity.token_burst", ">= 1"),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  token_burst: 2.5\n"),
            "$.identity.token_burst",
            "Expected `int`, got `float`",
        ),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  trusted_proxies: [10.0.0.0/8, 10.0.0.1/8]\n"),
            "$.identity.trusted_proxies[1]",
            "Expected an IP address or a CIDR network with no host bits set (`10.0.0.0/8`), got '10.0.0.1/8'",
        ),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  trusted_proxies: [ingress.local]\n"),
            "$.identity.trusted_proxies[0]",
            "got 'ingress.local'",
        ),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  trusted_proxies: ['::1/129']\n"),
            "$.identity.trusted_proxies[0]",
            "got '::1/129'",
        ),
        (
            _doc(ISSUER_OK + "  signing_keys: [k]\n  trusted_proxies: 10.0.0.0/8\n"),
            "$.identity.trusted_proxies",
            "Expected `array`, got `str`",
        ),
        (
            _doc(
                "  issuers:\n"
                + 2 * "    - {issuer: i, audience: x, subjects: {s: [a]}, jwks_file: j}\n"
                + "  signing_keys: [k]\n"
            ),
            "$.identity",
            "Expected each issuer once, got 'i' again at issuers[1]",
        ),
    ],
)
def test_identity_config_errors_name_the_key(document: str, key: str, problem: str) -> None:
    with pytest.raises(RelayConfigError) as caught:
        decode_relay_config(document, source="relay.yaml")
    assert caught.value.file == "relay.yaml"
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_trusted_proxies_take_addresses_and_networks_of_both_families() -> None:
    entries = "['10.0.0.0/8', 192.0.2.10, '2001:db8::/32', '::1']"
    config = decode_relay_config(_doc(ISSUER_OK + f"  signing_keys: [k]\n  trusted_proxies: {entries}\n"))
    assert config.identity is not None
    assert config.identity.trusted_proxies == ["10.0.0.0/8", "192.0.2.10", "2001:db8::/32", "::1"]


@pytest.mark.parametrize("proxy", ["none", "http://proxy.corp:3128", "https://relay:pw@proxy.corp"])
def test_jwks_proxy_takes_a_proxy_url_or_none(proxy: str) -> None:
    config = decode_relay_config(_doc(_issuer(f"subjects: {{s: [a]}}, jwks_url: 'https://h/j', jwks_proxy: '{proxy}'")))
    assert config.identity is not None
    assert config.identity.issuers[0].jwks_proxy == proxy


@pytest.mark.parametrize("proxy", ["socks5://relay:pw-Qx7@proxy.corp:1080", "http://relay:pw-Qx7@", "None"])
def test_a_bad_jwks_proxy_is_named_without_its_credentials(proxy: str) -> None:
    document = _doc(_issuer(f"subjects: {{s: [a]}}, jwks_url: 'https://h/j', jwks_proxy: '{proxy}'"))
    with pytest.raises(RelayConfigError) as caught:
        decode_relay_config(document, source="relay.yaml")
    assert caught.value.key == "$.identity.issuers[0]"
    assert "`jwks_proxy`" in caught.value.problem
    assert str(caught.value).startswith("relay.yaml: $.identity.issuers[0]: Expected `jwks_proxy`")
    assert "pw-Qx7" not in str(caught.value)


def test_relative_identity_files_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    file = tmp_path / "relay.yaml"
    file.write_text(
        _doc(
            "  issuers: [{issuer: i, audience: x, subjects: {s: [a]}, jwks_url: 'https://h/j',"
            " jwks_ca_file: ca.pem, jwks_token: 'file:sa-token'},"
            " {issuer: j, audience: x, subjects: {s: [a]}, jwks_file: jwks.json}]\n"
            "  signing_keys: ['file:keys/new.pem', 'file:/abs/old.pem', 'env:KEY']\n"
        )
    )
    identity = load_relay_config(file).identity
    assert identity is not None
    assert identity.signing_keys == [f"file:{tmp_path}/keys/new.pem", "file:/abs/old.pem", "env:KEY"]
    assert identity.issuers[0].jwks_ca_file == str(tmp_path / "ca.pem")
    assert identity.issuers[0].jwks_token == f"file:{tmp_path}/sa-token"
    assert identity.issuers[1].jwks_file == str(tmp_path / "jwks.json")


# =========================================================================== the relay's access tokens


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_thumbprint_is_rfc_7638() -> None:
    """RFC 7638 section 3.1's example key and its thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknj"
        "hMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qM"
        "QvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzK"
        "nqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_signing_keys_of_each_kind_load_with_their_algorithm() -> None:
    loaded = {
        "RS256": load_signing_key(_pem(rsa.generate_private_key(65537, 2048))),
        "ES256": load_signing_key(_pem(ec.generate_private_key(ec.SECP256R1()))),
        "ES384": load_signing_key(_pem(ec.generate_private_key(ec.SECP384R1()))),
        "EdDSA": load_signing_key(_pem(ed25519.Ed25519PrivateKey.generate())),
    }
    for algorithm, key in loaded.items():
        assert key.algorithm == algorithm
        assert repr(key) == f"SigningKey(kid={key.kid!r}, algorithm={algorithm!r})"  # no key material


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        (lambda: "not a key", "not an unencrypted PEM private key"),
        (lambda: _pem(rsa.generate_private_key(65537, 1024)), "at least 2048 bits"),
        (lambda: _pem(ec.generate_private_key(ec.SECP256K1())), "P-256, P-384 or P-521"),
        (
            lambda: (
                ec.generate_private_key(ec.SECP256R1())
                .private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"passphrase"),
                )
                .decode()
            ),
            "not an unencrypted PEM private key",
        ),
        (lambda: IssuerKey.ec().public_pem().decode(), "not an unencrypted PEM private key"),
    ],
)
def test_unusable_signing_keys_are_refused_by_reason(pem: Callable[[], str], problem: str) -> None:
    text = pem()
    with pytest.raises(SigningKeyError) as caught:
        load_signing_key(text)
    assert problem in str(caught.value)
    assert text not in str(caught.value)


def _tokens(*keys: Any, ttl_s: int = 600, skew: float = 0) -> AccessTokens:
    return AccessTokens([load_signing_key(_pem(k)) for k in keys], ttl_s=ttl_s, clock_skew_s=skew)


def test_an_access_token_verifies_with_its_grant_and_any_configured_key() -> None:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)
    old = _tokens(k1)
    issued = old.issue(subject="s", provider="p", tunnels=["b", "a", "a"])
    assert "token" not in repr(issued)
    assert issued.kid == old.kids[0]
    grant = old.verify(issued.token)
    assert grant is not None
    assert (grant.subject, grant.provider, grant.tunnels) == ("s", "p", frozenset({"a", "b"}))
    assert jwt.decode(issued.token, options={"verify_signature": False})["tunnels"] == ["a", "b"]
    rotated = _tokens(k2, k1)  # the new key signs, the old one still verifies
    assert rotated.verify(issued.token) == grant
    fresh = rotated.issue(subject="s", provider="p", tunnels=["a"])
    assert jwt.get_unverified_header(fresh.token) == {"alg": "RS256", "kid": rotated.kids[0], "typ": "at+jwt"}
    assert old.verify(fresh.token) is None  # a replica that never had K2
    assert _tokens(k2).verify(issued.token) is None  # K1 retired


def test_access_tokens_that_are_not_quite_right_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tokens = _tokens(key, skew=0)
    kid = tokens.kids[0]
    now = time.time()
    good = tokens.issue(subject="s", provider="p", tunnels=["a"]).token
    head, payload, signature = good.split(".")
    body = json.loads(jwt.utils.base64url_decode(payload))
    other = ec.generate_private_key(ec.SECP256R1())

    def signed(claims: dict[str, Any], signer: Any = key, **header: Any) -> str:
        return jwt.encode(claims, signer, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt", **header})

    forged = jwt.utils.base64url_encode(json.dumps({**body, "tunnels": ["a", "b"]}).encode()).decode()
    refused = {
        "expired": tokens.issue(subject="s", provider="p", tunnels=["a"], now=now - 3600).token,
        "another key with our kid": signed(body, other),
        "tampered tunnels": f"{head}.{forged}.{signature}",
        "no typ": signed(body, typ="JWT"),
        "no kid": jwt.encode(body, key, algorithm="ES256", headers={"typ": "at+jwt"}),
        "wrong audience": signed({**body, "aud": "elsewhere"}),
        "wrong issuer": signed({**body, "iss": "elsewhere"}),
        "tunnels not a list": signed({**body, "tunnels": "a"}),
        "no jti": signed({k: v for k, v in body.items() if k != "jti"}),
        "alg none": unsigned(body, kid),
        "not a JWT": "abc",
        "huge": "a.b." + "c" * 9000,
    }
    for case, token in refused.items():
        assert tokens.verify(token) is None, case
    assert tokens.verify(signed(body)) is not None  # the same claims, signed right, pass
    assert looks_like_jwt(good)
    assert not looks_like_jwt("gateway-key")


def test_clock_skew_bounds_an_access_tokens_expiry() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = _tokens(key, ttl_s=60).issue(subject="s", provider="p", tunnels=["a"], now=time.time() - 90)
    assert _tokens(key, skew=0).verify(issued.token) is None
    assert _tokens(key, skew=60).verify(issued.token) is not None


# =========================================================================== JWKS documents


def test_parse_jwks_keeps_public_signature_keys_only() -> None:
    rsa_key, ec_key = IssuerKey.rsa(), IssuerKey.ec()
    private_member = RSAAlgorithm.to_jwk(rsa_key.private, as_dict=True) | {"kid": "leaked"}
    document = {
        "keys": [
            rsa_key.jwk(),
            ec_key.jwk() | {"use": "enc"},  # an encryption key
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # a symmetric key: never
            private_member,
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
            {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA", "kid": "odd"},
        ]
    }
    keys = parse_jwks(json.dumps(document).encode())
    assert [key.kid for key in keys] == [rsa_key.kid, "leaked"]
    assert all(isinstance(key.key, rsa.RSAPublicKey) for key in keys)  # the private half was dropped
    for bad in (b"", b"[]", b"{}", b'{"keys": []}', b'{"keys": [{"kty": "oct", "k": "AA"}]}', b"[" * 5000):
        with pytest.raises(JwksUnavailable):
            parse_jwks(bad)


def test_a_key_fits_only_its_algorithms() -> None:
    rsa_public = IssuerKey.rsa().private.public_key()
    p256 = IssuerKey.ec().private.public_key()
    p384 = IssuerKey.ec("ES384").private.public_key()
    ed = IssuerKey.ed25519().private.public_key()
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    assert VerifyKey(None, None, rsa_public).fits("PS256")
    assert not VerifyKey(None, "RS256", rsa_public).fits("PS256")  # the JWK named its algorithm
    assert not VerifyKey(None, None, rsa_public).fits("ES256")
    assert isinstance(p256, ec.EllipticCurvePublicKey)
    assert isinstance(p384, ec.EllipticCurvePublicKey)
    assert VerifyKey(None, None, p256).fits("ES256")
    assert not VerifyKey(None, None, p384).fits("ES256")
    assert VerifyKey(None, None, p384).fits("ES384")
    assert isinstance(ed, ed25519.Ed25519PublicKey)
    assert VerifyKey(None, None, ed).fits("EdDSA")
    assert not VerifyKey(None, None, ed).fits("HS256")
    assert not VerifyKey(None, None, rsa_public).fits("none")
