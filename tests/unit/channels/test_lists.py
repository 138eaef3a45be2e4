"""gateway.channels.lists with plain calls: a list result's items and next cursor, capabilities merged feature by
feature."""

from __future__ import annotations

import msgspec
from msgspec import Raw

from gateway.channels.lists import merge_capabilities, split_page
from gateway.protocol.wire import Codec

CODEC = Codec()


def test_split_page_reads_items_and_next_cursor() -> None:
    items, cursor = split_page(CODEC, "tools/list", Raw(b'{"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"2"}'))
    assert [bytes(i) for i in items] == [b'{"name":"a"}', b'{"name":"b"}']
    assert cursor == "2"
    items, cursor = split_page(CODEC, "resources/templates/list", Raw(b'{"resourceTemplates":[]}'))
    assert items == []
    assert cursor is None


def test_capabilities_merge_feature_by_feature() -> None:
    merged = msgspec.json.decode(
        merge_capabilities(
            CODEC,
            [
                Raw(b'{"tools":{"listChanged":false},"logging":{}}'),
                Raw(b'{"prompts":{},"resources":{"subscribe":true},"experimental":{"x":{"a":1}}}'),
                Raw(b'{"tools":{},"experimental":{"y":{}}}'),
            ],
        )
    )
    assert merged == {
        "tools": {"listChanged": True},
        "logging": {},
        "prompts": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "experimental": {"x": {"a": 1}, "y": {}},
    }
