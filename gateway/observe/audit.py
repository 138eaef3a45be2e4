"""The audit log (`audit:` in routing.yaml): one line per call, written by an owned thread to a file rotated by
size (`file` -> `file.1` … `file.N`) with rotated files past `retention_days` deleted (at start and on rotation).
Never blocks a call: records wait in a bounded queue, and when it is full they are dropped and counted.

Writes what a `CallRecord` carries (names, outcome, sizes, times) and nothing else: never arguments,
results or header values; the client's session id is written as a hash of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from gateway.config.admin import AuditSpec
from gateway.observe.records import CallRecord

log = logging.getLogger(__name__)

DAY_S: Final = 86400.0
POLL_S: Final = 0.2
"""How often the writer thread looks at the stop flag while the queue is empty."""
WARN_EVERY: Final = 1000
"""Dropped records are reported on the first drop and then once every this many."""


def hashed(value: str | None) -> str | None:
    """A value the log may correlate on but must not repeat (a session id): `sha256:` and 16 hex digits."""
    return None if value is None else "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def audit_line(call: CallRecord, fmt: str) -> bytes:
    """One record as one line: a JSON object, or `key=value` pairs (`text`); None fields left out."""
    stamp = datetime.datetime.fromtimestamp(call.time, datetime.UTC).isoformat(timespec="milliseconds")
    fields: dict[str, object] = {"ts": stamp.replace("+00:00", "Z")}
    for name in call.__struct_fields__:
        value = getattr(call, name)
        if name == "session":
            value = hashed(value)
        elif name == "duration_s":
            value = round(value, 6)
        if value is not None:
            fields[name] = value
    if fmt == "json":
        return msgspec.json.encode(fields) + b"\n"
    text = " ".join(f"{k}={msgspec.json.encode(v).decode() if isinstance(v, str) else v}" for k, v in fields.items())
    return text.encode() + b"\n"


class RotatingFile:
    """An append-only file rotated by size; deletes rotated files older than the retention (its own clock).
    Blocking I/O: used by the audit writer thread only."""

    def __init__(
        self, path: Path, *, max_bytes: int, backups: int, retention_days: float | None, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self._max = max_bytes
        self._backups = backups
        self._retention_s = None if retention_days is None else retention_days * DAY_S
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._size = self._file.tell()
        self.prune()

    def rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self._max:
            self.rotate()
        self._file.write(line)
        self._size += len(line)

    def flush(self) -> None:
        self._file.flush()

    def rotate(self) -> None:
        """`file.N` is deleted, `file.i` becomes `file.(i+1)`, the file becomes `file.1` (or is emptied
        with no backups), then old rotated files are pruned."""
        self._file.close()
        if self._backups == 0:
            self._file = self.path.open("wb")
        else:
            with contextlib.suppress(FileNotFoundError):
                self.rotated(self._backups).unlink()
            for index in range(self._backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.rotated(index), self.rotated(index + 1))
            os.replace(self.path, self.rotated(1))
            self._file = self.path.open("ab")
        self._size = 0
        self.prune()

    def prune(self) -> None:
        """Delete rotated files last written before the retention period (and any past `backups`)."""
        cutoff = None if self._retention_s is None else self._clock() - self._retention_s
        for candidate in self.path.parent.glob(f"{self.path.name}.*"):
            suffix = candidate.name[len(self.path.name) + 1 :]
            if not suffix.isdigit():
                continue
            with contextlib.suppress(FileNotFoundError):
                if int(suffix) > self._backups or (cutoff is not None and candidate.stat().st_mtime < cutoff):
                    candidate.unlink()

    def close(self) -> None:
        self._file.close()


class AuditLog:
    """The `CallSink` writing the audit file; `start()` opens it and starts the writer thread, `close()` stops it
    after writing what is queued."""

    def __init__(self, spec: AuditSpec, base: Path, *, clock: Callable[[], float] = time.time) -> None:
        path = Path(spec.file)
        self.path = path if path.is_absolute() else base / path
        self._spec = spec
        self._clock = clock
        self._queue: queue.Queue[CallRecord] = queue.Queue(maxsize=spec.queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        """Records not written because the queue was full."""
        self.written = 0

    def start(self) -> None:
        """Open the file (raises OSError when it cannot be) and start the writer."""
        target = RotatingFile(
            self.path,
            max_bytes=self._spec.max_bytes,
            backups=self._spec.backups,
            retention_days=self._spec.retention_days,
            clock=self._clock,
        )
        # A daemon: a gateway that dies without its cleanup must not hang on it (close() joins it).
        self._thread = threading.Thread(target=self._drain, args=(target,), name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, call: CallRecord) -> None:
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1
            if self.dropped % WARN_EVERY == 1:
                log.warning("audit log: the writer is behind; %d records dropped so far", self.dropped)

    def _drain(self, target: RotatingFile) -> None:
        fmt = self._spec.format
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                try:
                    batch = [self._queue.get(timeout=POLL_S)]
                except queue.Empty:
                    continue
                with contextlib.suppress(queue.Empty):
                    while len(batch) < self._spec.queue:  # what else is queued, then one flush
                        batch.append(self._queue.get_nowait())
                try:
                    for call in batch:
                        target.write(audit_line(call, fmt))
                        self.written += 1
                    target.flush()
                except OSError as exc:
                    log.error("audit log: writing %s failed (%s); records are being lost", self.path, exc.strerror)
        finally:
            target.close()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
