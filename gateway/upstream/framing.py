"""Newline-delimited JSON-RPC framing for stdio servers, and the id/token remapping table.
Sans-IO: no asyncio; bytes in, bounded lines out.

Owns turning a byte stream into whole lines (bounded in size) and the
bookkeeping that lets many concurrent requests share one pipe: gateway-issued
ids and progress tokens mapped to the calls that own them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")

HEAD_BYTES: Final = 128
"""How much of a skipped line is kept: enough for the members that precede a response's result."""
_RESPONSE_HEAD: Final = re.compile(
    rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*([0-9]{1,18})\s*,\s*'
    rb'(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"(?:result|error)"'
)


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line longer than the limit was skipped: its length as far as it was seen, and its first bytes."""

    length: int
    head: bytes = b""

    @property
    def response_id(self) -> int | None:
        """The integer id of the JSON-RPC response this line was, when its first members show it
        (`{"jsonrpc":"2.0","id":7,"result":…`, as servers write them); None when they do not."""
        match = _RESPONSE_HEAD.match(self.head)
        return int(match[1]) if match else None


class LineDecoder:
    """Split a byte stream at `\\n` into lines of at most `limit` bytes.

    Lines are yielded without the terminator (a trailing `\\r` is dropped too);
    blank lines are skipped. A line over the limit is discarded up to its end
    and reported once as `Oversized` (with its first bytes, which may name the
    request it answers), so one runaway message cannot exhaust memory or
    desynchronize the stream.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._skipping = 0
        self._head = b""

    def feed(self, chunk: bytes) -> Iterator[bytes | Oversized]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._take(chunk[start:])
                return
            piece = chunk[start:end]
            start = end + 1
            if self._skipping:
                yield Oversized(self._skipping + len(piece), (self._head + piece[:HEAD_BYTES])[:HEAD_BYTES])
                self._skipping, self._head = 0, b""
                continue
            if len(self._buffer) + len(piece) > self._limit:
                yield Oversized(len(self._buffer) + len(piece), self._start_of(piece))
                self._buffer.clear()
                continue
            if self._buffer:
                self._buffer += piece
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = piece
            line = line.rstrip(b"\r")
            if line.strip():
                yield line

    def _take(self, rest: bytes) -> None:
        if self._skipping:
            self._skipping += len(rest)
            if len(self._head) < HEAD_BYTES:  # however the line was split, keep the same first bytes
                self._head = (self._head + rest[:HEAD_BYTES])[:HEAD_BYTES]
        elif len(self._buffer) + len(rest) > self._limit:
            self._skipping = len(self._buffer) + len(rest)
            self._head = self._start_of(rest)
            self._buffer.clear()
        else:
            self._buffer += rest

    def _start_of(self, piece: bytes) -> bytes:
        """The first HEAD_BYTES of the buffered line continued by `piece`."""
        return (bytes(self._buffer[:HEAD_BYTES]) + piece[:HEAD_BYTES])[:HEAD_BYTES]


class IdTable(Generic[T]):
    """Gateway-issued JSON-RPC ids (and progress tokens) mapped to their owners.

    Ids are integers that are never reused for the life of the table, so a late
    reply for a retired id can never reach a newer call.
    """

    def __init__(self) -> None:
        self._next = 0
        self._owners: dict[int, T] = {}
        self._tokens: dict[str, tuple[T, bytes]] = {}

    def issue(self, owner: T) -> int:
        self._next += 1
        self._owners[self._next] = owner
        return self._next

    def issue_token(self, owner: T, original: bytes) -> str:
        """A fresh progress token standing for the client's `original` (raw JSON)."""
        self._next += 1
        token = f"gw-{self._next}"
        self._tokens[token] = (owner, original)
        return token

    def owner(self, id: int) -> T | None:
        return self._owners.get(id)

    def token_owner(self, token: str) -> tuple[T, bytes] | None:
        return self._tokens.get(token)

    def retire(self, id: int, token: str | None = None) -> None:
        self._owners.pop(id, None)
        if token is not None:
            self._tokens.pop(token, None)

    def owners(self) -> list[T]:
        return list(self._owners.values())

    def clear(self) -> list[T]:
        owners = list(self._owners.values())
        self._owners.clear()
        self._tokens.clear()
        return owners

    def __len__(self) -> int:
        return len(self._owners)
