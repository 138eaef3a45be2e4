"""Server-Sent Events framing, sans-IO: bytes in, events out (and events to bytes).
Imports neither asyncio nor aiohttp; the caller feeds whatever chunks the network delivers.

Owns the `text/event-stream` line grammar of the WHATWG HTML standard
(§9.2.6 "Interpreting an event stream") for both directions.

Rules this module keeps:
- lines end in CRLF, LF or CR, and a CRLF may be split across two chunks;
- one UTF-8 byte order mark at the very start of the stream is dropped;
- a line starting with `:` is a comment; `field: value` loses one leading space;
- `data` lines accumulate (joined by LF), an empty line dispatches the event,
  and an event whose data buffer is empty is not dispatched;
- `id` persists across events (a value containing NUL is ignored), `retry`
  counts only when it is all ASCII digits, unknown fields are ignored;
- an incomplete event at the end of the stream is discarded (see `pending`).
Data is kept as bytes: the payloads here are JSON documents, decoded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.protocol.errors import GatewayError

_BOM: Final = b"\xef\xbb\xbf"
_CR: Final = 0x0D
_LF: Final = 0x0A


class SseError(GatewayError, ValueError):
    """The stream cannot be parsed within the configured bounds."""


class SseEventTooLarge(SseError):
    """One event (or one unterminated line) grew past `max_event_bytes`."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. `id` is the stream's last event id at dispatch time."""

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SseParser:
    """Incremental `text/event-stream` parser: `feed()` chunks, get complete events."""

    def __init__(self, *, max_event_bytes: int | None = None) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._scanned = 0
        """Bytes at the start of `_buf` known to hold no line ending (avoids rescans)."""
        self._skip_lf = False
        """The last chunk ended in CR: a LF opening the next one belongs to it."""
        self._bom_pending = True
        self._data = bytearray()
        self._has_data = False
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def pending(self) -> bool:
        """True when bytes of an undispatched event are buffered (a truncated stream)."""
        return bool(self._buf) or self._has_data

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume the next bytes of the stream; return the events they completed."""
        if not chunk:
            return []
        buf = self._buf
        buf += chunk
        if self._bom_pending:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._bom_pending = False
        events: list[SseEvent] = []
        pos = 0
        if self._skip_lf and buf:
            if buf[0] == _LF:
                pos = 1
            self._skip_lf = False
        search = max(pos, self._scanned)
        while True:
            end = _line_end(buf, search)
            if end < 0:
                break
            line = bytes(buf[pos:end])
            if buf[end] == _CR:
                if end + 1 < len(buf):
                    pos = end + 2 if buf[end + 1] == _LF else end + 1
                else:
                    pos = end + 1
                    self._skip_lf = True
            else:
                pos = end + 1
            search = pos
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buf[:pos]
        self._scanned = len(buf)
        if self._max is not None and len(buf) + len(self._data) > self._max:
            raise SseEventTooLarge(f"an event exceeds {self._max} bytes")
        return events

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ':' comment
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._has_data:
                self._data.append(_LF)
            self._data += value
            self._has_data = True
            if self._max is not None and len(self._data) > self._max:
                raise SseEventTooLarge(f"an event exceeds {self._max} bytes")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._has_data:
            self._event = ""
            return None
        event = SseEvent(bytes(self._data), self._event or "message", self._last_id, self._retry)
        self._data = bytearray()
        self._has_data = False
        self._event = ""
        return event


def _line_end(buf: bytearray, start: int) -> int:
    """Index of the first CR or LF at or after `start`, or -1."""
    cr = buf.find(b"\r", start)
    lf = buf.find(b"\n", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


def encode_event(data: bytes, event: str | None = "message") -> bytes:
    """One event as stream bytes: optional `event:` line, one `data:` line per data line, blank line."""
    if event is not None and ("\r" in event or "\n" in event):
        raise ValueError("an SSE event name cannot contain a line break")
    parts: list[bytes] = []
    if event is not None:
        parts.append(b"event: " + event.encode() + b"\n")
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts.extend(b"data: " + line + b"\n" for line in lines)
    parts.append(b"\n")
    return b"".join(parts)
