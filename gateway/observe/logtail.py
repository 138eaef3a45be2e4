"""The console's live log tail: a logging handler that keeps the newest lines in a bounded ring.
Every line passes the same `Redactor` as the stderr log before it is kept; holds no payloads
(log lines never carry arguments or results) and does no I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Final

import msgspec

from gateway.observe.logs import ContextFilter, Redactor

LINES: Final = 500
"""Lines kept; older ones are dropped."""
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One log line as the console streams it (already redacted)."""

    seq: int
    time: float
    level: str
    logger: str
    message: str
    request_id: str = ""


class LogRing(logging.Handler):
    """Keeps the newest `LINES` records, redacted, numbered so a reader can ask for what is new.
    Thread-safe: records may come from any thread (exporters log from theirs)."""

    def __init__(self, redactor: Redactor, *, capacity: int = LINES) -> None:
        super().__init__(logging.DEBUG)
        self._redactor = redactor
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._seq = 0
        self._guard = threading.Lock()
        self.addFilter(ContextFilter(redactor))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            message = self._redactor.redact(message)
            request_id = str(getattr(record, "request_id", "") or "")
            with self._guard:
                self._seq += 1
                line = LogLine(
                    seq=self._seq,
                    time=record.created or time.time(),
                    level=record.levelname,
                    logger=record.name,
                    message=message,
                    request_id=request_id,
                )
                self._lines.append(line)
        except Exception:
            self.handleError(record)

    def since(self, seq: int, level: str = "DEBUG") -> list[LogLine]:
        """Lines numbered after `seq` at `level` or above, oldest first."""
        floor = logging.getLevelName(level) if level in LEVELS else logging.DEBUG
        with self._guard:
            lines = [line for line in self._lines if line.seq > seq]
        return [line for line in lines if logging.getLevelName(line.level) >= floor]

    @property
    def last_seq(self) -> int:
        with self._guard:
            return self._seq

    def install(self, logger: logging.Logger | None = None) -> None:
        """Attach to the root logger (or `logger`)."""
        (logger or logging.getLogger()).addHandler(self)

    def uninstall(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).removeHandler(self)
