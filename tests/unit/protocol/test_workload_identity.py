"""The sans-IO half of workload identity (gateway/protocol/workload_identity.py), with plain calls:
the exchange body, answers and refusals in words (never a token), the refresh schedule, and the
lifecycle's decisions on a clock the test moves."""

from __future__ import annotations

import json

import pytest

from gateway.protocol.workload_identity import (
    EXPIRY_MARGIN_S,
    GRANT_TYPE,
    MASK,
    Decision,
    Failed,
    Granted,
    Rejection,
    TokenLifecycle,
    describe,
    encode_request,
    lease,
    read_answer,
)

SUBJECT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXNlY3JldA"
CONTEXT = "identity provider idp_123"


def answer(**members: object) -> bytes:
    return json.dumps(
        {"access_token": "at-secret-0001", "expires_in": 3600, "token_type": "Bearer", **members}
    ).encode()


# --------------------------------------------------------------------------- the wire


@pytest.mark.parametrize(("kind", "urn"), [("jwt", "jwt"), ("id_token", "id_token")])
def test_request_body_has_the_five_members_in_rfc_order(kind: str, urn: str) -> None:
    body = encode_request(SUBJECT, subject_token_type=kind, identity_provider_id="idp_1", service_account_id="sa_2")  # type: ignore[arg-type]
    assert json.loads(body) == {
        "grant_type": GRANT_TYPE,
        "subject_token_type": f"urn:ietf:params:oauth:token-type:{urn}",
        "subject_token": SUBJECT,
        "identity_provider_id": "idp_1",
        "service_account_id": "sa_2",
    }
    assert list(json.loads(body)) == [
        "grant_type",
        "subject_token_type",
        "subject_token",
        "identity_provider_id",
        "service_account_id",
    ]


def test_a_token_answer_is_granted_and_its_repr_hides_the_token() -> None:
    granted = read_answer(200, answer(scope="ignored", issued_token_type="x"), context=CONTEXT)
    assert granted == Granted("at-secret-0001", 3600.0)
    assert "at-secret" not in repr(granted)


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"])
def test_token_type_is_bearer_in_any_case(token_type: str) -> None:
    assert isinstance(read_answer(200, answer(token_type=token_type), context=CONTEXT), Granted)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>gateway timeout</html>", "not a token answer (not JSON"),
        (b'{"expires_in": 60, "token_type": "Bearer"}', "not a token answer (Object missing required field"),
        (answer(expires_in="3600"), "not a token answer (Expected `float`, got `str`"),
        (answer(expires_in=0), "expires_in is not a positive number"),
        (answer(expires_in=-5), "expires_in is not a positive number"),
        (answer(token_type="DPoP"), "token_type 'DPoP' is not Bearer"),
        (answer(access_token=""), "an empty access_token"),
        (answer(access_token="two words"), "no header can carry"),
        (answer(access_token="line\r\nX-Injected: 1"), "no header can carry"),
    ],
)
def test_an_unusable_answer_is_a_failure_that_names_what_is_wrong(body: bytes, words: str) -> None:
    failed = read_answer(200, body, context=CONTEXT)
    assert isinstance(failed, Failed)
    assert words in failed.reason
    assert failed.reason.endswith(f"({CONTEXT})") or CONTEXT in failed.reason
    assert "at-secret" not in failed.reason
    assert not failed.refused


def test_a_refusal_names_the_error_and_the_identity_provider() -> None:
    body = json.dumps({"error": "invalid_grant", "error_description": "audience mismatch"}).encode()
    failed = read_answer(400, body, context=CONTEXT)
    assert failed == Failed(
        "token exchange refused: invalid_grant (identity provider idp_123): audience mismatch", True
    )


def test_a_refusal_without_a_description() -> None:
    failed = read_answer(401, b'{"error": "unauthorized_client"}', context=CONTEXT)
    assert failed == Failed("token exchange refused: unauthorized_client (identity provider idp_123)", True)


@pytest.mark.parametrize(("status", "refused"), [(400, True), (403, True), (408, False), (429, False), (503, False)])
def test_what_counts_as_refused(status: int, refused: bool) -> None:
    failed = read_answer(status, b'{"error": "temporarily_unavailable"}', context=CONTEXT)
    assert isinstance(failed, Failed)
    assert failed.refused is refused
    if not refused:
        assert failed.reason == f"token exchange failed: temporarily_unavailable (HTTP {status}, {CONTEXT})"


