"""gateway/tunnel/http1.py: forward proxies against the scripted server (absolute-form requests, CONNECT refused or
cut), then origins, proxy settings and header values parsed with no socket at all."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway.tunnel.http1 import H1Error, Origin, valid_field_value
from tests.support.http1_server import WAIT_S, MakeClient, ScriptedServer, answer, hang_up, hold, spin

# --------------------------------------------------------------------------- proxies


async def test_http_target_through_proxy_uses_absolute_form_and_auth(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """An http:// URL through a proxy: the proxy gets absolute-form requests carrying Proxy-Authorization."""
    target = f"http://127.0.0.1:{server.port}/v1/response"
    client = make_client(target, proxy=f"http://user:pw@127.0.0.1:{server.port}")
    assert (await client.post(b"X-A: 1\r\n", b"body")).body == b"body"
    assert server.received[0].head == (
        b"POST http://127.0.0.1:%d/v1/response HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Proxy-Authorization: Basic %s\r\nX-A: 1\r\nContent-Length: 4\r\n\r\n"
        % (server.port, server.port, base64.b64encode(b"user:pw"))
    )


async def test_connect_refused_by_proxy_hides_password(server: ScriptedServer, make_client: MakeClient) -> None:
    """An https:// URL through a proxy opens a CONNECT tunnel with Proxy-Authorization; a 407 answer is an
    `H1Error` with `sent=False` naming the status but not the proxy's password, and the proxy connection is
    dropped."""
    server.replies.append(answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"))
    authority = f"127.0.0.1:{server.port}"  # the scripted proxy is never asked to reach anything else
    client = make_client(f"https://{authority}/v1/response", proxy=f"http://user:s3cret@127.0.0.1:{server.port}")
    with pytest.raises(H1Error) as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is False
    assert "407" in str(failed.value)
    credentials = base64.b64encode(b"user:s3cret").decode()
    assert "s3cret" not in str(failed.value)
    assert credentials not in str(failed.value)
    (connect,) = server.received
    assert connect.line == f"CONNECT {authority} HTTP/1.1".encode()
    assert connect.header(b"host") == authority.encode()
    assert connect.header(b"proxy-authorization") == f"Basic {credentials}".encode()
    assert connect.body == b""
    await server.ended(0)


async def test_proxy_closing_during_connect_is_not_sent(server: ScriptedServer, make_client: MakeClient) -> None:
    """The proxy hangs up instead of answering CONNECT: `H1Error` with `sent=False`."""
    server.replies.append(hang_up)
    client = make_client(f"https://127.0.0.1:{server.port}/v1/response", proxy=f"127.0.0.1:{server.port}")
    with pytest.raises(H1Error) as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is False
    assert server.received[0].header(b"proxy-authorization") is None


async def test_cancel_during_connect_closes_proxy_connection(server: ScriptedServer, make_client: MakeClient) -> None:
    """Cancelling a POST while the proxy holds its CONNECT answer closes the proxy connection."""
    arrived = asyncio.Event()
    server.replies.append(hold(arrived))
    client = make_client(f"https://127.0.0.1:{server.port}/v1/response", proxy=f"127.0.0.1:{server.port}")
    task = asyncio.create_task(client.post(b"", b"x"))
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await spin()  # a dropped connection reaches the server within a few loop turns
    dropped = server.conns[0].ended.is_set()
    server.conns[0].writer.close()  # the leaked client socket then closes on EOF, before the loop ends
    await server.ended(0)
    await spin()
    assert dropped


# --------------------------------------------------------------------------- origin and header values (no sockets)


@pytest.mark.parametrize(
    ("url", "host", "port", "path", "authority"),
    [
        ("http://example.test/x", "example.test", 80, "/x", "example.test"),
        ("https://example.test", "example.test", 443, "/", "example.test"),
        ("http://example.test:8080/p", "example.test", 8080, "/p", "example.test:8080"),
        ("https://example.test:443/p", "example.test", 443, "/p", "example.test"),
        ("https://example.test:80/p", "example.test", 80, "/p", "example.test:80"),
        ("http://[::1]:8080/p", "::1", 8080, "/p", "[::1]:8080"),
        ("https://[2001:db8::1]/p", "2001:db8::1", 443, "/p", "[2001:db8::1]"),
        ("http://example.test/poll?a=1&b=2", "example.test", 80, "/poll?a=1&b=2", "example.test"),
    ],
)
def test_origin_parse(url: str, host: str, port: int, path: str, authority: str) -> None:
    """Default ports per scheme, bracketed IPv6 authorities, the query kept in the path."""
    origin = Origin.parse(url)
    assert (origin.host, origin.port, origin.path, origin.authority) == (host, port, path, authority)
    assert origin.proxy_host is None
    assert origin.request_head("GET") == f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n".encode()


def test_request_head_query_replaces_the_urls_own() -> None:
    """`request_head(method, query)` swaps the URL's query for the given one; without it the URL's is kept."""
    origin = Origin.parse("http://example.test:81/v1/poll?x=9")
    assert origin.request_head("GET", "?a=1") == b"GET /v1/poll?a=1 HTTP/1.1\r\nHost: example.test:81\r\n"
    assert origin.request_head("GET") == b"GET /v1/poll?x=9 HTTP/1.1\r\nHost: example.test:81\r\n"
    assert Origin.parse("http://example.test/p").request_head("GET", "?a=1") == (
        b"GET /p?a=1 HTTP/1.1\r\nHost: example.test\r\n"
    )


def test_proxy_authorization_only_when_forwarding_plain_http() -> None:
    """Proxy credentials (percent-decoded) become a Basic `Proxy-Authorization` line on absolute-form requests
    for http:// targets, and never appear in https:// (tunnelled) request heads."""
    proxy = "http://us%3Aer:p%40ss@proxy.test:3128"
    expected = "Basic " + base64.b64encode(b"us:er:p@ss").decode()

    plain = Origin.parse("http://example.test:81/p?q=1", proxy)
    assert (plain.proxy_host, plain.proxy_port, plain.proxy_auth, plain.proxy_tls) == (
        "proxy.test",
        3128,
        expected,
        False,
    )
    head = f"POST http://example.test:81/p?q=1 HTTP/1.1\r\nHost: example.test:81\r\nProxy-Authorization: {expected}\r\n"
    assert plain.request_head("POST") == head.encode()
    assert plain.request_head("GET", "?a=1").startswith(b"GET http://example.test:81/p?a=1 HTTP/1.1\r\n")

    tunnelled = Origin.parse("https://example.test/p", proxy)
    assert tunnelled.proxy_auth == expected  # kept for CONNECT
    assert tunnelled.request_head("POST") == b"POST /p HTTP/1.1\r\nHost: example.test\r\n"


@pytest.mark.parametrize(
    ("proxy", "host", "port", "tls", "auth"),
    [
        ("proxy.test:3128", "proxy.test", 3128, False, None),
        ("http://proxy.test", "proxy.test", 80, False, None),
        ("https://proxy.test", "proxy.test", 443, True, None),
        ("http://user@proxy.test:1", "proxy.test", 1, False, "Basic " + base64.b64encode(b"user:").decode()),
    ],
)
def test_origin_parse_proxy_forms(proxy: str, host: str, port: int, tls: bool, auth: str | None) -> None:
    """A proxy without a scheme is plain HTTP; default proxy ports follow the proxy's scheme; a user without a
    password still authenticates."""
    origin = Origin.parse("http://example.test/", proxy)
    assert (origin.proxy_host, origin.proxy_port, origin.proxy_tls, origin.proxy_auth) == (host, port, tls, auth)


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("ftp://example.test/", None),
        ("example.test/path", None),
        ("http:///no-host", None),
        ("http://example.test/", "socks5://proxy.test:1080"),
        ("http://example.test/", "http://"),
    ],
)
def test_origin_parse_rejects(url: str, proxy: str | None) -> None:
    """Only http:// and https:// URLs and proxies, with a host."""
    with pytest.raises(ValueError, match="http"):
        Origin.parse(url, proxy)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("Bearer abc.DEF-123_~+/=", True),
        ("token", True),
        ("a value with spaces", True),
        ("", True),
        ("a\rb", False),
        ("a\nb", False),
        ("a\r\nX-Injected: 1", False),
        ("a\x00b", False),
        ("a\x7fb", False),
        ("caf\u00e9", False),
        ("\u2028", False),
    ],
)
def test_valid_field_value(value: str, ok: bool) -> None:
    """Header values with CR, LF, NUL, other controls or non-ASCII are rejected; visible ASCII passes."""
    assert valid_field_value(value) is ok
