"""gateway.protocol.mcp with plain calls: ids tagged with the server they go to, and back."""

from __future__ import annotations

from msgspec import Raw

from gateway.protocol.mcp import tag_id, untag_id
from gateway.protocol.wire import Codec

CODEC = Codec()


def test_tagged_ids_round_trip() -> None:
    for original in (b"7", b'"srv-3"', b'"a~b"'):
        tagged = tag_id(CODEC, "p1", Raw(original))
        found = untag_id(tagged)
        assert found is not None
        assert found[0] == "p1"
        assert bytes(found[1]) == original
    assert untag_id(Raw(b"12")) is None
    assert untag_id(Raw(b'"plain"')) is None