def test_an_error_without_an_oauth_body_names_the_status() -> None:
    assert read_answer(502, b"<html>bad gateway</html>", context=CONTEXT) == Failed(
        f"token exchange failed: HTTP 502 ({CONTEXT})", False
    )
    assert read_answer(404, b"", context=CONTEXT) == Failed(f"token exchange refused: HTTP 404 ({CONTEXT})", True)


def test_a_careless_endpoint_quoting_the_subject_token_is_not_repeated() -> None:
    description = f"bad token {SUBJECT} and another eyJabc.eyJdef.ghi and {SUBJECT[:20]}\n\x1b[31m red"
    body = json.dumps({"error": "invalid_grant", "error_description": description}).encode()
    failed = read_answer(400, body, context=CONTEXT, hide=[SUBJECT])
    assert isinstance(failed, Failed)
    assert SUBJECT not in failed.reason
    assert "eyJabc" not in failed.reason
    assert "\x1b" not in failed.reason
    assert "\n" not in failed.reason
    assert failed.reason.count(MASK) == 2


def test_an_unreadable_error_code_is_not_repeated() -> None:
    body = json.dumps({"error": "x" * 65 + SUBJECT}).encode()
    failed = read_answer(400, body, context=CONTEXT, hide=[SUBJECT])
    assert isinstance(failed, Failed)
    assert failed.reason == f"token exchange refused: an unreadable error code ({CONTEXT})"


def test_describe_bounds_its_length() -> None:
    assert len(describe("word " * 100)) == 200


# --------------------------------------------------------------------------- the schedule


def test_a_long_lifetime_refreshes_refresh_before_s_ahead() -> None:
    held = lease(Granted("t", 3600), sent_at=1000.0, refresh_before_s=1200)
    assert held.refresh_at == 1000 + 3600 - 1200
    assert held.usable_until == 1000 + 3600 - EXPIRY_MARGIN_S


@pytest.mark.parametrize("lifetime", [2.0, 5.0, 60.0, 600.0, 2400.0])
def test_a_short_lifetime_refreshes_half_way_and_is_not_sent_in_its_last_tenth(lifetime: float) -> None:
    held = lease(Granted("t", lifetime), sent_at=0.0, refresh_before_s=1200)
    assert held.refresh_at == lifetime / 2
    assert held.usable_until == lifetime - min(EXPIRY_MARGIN_S, lifetime / 10)
    assert held.refresh_at < held.usable_until


def test_refresh_before_zero_refreshes_when_the_token_stops_being_usable() -> None:
    held = lease(Granted("t", 100), sent_at=0.0, refresh_before_s=0)
    assert held.refresh_at == held.usable_until == 90.0


def test_the_lease_repr_hides_the_token() -> None:
    assert "secret-token" not in repr(lease(Granted("secret-token", 10), sent_at=0, refresh_before_s=1))


# --------------------------------------------------------------------------- the lifecycle


def lifecycle(**options: float) -> TokenLifecycle:
    return TokenLifecycle(refresh_before_s=options.pop("refresh_before_s", 1200), rand=lambda: 0.0, **options)


def test_decisions_through_a_token_life() -> None:
    life = lifecycle()
    assert life.decide(0) is Decision.EXCHANGE
    assert life.problem(0) == "no access token yet"
    assert life.granted(Granted("a", 10), sent_at=0, now=0.1) is not None
    assert life.decide(1) is Decision.USE
    assert life.problem(1) is None
    assert life.status(1) == "access token valid for 8s"
    assert life.decide(5) is Decision.USE_AND_REFRESH
    assert life.decide(8.99) is Decision.USE_AND_REFRESH
    assert life.decide(9) is Decision.EXCHANGE
    assert life.problem(9) == "the access token expired"


def test_a_failed_refresh_keeps_the_token_and_retries_after_a_pause() -> None:
    life = lifecycle()
    life.granted(Granted("a", 100), sent_at=0, now=0)
    refused = Failed("token exchange refused: invalid_grant (identity provider idp_1)", True)
    assert life.failed(refused, now=50) == 0.25  # half the base, the jittered half at 0
    assert life.decide(50.1) is Decision.USE
    assert life.status(50.1) == f"access token valid for 40s; refreshing failed: {refused.reason}"
    assert life.problem(50.1) is None
    assert life.decide(50.25) is Decision.USE_AND_REFRESH
    assert life.failed(refused, now=51) == 0.5
    assert life.failed(refused, now=90.5) == 1.0
    assert life.decide(91) is Decision.FAIL  # expired, and the next attempt is not due yet
    assert life.problem(91) == refused.reason
    assert life.retry_in(91) == 0.5
    assert life.decide(91.5) is Decision.EXCHANGE


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    life = lifecycle(retry_base_s=1, retry_cap_s=8)
    delays = [life.failed(Failed("x"), now=0) for _ in range(7)]
    assert delays == [0.5, 1, 2, 4, 4, 4, 4]
    jittered = TokenLifecycle(refresh_before_s=1, retry_base_s=1, retry_cap_s=8, rand=lambda: 1.0)
    assert [jittered.failed(Failed("x"), now=0) for _ in range(5)] == [1, 2, 4, 8, 8]


