"""OAuth discovery of one HTTP server (gateway/upstream/oauth_discovery.py through `HttpUpstream.oauth_metadata`).

The metadata sites are aiohttp servers on 127.0.0.1:0 in the test's loop, scripted per path and
recording every request: they play a protected resource's origin, its authorization server and a
site a redirect points at. The fetching code under test is the gateway's own, over a real socket;
TLS through `ca_bundle` uses a real certificate authority (trustme). Each test names the RFC 9728 /
RFC 8414 section or the MCP authorization spec section (2025-11-25; 2026-07-28 keeps it) it checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import DiscoveryFailed, UpstreamUnavailable
from gateway.protocol.oauth import AUTHORIZATION_SERVER_KEY, MAX_METADATA_BYTES
from gateway.protocol.wire import Codec
from gateway.upstream.egress import egress
from gateway.upstream.http import HttpUpstream

PRM_PATH = "/.well-known/oauth-protected-resource/mcp"
PRM_ROOT = "/.well-known/oauth-protected-resource"
AS_PATH = "/.well-known/oauth-authorization-server"
OIDC_PATH = "/.well-known/openid-configuration"


@dataclass
class Seen:
    path: str
    headers: CIMultiDict[str]


Answer = tuple[int, bytes, dict[str, str]] | Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Site:
    """An HTTP origin answering scripted paths (404 elsewhere) and recording what it was asked."""

    url: str = ""
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def json(self, path: str, document: object, status: int = 200) -> None:
        self.answers[path] = (status, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, CIMultiDict(request.headers)))
        answer = self.answers.get(request.path_qs)
        if answer is None:
            return web.Response(status=404, text="not here")
        if callable(answer):
            return await answer(request)
        status, body, headers = answer
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def sites() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def make(ssl_context: ssl.SSLContext | None = None) -> Site:
        site = Site()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", site.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        scheme = "https" if ssl_context else "http"
        site.url = f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
        return site

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def upstream(http: aiohttp.ClientSession, tmp_path: Path) -> Callable[..., HttpUpstream]:
    def make(url: str, *, headers: dict[str, str] | None = None, **egress_spec: Any) -> HttpUpstream:
        spec = HttpSpec(url=url, **egress_spec)
        return HttpUpstream(
            "notes",
            spec,
            session=http,
            bridge=Bridge(Codec()),
            max_message_bytes=4 * 1024 * 1024,
            extra_headers=headers or {},
            egress=egress(url, spec, file="routing.yaml", key="servers.notes.http", base=tmp_path),
        )

    return make


def prm(origin: Site, issuer: str, **more: object) -> dict[str, object]:
    return {"resource": f"{origin.url}/mcp", "authorization_servers": [issuer], **more}


async def test_path_suffixed_metadata_first_then_the_authorization_servers(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """RFC 9728 §3.1 and MCP authorization, "Protected Resource Metadata Discovery Requirements": the
    path-suffixed well-known URL is asked first and, when it answers, the root one is not; RFC 8414
    §3.1: the metadata of `authorization_servers[0]` is fetched from its well-known URL and travels
    with the server's document, which passes member for member (unknown members too, RFC 9728 §2)."""
    origin, idp = await sites(), await sites()
    origin.json(PRM_PATH, prm(origin, idp.url, scopes_supported=["notes"], x_custom={"a": 1}))
    origin.json(PRM_ROOT, {"resource": "wrong"})
    idp.json(AS_PATH, {"issuer": idp.url, "authorization_endpoint": f"{idp.url}/authorize"})
    answer = json.loads(await upstream(f"{origin.url}/mcp").oauth_metadata())
    assert origin.paths() == [PRM_PATH]
    assert idp.paths() == [AS_PATH]
    assert answer["resource"] == f"{origin.url}/mcp"
    assert answer["scopes_supported"] == ["notes"]
    assert answer["x_custom"] == {"a": 1}
    assert answer[AUTHORIZATION_SERVER_KEY]["authorization_endpoint"] == f"{idp.url}/authorize"
    assert origin.seen[0].headers["Accept"] == "application/json"


