"""The doctor's report: one typed result per check, the summary, the exit status, and both renderings.
Runs no check; the `--json` shape (`Report`, version 1) is documented in the README ("gateway doctor").

Results come out in a fixed order: by kind (`KINDS`), then in the order the checks produced them
(which follows routing.yaml). A failing result carries one line of cause and one of mitigation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

import msgspec
from msgspec import Struct

from gateway import __version__

REPORT_VERSION: Final = 1
"""The `--json` shape's version; a field is only ever added, and then the version goes up."""
KINDS: Final = ("config", "secret", "dns", "connect", "proxy", "tls", "credentials", "tunnel", "server")
"""Every kind of check, in the order the report lists them."""
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_FILE: Final = 2

Status = Literal["ok", "fail", "skip"]


class CheckResult(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One check of one target."""

    name: str
    """The kind of check: one of `KINDS`."""
    target: str
    """What was checked: a host, `control_plane`, `servers.NAME`, a routing.yaml key."""
    status: Status
    detail: str = ""
    """What was found (ok), or why the check did not run (skip)."""
    cause: str | None = None
    """One line: what is wrong (fail only)."""
    mitigation: str | None = None
    """One line: what to do about it (fail only)."""
    duration_ms: float = 0.0


class Summary(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ok: int
    fail: int
    skip: int
    exit_code: int


class Report(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `gateway doctor --json` prints."""

    version: int = REPORT_VERSION
    gateway_version: str = __version__
    routes: str
    """The routing file checked, as given on the command line."""
    checks: list[CheckResult]
    summary: Summary


def ok(name: str, target: str, detail: str = "") -> CheckResult:
    return CheckResult(name=name, target=target, status="ok", detail=detail)


def skip(name: str, target: str, why: str) -> CheckResult:
    return CheckResult(name=name, target=target, status="skip", detail=why)


def fail(name: str, target: str, cause: str, mitigation: str, detail: str = "") -> CheckResult:
    return CheckResult(name=name, target=target, status="fail", detail=detail, cause=cause, mitigation=mitigation)


@dataclass(slots=True)
class Clock:
    """Measures one check; `stamp` puts the time it took on its result."""

    started: float

    def stamp(self, result: CheckResult) -> CheckResult:
        ms = round((time.perf_counter() - self.started) * 1000, 1)
        return msgspec.structs.replace(result, duration_ms=ms)


@contextmanager
def timed() -> Iterator[Clock]:
    yield Clock(time.perf_counter())


def build(routes: str, results: list[CheckResult], *, bad_file: bool = False) -> Report:
    """The report: results sorted by kind (stable within a kind), counted, with the exit status."""
    ordered = sorted(results, key=lambda r: KINDS.index(r.name))
    counts = {status: sum(1 for r in ordered if r.status == status) for status in ("ok", "fail", "skip")}
    code = EXIT_BAD_FILE if bad_file else EXIT_FAILED if counts["fail"] else EXIT_OK
    summary = Summary(ok=counts["ok"], fail=counts["fail"], skip=counts["skip"], exit_code=code)
    return Report(routes=routes, checks=ordered, summary=summary)


def encode_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def decode_json(data: bytes) -> Report:
    """A report as printed (tests, and scripts written in Python)."""
    return msgspec.json.decode(data, type=Report)


_SHOWN: Final = {"ok": "ok", "fail": "FAIL", "skip": "skip"}


def render_text(report: Report) -> str:
    """One line per check; a failing one adds its cause and its mitigation, one line each."""
    width = max((len(r.target) for r in report.checks if r.name != "config"), default=0)
    lines: list[str] = []
    for result in report.checks:
        took = f"  ({result.duration_ms:.0f} ms)" if result.duration_ms >= 1 else ""
        detail = f"  {result.detail}" if result.detail else ""
        lines.append(f"{_SHOWN[result.status]:<5} {result.name:<11} {result.target:<{width}}{detail}{took}".rstrip())
        if result.status == "fail":
            lines.append(f"      cause: {result.cause or ''}")
            lines.append(f"      fix:   {result.mitigation or ''}")
    s = report.summary
    verdict = "all good" if s.exit_code == EXIT_OK else "problems found" if s.exit_code == EXIT_FAILED else "bad file"
    lines.append(f"doctor: {s.ok} ok, {s.fail} failed, {s.skip} skipped: {verdict}")
    return "\n".join(lines) + "\n"


def redacted(report: Report, redact: Callable[[str], str], known: Callable[[str], str]) -> Report:
    """The report with every text passed through the log redactor (no secret reaches stdout); the
    causes of `config` and `secret` checks, which the gateway writes from key paths and never from a
    value, through `known` (registered values only), so `…api_key: expected …` stays readable."""

    def clean(result: CheckResult) -> CheckResult:
        own = known if result.name in ("config", "secret") else redact
        return msgspec.structs.replace(
            result,
            target=redact(result.target),
            detail=redact(result.detail),
            cause=None if result.cause is None else own(result.cause),
            mitigation=None if result.mitigation is None else redact(result.mitigation),
        )

    return msgspec.structs.replace(report, checks=[clean(r) for r in report.checks])