def test_success_clears_the_failure_and_the_backoff() -> None:
    life = lifecycle()
    for _ in range(5):
        life.failed(Failed("x"), now=0)
    life.granted(Granted("a", 100), sent_at=10, now=10)
    assert life.failure is None
    assert life.failed(Failed("y"), now=60) == 0.25


def test_a_token_spent_before_it_arrived_is_a_failure_not_a_loop() -> None:
    life = lifecycle()
    assert life.granted(Granted("a", 1), sent_at=0, now=0.95) is None
    assert life.lease is None
    assert life.failure is not None
    assert "expired on arrival (expires_in 1s, answered after 0.9s)" in life.failure.reason
    assert life.decide(0.96) is Decision.FAIL


def test_a_401_exchanges_again_once_then_backs_off() -> None:
    life = lifecycle(rejection_pause_s=30)
    life.granted(Granted("a", 3600), sent_at=0, now=0)
    assert life.rejected("a", now=10) is Rejection.RENEW
    assert life.decide(10) is Decision.EXCHANGE
    assert life.rejected("a", now=10.1) is Rejection.REPLACED, "a second request with the same token counts once"
    life.granted(Granted("b", 3600), sent_at=10.2, now=10.3)
    assert life.lease is not None
    assert life.lease.after_rejection
    assert life.rejected("a", now=10.4) is Rejection.REPLACED, "a request still out with the old token"
    assert life.rejected("b", now=11) is Rejection.REFUSED_AGAIN, "the fresh token was refused too: no loop"
    assert life.decide(11) is Decision.USE
    assert life.rejected("b", now=40.1) is Rejection.RENEW, "after the pause, once more"
    life.granted(Granted("c", 3600), sent_at=41, now=41)
    assert life.rejected("c", now=42) is Rejection.REFUSED_AGAIN


def test_a_401_after_a_long_good_run_exchanges_again() -> None:
    life = lifecycle(rejection_pause_s=30)
    life.granted(Granted("a", 3600), sent_at=0, now=0)
    life.rejected("a", now=10)
    life.granted(Granted("b", 3600), sent_at=10, now=10)
    life.decide(2000)  # refreshed on schedule
    life.granted(Granted("c", 3600), sent_at=2000, now=2000)
    assert life.lease is not None
    assert not life.lease.after_rejection
    assert life.rejected("c", now=2001) is Rejection.RENEW


def test_a_401_for_a_token_already_replaced_is_ignored() -> None:
    life = lifecycle()
    life.granted(Granted("a", 100), sent_at=0, now=0)
    life.granted(Granted("b", 100), sent_at=50, now=50)
    assert life.rejected("a", now=51) is Rejection.REPLACED
    assert life.decide(51) is Decision.USE


def test_a_401_overrides_a_failure_backoff() -> None:
    life = lifecycle()
    life.granted(Granted("a", 100), sent_at=0, now=0)
    life.failed(Failed("x"), now=60)
    assert life.rejected("a", now=60.01) is Rejection.RENEW
    assert life.decide(60.01) is Decision.EXCHANGE


def test_next_due_is_when_an_exchange_comes_due() -> None:
    life = lifecycle(retry_cap_s=100)
    assert life.next_due(5) == 5  # no token: now
    life.granted(Granted("a", 100), sent_at=0, now=0)
    assert life.next_due(1) == 50  # the refresh
    life.failed(Failed("x"), now=60)  # a failed refresh: after its pause
    assert life.next_due(60) == 60.25
    for _ in range(12):
        life.failed(Failed("x"), now=60)  # the pause reaches 50 s
    assert life.next_due(60) == 90  # the pause outlasts the token: when it stops being usable
    assert life.next_due(91) == 110  # not usable: the pause's end
    assert life.next_due(120) == 120
