"""HTTP/1.1 at the byte level for tests that must send what no client library will (malformed
request lines, headers, bodies, pipelined on one connection) and read each answer as it comes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

HEAD_LIMIT = 64 * 1024


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    """Lowercased names; the last value of a repeated header."""
    body: bytes


class Closed(Exception):
    """The server closed the connection before (or while) sending a response."""


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response from the stream (Content-Length, chunked, or up to EOF); Closed at EOF first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial[:200]) from None
    except asyncio.LimitOverrunError:
        raise Closed("response head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
    return RawResponse(status, headers, body)


@contextlib.asynccontextmanager
async def connection(
    port: int, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(
    method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> bytes:
    """A well-framed request (Content-Length set) whose parts may hold anything."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
