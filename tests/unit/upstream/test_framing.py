"""gateway.upstream.framing with plain calls: stdio lines split anywhere, oversized lines, the id table."""

from __future__ import annotations

import pytest

from gateway.upstream.framing import IdTable, LineDecoder, Oversized

STREAM = b'{"a":1}\n{"b":"\xc3\xa9"}\r\n\n   \n{"c":[1,2,3]}\n'
LINES = [b'{"a":1}', b'{"b":"\xc3\xa9"}', b'{"c":[1,2,3]}']


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_line_decoder_handles_every_split_point(cut: int) -> None:
    decoder = LineDecoder(limit=1024)
    out = list(decoder.feed(STREAM[:cut])) + list(decoder.feed(STREAM[cut:]))
    assert out == LINES


def test_line_decoder_byte_at_a_time() -> None:
    decoder = LineDecoder(limit=1024)
    out = [line for i in range(len(STREAM)) for line in decoder.feed(STREAM[i : i + 1])]
    assert out == LINES


def test_oversized_line_is_skipped_and_reported_once() -> None:
    decoder = LineDecoder(limit=10)
    out = list(decoder.feed(b"x" * 8)) + list(decoder.feed(b"y" * 8)) + list(decoder.feed(b'zz\n{"ok":1}\n'))
    assert out == [Oversized(18, b"x" * 8 + b"y" * 8 + b"zz"), b'{"ok":1}']  # the line's first bytes, however split


@pytest.mark.parametrize("cut", [1, 20, 40, 200])
@pytest.mark.parametrize(
    ("line", "id"),
    [
        (b'{"jsonrpc":"2.0","id":17,"result":{"content":"%s"}}', 17),
        (b'{ "id" : 5 , "jsonrpc" : "2.0" , "error" : {"message":"%s"}}', 5),
        (b'{"jsonrpc":"2.0","id":"srv-1","result":{"content":"%s"}}', None),  # not an id the gateway issued
        (b'{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":"%s"}', None),  # a request
        (b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"%s"}}', None),
        (b'{"result":{"content":"%s"},"id":9,"jsonrpc":"2.0"}', None),  # the id comes too late to be seen
    ],
)
def test_an_oversized_response_shows_the_id_it_answers(line: bytes, id: int | None, cut: int) -> None:
    """A stdio server's answer too large to relay still fails the call it answers
    (tests/contract/test_upstream_contract.py)."""
    data = line % (b"x" * 1000) + b"\n"
    decoder = LineDecoder(limit=100)
    out = list(decoder.feed(data[:cut])) + list(decoder.feed(data[cut:]))
    assert len(out) == 1
    assert isinstance(out[0], Oversized)
    assert out[0].length == len(data) - 1
    assert out[0].head == data[:128]
    assert out[0].response_id == id


def test_id_table_never_reuses_ids_and_maps_tokens() -> None:
    table: IdTable[str] = IdTable()
    first = table.issue("a")
    token = table.issue_token("a", b'"client-token"')
    table.retire(first, token)
    second = table.issue("b")
    assert second > first
    assert table.owner(first) is None
    assert table.token_owner(token) is None
    assert table.owner(second) == "b"
    assert table.clear() == ["b"]
    assert len(table) == 0
