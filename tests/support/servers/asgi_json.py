"""A JSON answer in raw ASGI messages, for the test servers that wrap an SDK app (imported as a sibling
module: the servers run as scripts)."""

from __future__ import annotations

from typing import Any


async def json_answer(send: Any, status: int, body: bytes) -> None:
    """`body` (JSON) as the whole response, with `status`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
