"""gateway.channels.cursors with plain calls: pages walk a merged list, and a cursor is bound to the list it pages."""

from __future__ import annotations

import pytest

from gateway.channels.cursors import InvalidCursor, decode_cursor, encode_cursor, page


def test_pages_walk_the_list_and_cursors_are_bound_to_it() -> None:
    items = list(range(7))
    first, cursor = page(items, "f1", None, 3)
    assert list(first) == [0, 1, 2]
    assert cursor is not None
    second, cursor = page(items, "f1", cursor, 3)
    assert list(second) == [3, 4, 5]
    assert cursor is not None
    last, cursor = page(items, "f1", cursor, 3)
    assert list(last) == [6]
    assert cursor is None
    assert page(items, "f1", None, None) == (items, None)
    with pytest.raises(InvalidCursor):
        page(items, "changed", encode_cursor("f1", 3), 3)
    for bad in ("", "garbage", encode_cursor("f1", 3)[:-2] + "!!"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
