"""The sans-IO half of a server's service credential (gateway/protocol/service_tokens.py and the shared
answer reading in gateway/protocol/oauth_tokens.py), with plain calls: request bodies (RFC 6749 §4.4,
RFC 8693 §2.1), HTTP Basic client authentication (RFC 6749 §2.3.1), the Authorization header swap,
RFC 6749 §5.2 refusals, and the per-user cache on a clock the test moves."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, unquote_plus

import pytest

from gateway.protocol.oauth_tokens import MASK, Failed, Granted, read_answer
from gateway.protocol.service_tokens import (
    ACCESS_TOKEN_TYPE,
    Pauses,
    TokenCache,
    basic_authorization,
    bearer_token,
    client_credentials_form,
    token_exchange_form,
    user_key,
    with_bearer,
)

USER = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
CONTEXT = "server 'notes', token endpoint idp.example"


def form(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


# --------------------------------------------------------------------------- request bodies


def test_client_credentials_body_names_the_grant_and_only_the_members_given() -> None:
    assert form(client_credentials_form()) == {"grant_type": ["client_credentials"]}
    body = form(
        client_credentials_form(scope="notes.read notes.write", audience="api://notes", resource="https://n/mcp")
    )
    assert body == {
        "grant_type": ["client_credentials"],
        "scope": ["notes.read notes.write"],
        "audience": ["api://notes"],
        "resource": ["https://n/mcp"],
    }


def test_token_exchange_body_carries_the_users_access_token_as_the_subject() -> None:
    body = form(token_exchange_form(USER, audience="api://notes", requested_token_type=ACCESS_TOKEN_TYPE))
    assert body == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_token": [USER],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:access_token"],
        "audience": ["api://notes"],
        "requested_token_type": [ACCESS_TOKEN_TYPE],
    }


def test_a_public_client_names_itself_in_the_body() -> None:
    assert form(token_exchange_form(USER, client_id="gateway"))["client_id"] == ["gateway"]
    assert "client_id" not in form(token_exchange_form(USER))


def test_form_values_are_encoded_so_no_member_can_be_smuggled() -> None:
    body = form(client_credentials_form(scope="a&grant_type=password b"))
    assert body["grant_type"] == ["client_credentials"]
    assert body["scope"] == ["a&grant_type=password b"]


def test_basic_client_authentication_form_encodes_id_and_secret_first() -> None:
    value = basic_authorization("gw:client", "s3cr+t/é")
    scheme, _, encoded = value.partition(" ")
    assert scheme == "Basic"
    client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert (unquote_plus(client_id), unquote_plus(secret)) == ("gw:client", "s3cr+t/é")
    assert client_id == "gw%3Aclient"  # the colon of the id cannot be taken for the separator


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"Authorization": [f"Bearer {USER}"]}, USER),
        ({"authorization": [f"bearer  {USER} "]}, USER),
        ({}, None),
        ({"Authorization": ["Basic dXNlcjpwdw=="]}, None),
        ({"Authorization": ["Bearer"]}, None),
        ({"Authorization": ["Bearer a b"]}, None),
        ({"Authorization": ["Bearer a", "Bearer b"]}, None),
    ],
)
def test_the_users_bearer_token(headers: dict[str, list[str]], token: str | None) -> None:
    assert bearer_token(headers) == token


def test_with_bearer_replaces_every_authorization_value_whatever_its_case() -> None:
    headers = {"authorization": [f"Bearer {USER}"], "AUTHORIZATION": ["Basic x"], "X-Trace": ["1"]}
    out = with_bearer(headers, "svc-token")
    assert out == {"X-Trace": ["1"], "Authorization": ["Bearer svc-token"]}
    assert USER not in json.dumps(out)
    assert headers["authorization"] == [f"Bearer {USER}"]  # the caller's headers are left as they were


def test_a_users_cache_key_is_a_hash_not_the_token() -> None:
    key = user_key(USER)
    assert USER not in key
    assert len(key) == 64
    assert key == user_key(USER) != user_key(USER + "x")


# --------------------------------------------------------------------------- answers and refusals


def test_a_token_request_refusal_names_its_error_code() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": "bad secret s3cr3t-value"}).encode()
    failed = read_answer(401, body, context=CONTEXT, hide=["s3cr3t-value"], what="client credentials request")
    assert isinstance(failed, Failed)
    assert failed.refused
    assert failed.code == "invalid_client"
    assert failed.reason == f"client credentials request refused: invalid_client ({CONTEXT}): bad secret {MASK}"


def test_an_unreadable_error_code_is_not_kept() -> None:
    failed = read_answer(400, json.dumps({"error": "no such\ncode"}).encode(), context=CONTEXT)
    assert isinstance(failed, Failed)
    assert failed.code is None
    assert failed.refused


def test_a_server_side_error_is_not_a_refusal() -> None:
    failed = read_answer(503, b'{"error":"temporarily_unavailable"}', context=CONTEXT)
    assert isinstance(failed, Failed)
    assert not failed.refused
    assert failed.code == "temporarily_unavailable"


def test_an_answer_without_expires_in_lives_the_default_when_one_is_given() -> None:
    body = b'{"access_token":"svc-1","token_type":"Bearer"}'
    assert read_answer(200, body, context=CONTEXT, default_lifetime_s=300) == Granted("svc-1", 300.0)
    failed = read_answer(200, body, context=CONTEXT)
    assert isinstance(failed, Failed)
    assert "expires_in" in failed.reason


# --------------------------------------------------------------------------- the cache


def test_a_lease_is_kept_until_it_is_due_and_dropped_at_expiry() -> None:
    cache = TokenCache(refresh_before_s=60)
    found = cache.put("k", Granted("t1", 3600), sent_at=100, now=101)
    assert found is not None
    assert cache.get("k", 200) == found
    assert not cache.due(found, 200)
    assert cache.due(found, 100 + 3600 - 60)  # refresh_before_s ahead of expiry
    assert cache.get("k", 100 + 3600 - 30) is None  # the last 30 s are not used
    assert len(cache) == 0


def test_a_short_lived_token_is_refreshed_half_way_not_at_once() -> None:
    cache = TokenCache(refresh_before_s=60)
    found = cache.put("k", Granted("t1", 10), sent_at=0, now=0)
    assert found is not None
    assert found.refresh_at == 5
    assert found.usable_until == 9


def test_a_token_expired_on_arrival_is_not_kept() -> None:
    cache = TokenCache(refresh_before_s=60)
    assert cache.put("k", Granted("t1", 10), sent_at=0, now=9.5) is None
    assert cache.get("k", 9.5) is None


def test_the_cache_is_bounded_least_recently_used_first_after_expired_ones() -> None:
    cache = TokenCache(refresh_before_s=0, max_entries=2)
    cache.put("old", Granted("a", 100), sent_at=0, now=0)
    cache.put("short", Granted("b", 10), sent_at=0, now=0)
    cache.put("new", Granted("c", 100), sent_at=0, now=50)  # "short" expired: it goes, "old" stays
    assert cache.get("old", 50) is not None
    assert cache.get("new", 50) is not None
    cache.put("newer", Granted("d", 100), sent_at=0, now=51)  # "old" was used least recently
    assert len(cache) == 2
    assert cache.get("old", 51) is None


def test_a_refused_token_is_dropped_only_while_it_is_the_current_one() -> None:
    cache = TokenCache(refresh_before_s=0)
    cache.put("k", Granted("t1", 100), sent_at=0, now=0)
    cache.put("k", Granted("t2", 100), sent_at=1, now=1)
    assert not cache.drop("k", "t1")  # a late refusal of a replaced token changes nothing
    assert cache.get("k", 2) is not None
    assert cache.drop("k", "t2")
    assert cache.get("k", 2) is None


def test_reprs_hide_tokens() -> None:
    cache = TokenCache(refresh_before_s=0)
    found = cache.put("k", Granted("svc-secret-token", 100), sent_at=0, now=0)
    assert "svc-secret-token" not in repr(found) + repr(Granted("svc-secret-token", 1))


def test_a_failure_is_heard_for_the_pause_then_forgotten() -> None:
    pauses: Pauses[str] = Pauses(pause_s=2, max_entries=2)
    pauses.note("alice", "refused", now=10)
    assert pauses.get("alice", 11.9) == "refused"
    assert pauses.get("bob", 11) is None
    assert pauses.get("alice", 12) is None
    pauses.note("a", "x", now=0)
    pauses.note("b", "y", now=0)
    pauses.note("c", "z", now=0)  # bounded: the oldest goes
    assert (pauses.get("a", 1), pauses.get("c", 1)) == (None, "z")
    pauses.clear("c")
    assert pauses.get("c", 1) is None
