"""gateway.protocol.sse: the sans-IO SSE parser and encoder, fed bytes split at every position."""

from __future__ import annotations

import pytest

from gateway.protocol.sse import SseEvent, SseEventTooLarge, SseParser, encode_event


def parse_whole(stream: bytes, **kwargs: int) -> list[SseEvent]:
    return SseParser(**kwargs).feed(stream)


def parse_split(stream: bytes, cut: int) -> list[SseEvent]:
    parser = SseParser()
    return parser.feed(stream[:cut]) + parser.feed(stream[cut:])


def parse_bytewise(stream: bytes) -> list[SseEvent]:
    parser = SseParser()
    events: list[SseEvent] = []
    for i in range(len(stream)):
        events += parser.feed(stream[i : i + 1])
    return events


def assert_every_split(stream: bytes, expected: list[SseEvent]) -> None:
    assert parse_whole(stream) == expected
    assert parse_bytewise(stream) == expected
    for cut in range(len(stream) + 1):
        assert parse_split(stream, cut) == expected, f"split at {cut}"
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            parser = SseParser()
            got = parser.feed(stream[:first]) + parser.feed(stream[first:second]) + parser.feed(stream[second:])
            assert got == expected, f"split at {first}, {second}"


MESSAGES = [
    SseEvent(b'{"jsonrpc":"2.0","method":"notifications/progress"}'),
    SseEvent(b'{"jsonrpc":"2.0","id":1,"result":{}}'),
]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = b"".join(b"event: message" + eol + b"data: " + event.data + eol + eol for event in MESSAGES)
    assert_every_split(stream, MESSAGES)


def test_mixed_line_endings_and_crlf_split_between_chunks() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\n"
    assert_every_split(stream, [SseEvent(b"a"), SseEvent(b"b"), SseEvent(b"c")])


def test_multiline_data_is_joined_with_lf() -> None:
    stream = b"data: first\ndata:second\ndata:  third\ndata\n\n"
    assert_every_split(stream, [SseEvent(b"first\nsecond\n third\n")])


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": ping\n\n:\nfoo: bar\ndata: x\n: inside\n\n: ping\n\n"
    assert_every_split(stream, [SseEvent(b"x")])


def test_event_type_id_and_retry() -> None:
    stream = b"event: update\nid: 7\nretry: 1500\ndata: one\n\ndata: two\n\nid\ndata: three\n\n"
    assert_every_split(
        stream,
        [
            SseEvent(b"one", "update", "7", 1500),
            SseEvent(b"two", "message", "7", 1500),  # id and retry persist; the type does not
            SseEvent(b"three", "message", "", 1500),  # an empty id resets it
        ],
    )


def test_invalid_id_and_retry_are_ignored() -> None:
    stream = b"id: 1\nid: a\x00b\nretry: 12a\nretry:\ndata: x\n\n"
    assert_every_split(stream, [SseEvent(b"x", id="1")])


def test_event_without_data_is_not_dispatched() -> None:
    stream = b"event: lonely\nid: 3\n\ndata: y\n\n"
    assert_every_split(stream, [SseEvent(b"y", "message", "3")])


def test_empty_data_line_dispatches_an_empty_event() -> None:
    assert_every_split(b"data:\n\n", [SseEvent(b"")])


def test_leading_bom_is_dropped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert_every_split(bom + b"data: x\n\n", [SseEvent(b"x")])
    # a second BOM is not special: it becomes part of the field name (an unknown field)
    assert_every_split(bom + bom + b"data: x\n\ndata: y\n\n", [SseEvent(b"y")])


def test_space_after_colon_is_stripped_once() -> None:
    assert_every_split(b"data:  two spaces\n\n", [SseEvent(b" two spaces")])


def test_value_may_contain_colons() -> None:
    assert_every_split(b'data: {"a":"b:c"}\n\n', [SseEvent(b'{"a":"b:c"}')])


def test_incomplete_event_at_end_is_pending_not_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\n\ndata: half") == [SseEvent(b"x")]
    assert parser.pending
    parser2 = SseParser()
    assert parser2.feed(b"data: x\n\n") == [SseEvent(b"x")]
    assert not parser2.pending
    parser3 = SseParser()
    assert parser3.feed(b"data: x\n") == []
    assert parser3.pending


def test_empty_chunk_is_harmless() -> None:
    parser = SseParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n\n") == [SseEvent(b"x")]


def test_utf8_split_inside_a_character() -> None:
    data = "données ✓".encode()
    assert_every_split(b"data: " + data + b"\n\n", [SseEvent(data)])


def test_max_event_bytes_bounds_one_event() -> None:
    parser = SseParser(max_event_bytes=16)
    assert parser.feed(b"data: 0123456789\n\n") == [SseEvent(b"0123456789")]
    with pytest.raises(SseEventTooLarge):
        parser.feed(b"data: 0123456789\ndata: 0123456789\n")


def test_max_event_bytes_bounds_an_unterminated_line() -> None:
    parser = SseParser(max_event_bytes=16)
    assert parser.feed(b"data: 0123") == []
    with pytest.raises(SseEventTooLarge):
        parser.feed(b"456789abcdef")


def test_long_line_in_small_chunks() -> None:
    payload = b"x" * 10_000
    parser = SseParser()
    events: list[SseEvent] = []
    stream = b"data: " + payload + b"\n\n"
    for i in range(0, len(stream), 7):
        events += parser.feed(stream[i : i + 7])
    assert events == [SseEvent(payload)]


@pytest.mark.parametrize(
    ("data", "event", "wire"),
    [
        (b'{"a":1}', "message", b'event: message\ndata: {"a":1}\n\n'),
        (b"x", None, b"data: x\n\n"),
        (b"a\nb\r\nc\rd", "message", b"event: message\ndata: a\ndata: b\ndata: c\ndata: d\n\n"),
        (b"", "message", b"event: message\ndata: \n\n"),
    ],
)
def test_encode_event(data: bytes, event: str | None, wire: bytes) -> None:
    assert encode_event(data, event) == wire


@pytest.mark.parametrize("data", [b'{"jsonrpc":"2.0"}', b"multi\nline", b"", b"  spaced  "])
def test_encode_then_parse_round_trips(data: bytes) -> None:
    normalized = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    assert parse_whole(encode_event(data)) == [SseEvent(normalized)]
    assert parse_whole(encode_event(data, "custom")) == [SseEvent(normalized, "custom")]


def test_encode_rejects_a_line_break_in_the_event_name() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_event(b"x", "bad\nname")
