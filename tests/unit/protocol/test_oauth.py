"""The sans-IO OAuth discovery rules (gateway/protocol/oauth.py): well-known URLs, documents, challenges.

Plain calls, no sockets. Each test names the RFC 9728 / RFC 8414 / RFC 9110 section or the MCP
authorization spec section (2025-11-25, unchanged in 2026-07-28) it checks.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.oauth import (
    AUTHORIZATION_SERVER_KEY,
    InvalidMetadata,
    MetadataCodec,
    authorization_server_metadata_urls,
    protected_resource_metadata_urls,
    quoted,
    resource_metadata,
    with_resource_metadata,
)
from gateway.protocol.wire import Codec

CODEC = MetadataCodec(Codec())


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            "https://mcp.example.com/mcp",
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ],
        ),
        (
            "http://127.0.0.1:8781/a/b/",
            [
                "http://127.0.0.1:8781/.well-known/oauth-protected-resource/a/b",
                "http://127.0.0.1:8781/.well-known/oauth-protected-resource",
            ],
        ),
        ("https://mcp.example.com", ["https://mcp.example.com/.well-known/oauth-protected-resource"]),
        ("https://mcp.example.com/", ["https://mcp.example.com/.well-known/oauth-protected-resource"]),
        (
            "https://mcp.example.com/mcp?tenant=7",
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp?tenant=7",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ],
        ),
    ],
)
def test_protected_resource_metadata_urls_insert_the_suffix_then_fall_back_to_the_root(
    resource: str, expected: list[str]
) -> None:
    """RFC 9728 §3.1 (the suffix goes between host and path, a terminating slash removed, the query
    kept) and MCP authorization 2025-11-25, "Protected Resource Metadata Discovery Requirements"
    (path-inserted URL first, then the root one)."""
    assert protected_resource_metadata_urls(resource) == expected


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        (
            "https://auth.example.com",
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ],
        ),
        (
            "https://login.example.com/tenant1/v2.0/",
            [
                "https://login.example.com/.well-known/oauth-authorization-server/tenant1/v2.0",
                "https://login.example.com/.well-known/openid-configuration/tenant1/v2.0",
                "https://login.example.com/tenant1/v2.0/.well-known/openid-configuration",
            ],
        ),
    ],
)
def test_authorization_server_metadata_urls_follow_the_mcp_order(issuer: str, expected: list[str]) -> None:
    """RFC 8414 §3.1 (path insertion), OpenID Connect Discovery 1.0 §4 (path appending), in the order
    of MCP authorization 2025-11-25, "Authorization Server Metadata Discovery"."""
    assert authorization_server_metadata_urls(issuer) == expected


def test_protected_resource_metadata_needs_an_http_resource_and_url_authorization_servers() -> None:
    """RFC 9728 §2: `resource` is REQUIRED; `authorization_servers` is OPTIONAL, a list of issuer URLs."""
    good = CODEC.protected_resource(
        b'{"resource":"https://r.example/mcp","authorization_servers":["https://as.example"],"x":[1]}'
    )
    assert good.resource == "https://r.example/mcp"
    assert good.authorization_servers == ["https://as.example"]
    assert CODEC.protected_resource(b'{"resource":"https://r.example"}').authorization_servers == []
    for bad in (
        b"[]",
        b"{}",
        b'{"resource": 7}',
        b'{"resource":"not a url"}',
        b'{"resource":"ftp://r.example"}',
        b'{"resource":"https://r.example","authorization_servers":["javascript:alert(1)"]}',
        b'{"resource":"https://r.example","authorization_servers":"https://as.example"}',
        b"{" * 5000,
    ):
        with pytest.raises(InvalidMetadata):
            CODEC.protected_resource(bad)


def test_authorization_server_metadata_needs_an_issuer() -> None:
    """RFC 8414 §2: `issuer` is REQUIRED."""
    assert CODEC.authorization_server(b'{"issuer":"https://as.example","x":1}').issuer == "https://as.example"
    for bad in (b"{}", b'{"issuer":null}', b"nope"):
        with pytest.raises(InvalidMetadata):
            CODEC.authorization_server(bad)


def test_the_answer_carries_the_server_document_member_for_member_and_the_relay_serves_it_rewritten() -> None:
    """RFC 9728 §3.3: the `resource` served must be the resource the well-known URL was built from,
    so the relay replaces the private server's with the channel's public URL; the gateway's extension
    member (the authorization server's RFC 8414 document) is not served."""
    prm = b'{"resource":"http://10.0.0.5:8000/mcp","authorization_servers":["https://idp"],"scopes_supported":["a"]}'
    asm = b'{"issuer":"https://idp","token_endpoint":"https://idp/token"}'
    assert CODEC.answer(prm, None) == prm
    answer = json.loads(CODEC.answer(prm, asm))
    assert answer[AUTHORIZATION_SERVER_KEY] == json.loads(asm)
    assert answer["scopes_supported"] == ["a"]
    served = json.loads(CODEC.served(CODEC.answer(prm, asm), "https://relay.example/v1/mcp/t/notes"))
    assert served == {
        "resource": "https://relay.example/v1/mcp/t/notes",
        "authorization_servers": ["https://idp"],
        "scopes_supported": ["a"],
    }
    with pytest.raises(InvalidMetadata):
        CODEC.served(b"[1]", "https://relay.example/v1/mcp/t")


# --------------------------------------------------------------------------- WWW-Authenticate

NEW = "https://relay.example/.well-known/oauth-protected-resource/v1/mcp/t"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'Bearer resource_metadata="http://10.0.0.5/.well-known/oauth-protected-resource/mcp"',
            f'Bearer resource_metadata="{NEW}"',
        ),
        (
            'Bearer error="invalid_token", error_description="expired", resource_metadata="http://x/y", scope="a b"',
            f'Bearer error="invalid_token", error_description="expired", resource_metadata="{NEW}", scope="a b"',
        ),
        ("Bearer resource_metadata=http://x/y", f'Bearer resource_metadata="{NEW}"'),
        ('Bearer RESOURCE_METADATA = "http://x/y"', f'Bearer RESOURCE_METADATA = "{NEW}"'),
        (
            'Basic realm="resource_metadata=\\"not a param\\"", Bearer resource_metadata="http://x"',
            f'Basic realm="resource_metadata=\\"not a param\\"", Bearer resource_metadata="{NEW}"',
        ),
        ('Bearer realm="api"', 'Bearer realm="api"'),
        ("Bearer", "Bearer"),
        (
            'Negotiate abc+/==, Bearer resource_metadata="http://x"',
            f'Negotiate abc+/==, Bearer resource_metadata="{NEW}"',
        ),
    ],
)
def test_resource_metadata_is_replaced_and_nothing_else_moves(value: str, expected: str) -> None:
    """RFC 9728 §5.1 (`resource_metadata` in a Bearer challenge) within RFC 9110 §11.6.1's challenge
    list: parameters are case-insensitive, values a token or quoted-string; a quoted-string that
    merely contains `resource_metadata=` is not a parameter; other challenges are untouched."""
    assert with_resource_metadata(value, NEW) == expected
    if "resource_metadata" in expected.lower() and "not a param" not in value:
        assert resource_metadata(expected) == NEW


def test_a_value_that_is_not_a_challenge_list_is_refused_not_half_rewritten() -> None:
    """RFC 9110 §11.6.1: text outside the grammar cannot be rewritten safely (it may carry a private URL)."""
    assert with_resource_metadata('Bearer resource_metadata="http://10.0.0.5/unterminated', NEW) is None
    assert with_resource_metadata("Bearer {json}", NEW) is None
    assert resource_metadata('Bearer resource_metadata="http://10.0.0.5/unterminated') is None


def test_quoted_escapes_quotes_and_backslashes() -> None:
    """RFC 9110 §5.6.4 quoted-string."""
    assert quoted('a"b\\c') == '"a\\"b\\\\c"'
    assert resource_metadata("Bearer resource_metadata=" + quoted('x"y')) == 'x"y'


@given(st.text(max_size=80))
def test_any_text_either_parses_or_is_refused(value: str) -> None:
    """Any header text: a rewrite or None, never an exception (a server chooses what it sends)."""
    rewritten = with_resource_metadata(value, NEW)
    assert rewritten is None or isinstance(rewritten, str)
    resource_metadata(value)
