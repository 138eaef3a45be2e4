"""gateway.observe.audit with a real file in a temporary folder: one line per record with no session id in the
clear, size-based rotation (`file` -> `file.1` … `file.N`), retention of rotated files by their age (an injected
clock), and a full queue that drops and counts instead of blocking."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gateway.config.admin import AuditSpec
from gateway.observe.audit import AuditLog, RotatingFile, audit_line
from gateway.observe.records import CallRecord

DAY = 86400.0


def _call(**fields: object) -> CallRecord:
    base: dict[str, object] = {
        "time": 1_700_000_000.5,
        "tunnel": "tunnel_local",
        "channel": "main",
        "method": "tools/call",
        "outcome": "ok",
        "status": 200,
        "duration_s": 0.0123,
        "name": "echo",
        "session": "session-token-in-the-clear",
        "bytes_in": 80,
        "bytes_out": 120,
    }
    return CallRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_a_line_has_the_record_and_no_session_in_the_clear() -> None:
    line = audit_line(_call(), "json")
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = json.loads(line)
    assert record["ts"] == "2023-11-14T22:13:20.500Z"
    assert (record["channel"], record["method"], record["name"], record["outcome"]) == (
        "main",
        "tools/call",
        "echo",
        "ok",
    )
    assert (record["bytes_in"], record["bytes_out"], record["status"]) == (80, 120, 200)
    assert record["session"].startswith("sha256:")
    assert b"session-token-in-the-clear" not in line
    assert "server" not in record  # None fields are left out
    text = audit_line(_call(name="a b"), "text").decode()
    assert 'name="a b"' in text
    assert 'outcome="ok"' in text
    assert "bytes_in=80" in text


def test_rotation_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    target = RotatingFile(path, max_bytes=100, backups=2, retention_days=None, clock=lambda: 0.0)
    for i in range(10):
        target.write(f"{i:02d}".encode() * 20 + b"\n")  # 41 bytes: two lines a file
    target.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    assert path.read_bytes().startswith(b"08")
    assert path.read_bytes().count(b"\n") == 2
    assert (tmp_path / "audit.log.1").read_bytes().startswith(b"06")
    assert (tmp_path / "audit.log.2").read_bytes().startswith(b"04")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())


def test_no_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    target = RotatingFile(path, max_bytes=50, backups=0, retention_days=None, clock=lambda: 0.0)
    for i in range(5):
        target.write(f"{i}".encode() * 30 + b"\n")
    target.close()
    assert [p.name for p in tmp_path.iterdir()] == ["audit.log"]
    assert path.read_bytes() == b"4" * 30 + b"\n"


def test_retention_deletes_old_rotated_files_at_start_and_on_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    now = time.time()  # the files written here get the real clock's mtime
    for index, age_days in ((1, 0.5), (2, 3.0), (3, 10.0)):
        rotated = tmp_path / f"audit.log.{index}"
        rotated.write_text("old\n")
        os.utime(rotated, (now - age_days * DAY, now - age_days * DAY))
    (tmp_path / "audit.log.notes").write_text("not ours")
    clock = [now]
    target = RotatingFile(path, max_bytes=10, backups=5, retention_days=2, clock=lambda: clock[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.notes"]
    clock[0] = now + 1.9 * DAY  # audit.log.1 (half a day old then) is now 2.4 days old
    target.write(b"0123456789\n")
    target.write(b"x\n")  # rotates: the fresh file.1 stays, the aged one (now file.2) goes
    target.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.notes"]
    assert (tmp_path / "audit.log.1").read_bytes() == b"0123456789\n"


async def test_the_writer_thread_writes_every_record_and_closes(tmp_path: Path) -> None:
    audit = AuditLog(AuditSpec(file="logs/audit.jsonl"), tmp_path)
    audit.start()
    for i in range(50):
        audit.record(_call(name=f"tool{i}"))
    await audit.close()
    lines = (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == [f"tool{i}" for i in range(50)]
    assert (audit.written, audit.dropped) == (50, 0)


async def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    audit = AuditLog(AuditSpec(file="audit.jsonl", queue=2), tmp_path)
    for i in range(5):  # the writer is not started: nothing drains the queue
        audit.record(_call(name=f"tool{i}"))
    assert audit.dropped == 3
    audit.start()
    await audit.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["tool0", "tool1"]
