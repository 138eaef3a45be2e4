"""gateway.observe.logs with plain calls: the redactor, log records carrying request and trace ids, the secrets a
configuration names."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from gateway.config import routing as routing_config
from gateway.observe import logs
from gateway.observe.otel import current_trace_ids
from tests.support.client_trace import CLIENT_SPAN, CLIENT_TRACE, client_trace


def test_redactor_masks_secrets() -> None:
    redactor = logs.Redactor()
    redactor.add("sk-live-0123456789")
    redactor.add("Bearer abcdefghijkl")
    redactor.add("abc")  # too short to mask verbatim
    cases = {
        "key sk-live-0123456789 leaked": "key [REDACTED] leaked",
        "token abcdefghijkl alone": "token [REDACTED] alone",
        "Authorization: Bearer xyz.uvw-123": "Authorization: [REDACTED]",
        "{'authorization': 'Basic dXNlcjpwYXNz', 'x': 1}": "{'authorization': '[REDACTED]', 'x': 1}",
        "sent bearer eyJhbGciOi.x.y to it": "sent bearer [REDACTED] to it",
        "proxy http://user:hunter2@proxy:3128 down": "proxy http://[REDACTED]@proxy:3128 down",
        "GET /x?access_token=zzz&page=2": "GET /x?access_token=[REDACTED]&page=2",
        "https://h/p?key=k1&api_key=k2#token=k3": "https://h/p?key=[REDACTED]&api_key=[REDACTED]#token=[REDACTED]",
        "X-Api-Key: 12345abc": "X-Api-Key: [REDACTED]",
        "abc is fine": "abc is fine",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected


def test_obtained_secrets_are_masked_and_only_the_newest_are_kept() -> None:
    """An opaque access token the gateway obtained matches no pattern: learnt, it is masked verbatim. The
    memory of obtained secrets is bounded (tokens are refreshed); configured secrets are never forgotten."""
    redactor = logs.Redactor()
    redactor.add("configured-secret-0042")
    tokens = [f"opaque.{index:04d}.Zx9Qw" for index in range(logs.OBTAINED_KEPT + 1)]
    assert redactor.redact(f"server said {tokens[0]} is expired") == f"server said {tokens[0]} is expired"
    redactor.learn(tokens[0])
    assert redactor.redact(f"server said {tokens[0]} is expired") == "server said [REDACTED] is expired"
    redactor.learn("Bearer opaque-credential-77")
    assert redactor.redact("got opaque-credential-77.") == "got [REDACTED]."
    redactor.learn("short")  # too short to mask verbatim, as for configured ones
    assert redactor.redact("a short line") == "a short line"
    for token in tokens[1:]:
        redactor.learn(token)
    text = " ".join(tokens) + " configured-secret-0042"
    masked = redactor.redact(text).split()
    assert masked[0] == tokens[0]  # the oldest obtained one was let go
    assert masked[1:] == ["[REDACTED]"] * (len(tokens) - 1) + ["[REDACTED]"]
    redactor.learn(tokens[0])  # obtained again: masked again
    assert tokens[0] not in redactor.redact(tokens[0])


def test_an_obtained_secret_learnt_again_is_kept_as_the_newest() -> None:
    """Workload identity tells the redactor of its subject token on every exchange. An unchanged token,
    learnt again while still held, renews its place: it is let go only after `OBTAINED_KEPT` newer ones."""
    redactor = logs.Redactor()
    subject = "opaque-subject-token-0001"
    others = [f"opaque.{index:04d}.access" for index in range(logs.OBTAINED_KEPT + 16)]
    half = len(others) // 2
    redactor.learn(subject)
    for token in others[:half]:
        redactor.learn(token)
    redactor.learn(subject)  # the next exchange, with the same subject token
    for token in others[half:]:  # more than OBTAINED_KEPT since it was first learnt, fewer since it was renewed
        redactor.learn(token)
    assert redactor.redact(f"exchange with {subject}") == "exchange with [REDACTED]"
    assert others[0] in redactor.redact(others[0])  # the memory did not grow: the oldest others were let go
    assert others[-1] not in redactor.redact(others[-1])


def test_log_records_carry_ids_and_are_redacted() -> None:
    redactor = logs.Redactor()
    redactor.add("s3cret-value-42")
    stream = io.StringIO()
    logger = logging.getLogger("gateway.test_logs")
    handler = logs.setup(redactor=redactor, fmt="json", level="INFO", trace_ids=current_trace_ids, stream=stream)
    try:
        token = logs.REQUEST_ID.set("req_123")
        try:
            with client_trace():
                logger.info("value %s sent", "s3cret-value-42")
        finally:
            logs.REQUEST_ID.reset(token)
        try:
            raise ValueError("boom s3cret-value-42")
        except ValueError:
            logger.exception("failed with Authorization: Bearer abc.def")
        logs.setup(redactor=redactor, fmt="text", level="INFO", stream=stream)
        logger.info("plain s3cret-value-42")
    finally:
        logging.getLogger().removeHandler(logging.getLogger().handlers[-1])
    assert handler not in logging.getLogger().handlers
    first, second, third = stream.getvalue().splitlines()[:2] + stream.getvalue().splitlines()[-1:]
    record = json.loads(first)
    assert record["message"] == "value [REDACTED] sent"
    assert record["request_id"] == "req_123"
    assert record["trace_id"] == format(CLIENT_TRACE, "032x")
    assert record["span_id"] == format(CLIENT_SPAN, "016x")
    failure = json.loads(second)
    assert failure["message"] == "failed with Authorization: [REDACTED]"
    assert "boom [REDACTED]" in failure["exception"]
    assert "trace_id" not in failure
    assert re.search(r" INFO gateway\.test_logs: plain \[REDACTED\]$", third)


def test_config_secrets_are_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "key-from-env-1234")
    (tmp_path / "token").write_text("token-from-file-5678\n")
    config = routing_config.parse(
        b"control_plane: {url: 'https://cp.example', tunnel_id: t, api_key: env:MY_KEY}\n"
        b"servers:\n  a: {http: {url: 'http://h/mcp', headers: {X-Token: 'file:token', X-Env: prod}}}\n"
        b"channels: {main: [a]}\n",
        "r.yaml",
    )
    assert set(logs.config_secrets(config, tmp_path)) == {"key-from-env-1234", "token-from-file-5678"}
