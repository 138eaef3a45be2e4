"""gateway/doctor/report.py: results ordered by kind, counted into the exit status, rendered as text
(one cause and one mitigation line per failure) and as the documented JSON, redacted."""

from __future__ import annotations

import json

import msgspec
import pytest

from gateway.doctor.report import (
    KINDS,
    CheckResult,
    Report,
    build,
    decode_json,
    encode_json,
    fail,
    ok,
    redacted,
    render_text,
    skip,
)
from gateway.observe.logs import Redactor

RESULTS = [
    ok("server", "servers.a", "modern era (2026-07-28), 2 tools"),
    fail("dns", "cp.example", "DNS lookup failed for cp.example", "check the host name in `control_plane.url`"),
    skip("tunnel", "control_plane", "credentials refused"),
    ok("config", "routing.yaml", "1 servers, 1 channels"),
    ok("server", "servers.b", "legacy era (2025-11-25), 1 tools"),
]


def test_results_come_in_kind_order_stable_within_a_kind() -> None:
    report = build("routing.yaml", RESULTS)
    assert [(c.name, c.target) for c in report.checks] == [
        ("config", "routing.yaml"),
        ("dns", "cp.example"),
        ("tunnel", "control_plane"),
        ("server", "servers.a"),
        ("server", "servers.b"),
    ]
    assert [c.name for c in report.checks] == sorted((c.name for c in report.checks), key=KINDS.index)


@pytest.mark.parametrize(
    ("results", "bad_file", "code"),
    [
        ([RESULTS[0], RESULTS[2]], False, 0),
        (RESULTS, False, 1),
        ([fail("config", "routing.yaml", "routing.yaml: servers: expected an object", "correct `servers`")], True, 2),
    ],
)
def test_exit_status(results: list[CheckResult], bad_file: bool, code: int) -> None:
    report = build("routing.yaml", results, bad_file=bad_file)
    assert report.summary.exit_code == code
    counts = (report.summary.ok, report.summary.fail, report.summary.skip)
    assert counts == tuple(sum(1 for r in results if r.status == s) for s in ("ok", "fail", "skip"))


def test_text_gives_a_failure_one_cause_line_and_one_fix_line() -> None:
    lines = render_text(build("routing.yaml", RESULTS)).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  dns"))
    assert lines[at + 1] == "      cause: DNS lookup failed for cp.example"
    assert lines[at + 2] == "      fix:   check the host name in `control_plane.url`"
    assert not lines[at + 3].startswith("      ")
    assert lines[-1] == "doctor: 3 ok, 1 failed, 1 skipped: problems found"
    assert sum(1 for line in lines if line.startswith("      ")) == 2


def test_json_round_trips_in_the_structs_key_order() -> None:
    report = build("routing.yaml", RESULTS)
    data = encode_json(report)
    assert decode_json(data) == report
    raw = json.loads(data)
    assert list(raw) == ["version", "gateway_version", "routes", "checks", "summary"]
    assert list(raw["checks"][0]) == ["name", "target", "status", "detail", "cause", "mitigation", "duration_ms"]
    assert raw["version"] == 1


def test_json_with_an_unknown_key_or_status_is_refused() -> None:
    raw = json.loads(encode_json(build("routing.yaml", RESULTS)))
    raw["checks"][0]["extra"] = 1
    with pytest.raises(msgspec.ValidationError):
        decode_json(json.dumps(raw).encode())
    raw["checks"][0].pop("extra")
    raw["checks"][0]["status"] = "maybe"
    with pytest.raises(msgspec.ValidationError):
        decode_json(json.dumps(raw).encode())


def test_redaction_masks_secrets_and_keeps_key_paths_readable() -> None:
    redactor = Redactor()
    redactor.add("s3cret-value-1234")
    report = build(
        "routing.yaml",
        [
            fail("secret", "control_plane.api_key", "f: control_plane.api_key: expected x", "set TUNNEL_API_KEY"),
            ok("server", "servers.a", "stderr said s3cret-value-1234 and Authorization: Bearer abcdef"),
        ],
    )
    clean = redacted(report, redactor.redact, redactor.known)
    assert clean.checks[0].cause == "f: control_plane.api_key: expected x"
    assert "s3cret-value-1234" not in clean.checks[1].detail
    assert "abcdef" not in clean.checks[1].detail
    assert isinstance(clean, Report)
