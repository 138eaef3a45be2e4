"""One POST to an OAuth token endpoint: the destination's egress settings, no redirect, a bounded answer.
Translates nothing: aiohttp's errors reach the caller, who says them in its own words (no URL, no body).

Shared by workload identity's exchange (gateway.tunnel.workload_identity) and a server's service
credential (gateway.upstream.service_credentials).
"""

from __future__ import annotations

import aiohttp

from gateway.protocol.headers import ACCEPT, AUTHORIZATION, CONTENT_TYPE, JSON
from gateway.upstream.egress import Egress


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes:
    """A body up to `cap` bytes, and one byte more when it is longer (the caller refuses it)."""
    body = bytearray()
    while len(body) <= cap:
        chunk = await content.read(cap + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def post_token_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    content_type: str,
    egress: Egress | None,
    max_bytes: int,
    authorization: str | None = None,
) -> tuple[int, bytes]:
    """The status and the answer (up to `max_bytes`, one byte more when longer: refuse it). A 3xx is
    returned as it is: a token endpoint is not followed elsewhere."""
    headers = {CONTENT_TYPE: content_type, ACCEPT: JSON}
    if authorization is not None:
        headers[AUTHORIZATION] = authorization
    async with session.post(
        url,
        data=body,
        headers=headers,
        ssl=egress.ssl if egress is not None else True,
        proxy=egress.proxy if egress is not None else None,
        allow_redirects=False,
    ) as resp:
        return resp.status, await read_capped(resp.content, max_bytes)