async def test_the_root_metadata_when_the_path_has_none(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """RFC 9728 §3.1 / MCP authorization: on a 404 at the path-suffixed URL, the root well-known URL;
    an issuer with a path is looked up by RFC 8414 §3.1 path insertion, then OIDC (in MCP's order)."""
    origin, idp = await sites(), await sites()
    origin.json(PRM_ROOT, prm(origin, f"{idp.url}/tenant/7"))
    idp.json(f"{OIDC_PATH}/tenant/7", {"issuer": f"{idp.url}/tenant/7"})
    answer = json.loads(await upstream(f"{origin.url}/mcp").oauth_metadata())
    assert origin.paths() == [PRM_PATH, PRM_ROOT]
    assert idp.paths() == [f"{AS_PATH}/tenant/7", f"{OIDC_PATH}/tenant/7"]
    assert answer[AUTHORIZATION_SERVER_KEY] == {"issuer": f"{idp.url}/tenant/7"}


async def test_no_metadata_anywhere_is_a_404_not_found(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """RFC 9728 §3.1: both well-known URLs answer 404 -> the server has no metadata (404 at the edge)."""
    origin = await sites()
    with pytest.raises(DiscoveryFailed) as caught:
        await upstream(f"{origin.url}/mcp").oauth_metadata()
    assert caught.value.resp_code == 404
    assert caught.value.api_code == "oauth_metadata_not_found"
    assert origin.paths() == [PRM_PATH, PRM_ROOT]
    assert origin.url not in str(caught.value)


async def test_redirects_are_refused_never_followed(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """Nothing in a command or an answer may point the gateway elsewhere (design.md, Non-negotiables):
    a 3xx at a well-known URL is refused, its target never asked, and the next candidate tried."""
    origin, elsewhere = await sites(), await sites()
    elsewhere.json(PRM_PATH, prm(elsewhere, elsewhere.url))
    origin.answers[PRM_PATH] = (302, b"", {"Location": f"{elsewhere.url}{PRM_PATH}"})
    origin.answers[PRM_ROOT] = (307, b"", {"Location": f"{elsewhere.url}{PRM_PATH}"})
    with pytest.raises(DiscoveryFailed) as caught:
        await upstream(f"{origin.url}/mcp").oauth_metadata()
    assert caught.value.resp_code == 502
    assert "redirect" in str(caught.value)
    assert elsewhere.seen == []
    origin.answers[PRM_ROOT] = (200, json.dumps(prm(origin, elsewhere.url)).encode(), {})
    elsewhere.answers[AS_PATH] = (301, b"", {"Location": f"{origin.url}/x"})
    answer = json.loads(await upstream(f"{origin.url}/mcp").oauth_metadata())
    assert AUTHORIZATION_SERVER_KEY not in answer  # the authorization server's redirect was not followed
    assert "/x" not in origin.paths()


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_a_document_past_the_bound_is_refused(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream], length: str
) -> None:
    """A body past MAX_METADATA_BYTES is refused whether its length is declared or only streamed."""
    origin = await sites()
    big = json.dumps(prm(origin, origin.url, padding="x" * MAX_METADATA_BYTES)).encode()

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(big), 65536):
            await response.write(big[start : start + 65536])
        await response.write_eof()
        return response

    if length == "declared":
        origin.answers[PRM_PATH] = (200, big, {"Content-Type": "application/json"})
    else:
        origin.answers[PRM_PATH] = streamed
    with pytest.raises(DiscoveryFailed) as caught:
        await upstream(f"{origin.url}/mcp").oauth_metadata()
    assert caught.value.failure.transport_error_kind == "response_body_too_large"


async def test_invalid_metadata_is_not_passed_on(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """RFC 9728 §2: `resource` is REQUIRED; a document without it (or not JSON) is not metadata."""
    origin = await sites()
    origin.json(PRM_PATH, {"authorization_servers": [origin.url]})
    origin.answers[PRM_ROOT] = (200, b"<html>login</html>", {"Content-Type": "text/html"})
    with pytest.raises(DiscoveryFailed) as caught:
        await upstream(f"{origin.url}/mcp").oauth_metadata()
    assert caught.value.resp_code == 502
    assert "<html>" not in str(caught.value)


async def test_an_issuer_that_differs_is_accepted_and_logged(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream], caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 8414 §3.3 asks for `issuer` identical to the URL the metadata was fetched for; enterprise
    identity providers publish otherwise (a tenant template, a trailing slash), so the gateway passes
    the document on and logs the mismatch (issue 18, scope 1)."""
    origin, idp = await sites(), await sites()
    origin.json(PRM_PATH, prm(origin, idp.url))
    idp.json(AS_PATH, {"issuer": "https://login.example/{tenantid}/v2.0"})
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.oauth_discovery"):
        answer = json.loads(await upstream(f"{origin.url}/mcp").oauth_metadata())
    assert answer[AUTHORIZATION_SERVER_KEY]["issuer"] == "https://login.example/{tenantid}/v2.0"
    assert any("names issuer" in record.getMessage() and "accepted" in record.getMessage() for record in caplog.records)


async def test_a_slow_authorization_server_does_not_cost_the_answer(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """Within the command's deadline: the authorization server's metadata gets a share of the time
    left; past it the protected resource metadata goes out alone (the client can fetch the rest)."""
    origin, idp = await sites(), await sites()
    origin.json(PRM_PATH, prm(origin, idp.url))
    release = asyncio.Event()

    async def never(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=503)

    idp.answers[AS_PATH] = never
    deadline = asyncio.get_running_loop().time() + 1.0
    try:
        answer = json.loads(await upstream(f"{origin.url}/mcp").oauth_metadata(deadline))
    finally:
        release.set()
    assert AUTHORIZATION_SERVER_KEY not in answer
    assert answer["resource"] == f"{origin.url}/mcp"


async def test_the_servers_headers_go_to_its_origin_only(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream]
) -> None:
    """The server's configured headers (an API gateway key) reach its own origin, never the
    authorization server's; no request carries a client's Authorization (discovery has no client)."""
    origin, idp = await sites(), await sites()
    origin.json(PRM_PATH, prm(origin, idp.url))
    idp.json(AS_PATH, {"issuer": idp.url})
    await upstream(f"{origin.url}/mcp", headers={"X-Api-Gateway-Key": "k-123"}).oauth_metadata()
    assert origin.seen[0].headers["X-Api-Gateway-Key"] == "k-123"
    assert "X-Api-Gateway-Key" not in idp.seen[0].headers
    assert all("Authorization" not in seen.headers for seen in [*origin.seen, *idp.seen])


async def test_the_servers_tls_settings_apply(
    sites: Callable[..., Any], upstream: Callable[..., HttpUpstream], tmp_path: Path
) -> None:
    """The server's egress settings (`ca_bundle`): a private CA it trusts makes discovery work over
    TLS; without it the handshake fails as a `tls` failure, never a silent fallback to anything else."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    origin = await sites(context)
    origin.json(PRM_PATH, prm(origin, origin.url))
    origin.json(AS_PATH, {"issuer": origin.url})
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    answer = json.loads(await upstream(f"{origin.url}/mcp", ca_bundle=str(bundle)).oauth_metadata())
    assert answer[AUTHORIZATION_SERVER_KEY] == {"issuer": origin.url}
    with pytest.raises(UpstreamUnavailable) as caught:
        await upstream(f"{origin.url}/mcp").oauth_metadata()
    assert caught.value.failure.source == "tls"


async def test_an_unreachable_server_is_a_connect_failure(upstream: Callable[..., HttpUpstream]) -> None:
    """A closed port: UpstreamUnavailable (the dispatcher answers 502 `oauth_discovery_failed`)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamUnavailable) as caught:
        await upstream(f"http://127.0.0.1:{port}/mcp").oauth_metadata()
    assert caught.value.failure.source == "connect"
