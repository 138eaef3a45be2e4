"""The gateway's own opaque pagination cursors over a merged list, bound to the list they page.
Sans-IO: it never awaits, and imports neither asyncio nor aiohttp.

Owns cursor encoding (a fingerprint of the list plus an offset) and paging; a cursor from another
list, or a forged one, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

from gateway.protocol.errors import GatewayError

T = TypeVar("T")


class InvalidCursor(GatewayError, ValueError):
    """A cursor the gateway did not issue, or one for a list that has changed since."""


def digest(items: Iterable[bytes]) -> str:
    """A short fingerprint of a merged list (cursors are only valid for the list they were made for)."""
    h = hashlib.blake2b(digest_size=8)
    for item in items:
        h.update(len(item).to_bytes(4, "big"))
        h.update(item)
    return h.hexdigest()


def encode_cursor(fingerprint: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"gw1:{fingerprint}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("not a cursor this gateway issued") from None
    version, _, rest = text.partition(":")
    fingerprint, _, offset = rest.partition(":")
    if version != "gw1" or not fingerprint or not offset.isdigit():
        raise InvalidCursor("not a cursor this gateway issued")
    return fingerprint, int(offset)


def page(items: Sequence[T], fingerprint: str, cursor: str | None, size: int | None) -> tuple[Sequence[T], str | None]:
    """One page of a merged list: from the cursor's offset, `size` items, and the next cursor."""
    start = 0
    if cursor is not None:
        found, start = decode_cursor(cursor)
        if found != fingerprint or start > len(items):
            raise InvalidCursor("the list changed since this cursor was issued; list again from the start")
    if size is None:
        return items[start:], None
    end = start + size
    return items[start:end], encode_cursor(fingerprint, end) if end < len(items) else None
