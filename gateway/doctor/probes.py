"""The doctor's network probes: resolve a name, open a connection (directly or through a proxy's
`CONNECT`), shake hands over TLS and read the peer's certificate. Each returns what it found or a
`Problem`; none raises for a network failure, and every connection it opens it closes.

Resolution goes through a `Resolver` callable, so a test can give one that fails without a DNS query.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from gateway.tunnel.http1 import Origin, connect_head, status_code

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port)` -> the addresses it resolves to; raises OSError (socket.gaierror) when it does not."""

MAX_HEAD: Final = 16 * 1024
"""The most of a proxy's answer to `CONNECT` read before giving up on it."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (getaddrinfo, as the gateway's connections use it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a probe failed: `kind` for the check to choose its advice, `cause` in an operator's words."""

    kind: str
    """`dns`, `refused`, `timeout`, `unreachable`, `closed`, `proxy_status`, `tls_untrusted`,
    `tls_expired`, `tls_hostname`, `tls`."""
    cause: str
    status: str | None = None
    """The proxy's status code (`proxy_status`)."""
    issuer: str | None = None
    """The certificate's issuer (`tls_untrusted`), read from an unverified second handshake."""


@dataclass(slots=True)
class Link:
    """An open connection (to the destination, or a tunnel to it through a proxy)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()


@dataclass(frozen=True, slots=True)
class Certificate:
    """The peer's leaf certificate, after a verified handshake."""

    subject: str
    issuer: str
    not_after: datetime.datetime

    def days_left(self, now: datetime.datetime | None = None) -> int:
        return (self.not_after - (now or datetime.datetime.now(datetime.UTC))).days


def _os_problem(exc: OSError, where: str) -> Problem:
    if isinstance(exc, ConnectionRefusedError):
        return Problem("refused", f"connection refused by {where}")
    if isinstance(exc, socket.gaierror):
        return Problem("dns", f"DNS lookup failed for {where} ({exc.strerror or exc})")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Problem("closed", f"connection reset by {where}")
    return Problem("unreachable", f"cannot connect to {where} ({exc.strerror or type(exc).__name__})")


async def open_link(host: str, port: int, timeout_s: float) -> Link | Problem:
    """A TCP connection to `host:port`."""
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
    except TimeoutError:
        return Problem("timeout", f"no answer from {where} within {timeout_s:g}s (a firewall may drop the packets)")
    except OSError as exc:
        return _os_problem(exc, where)
    return Link(reader, writer)


async def _ask_proxy(origin: Origin, request: bytes, what: str, timeout_s: float) -> tuple[Link, bytes] | Problem:
    """Send `request` to the proxy `origin` names; the open link and the head of its answer."""
    assert origin.proxy_host is not None
    link = await open_link(origin.proxy_host, origin.proxy_port, timeout_s)
    if isinstance(link, Problem):
        return link
    try:
        async with asyncio.timeout(timeout_s):
            link.writer.write(request)
            return link, await link.reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        await link.close()
        return Problem("timeout", f"the proxy did not answer {what} within {timeout_s:g}s")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        await link.close()
        return Problem("closed", f"the proxy closed the connection instead of answering {what}")


async def through_proxy(proxy: str, authority: str, timeout_s: float) -> Link | Problem:
    """A `CONNECT` tunnel to `authority` through `proxy` (its userinfo sent as Basic credentials)."""
    origin = Origin.parse(f"https://{authority}/", proxy)
    answer = await _ask_proxy(origin, connect_head(authority, origin.proxy_auth), "CONNECT", timeout_s)
    if isinstance(answer, Problem):
        return answer
    link, head = answer
    code = status_code(head)
    if code != "200":
        await link.close()
        reason = head.split(b"\r\n", 1)[0].split(b" ", 2)[2:]
        words = reason[0].decode("latin-1", "replace").strip() if reason else ""
        return Problem("proxy_status", f"HTTP {code} {words}".strip(), status=code)
    return link


async def forward_head(proxy: str, url: str, timeout_s: float) -> str | Problem:
    """A plain-HTTP `HEAD` in absolute form through `proxy`: the status it answers."""
    origin = Origin.parse(url, proxy)
    request = origin.request_head("HEAD") + b"Connection: close\r\n\r\n"
    answer = await _ask_proxy(origin, request, "a forwarded request", timeout_s)
    if isinstance(answer, Problem):
        return answer
    link, head = answer
    await link.close()
    return status_code(head)


async def handshake(link: Link, context: ssl.SSLContext, host: str, timeout_s: float) -> Certificate | Problem:
    """TLS over `link` with `context` (verification and host name as the gateway does them)."""
    try:
        async with asyncio.timeout(timeout_s):
            await link.writer.start_tls(context, server_hostname=host)
    except TimeoutError:
        return Problem("timeout", f"no TLS handshake with {host} within {timeout_s:g}s")
    except ssl.SSLCertVerificationError as exc:
        return _verification_problem(exc)
    except (ssl.SSLError, OSError) as exc:
        return Problem("tls", f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})")
    der = _peer_der(link)
    if der is None:
        return Problem("tls", "the server sent no certificate")
    return _certificate(der)


_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21})
"""OpenSSL verify codes meaning "the chain does not end at a CA you trust": unable to get issuer
certificate (locally), self-signed leaf, self-signed in chain, unable to verify the leaf."""
_EXPIRED: Final = frozenset({10})
_HOSTNAME: Final = frozenset({62})


def _verification_problem(exc: ssl.SSLCertVerificationError) -> Problem:
    message = exc.verify_message or str(exc.reason)
    code = exc.verify_code
    if code in _UNTRUSTED:
        return Problem("tls_untrusted", f"certificate verification failed: {message}")
    if code in _EXPIRED:
        return Problem("tls_expired", f"certificate verification failed: {message}")
    if code in _HOSTNAME:
        return Problem("tls_hostname", f"certificate verification failed: {message}")
    return Problem("tls", f"certificate verification failed: {message}")


def _peer_der(link: Link) -> bytes | None:
    ssl_object = link.writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


def _certificate(der: bytes) -> Certificate:
    cert = x509.load_der_x509_certificate(der)
    return Certificate(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.not_valid_after_utc)


def unverified_context() -> ssl.SSLContext:
    """For reading a certificate the verified handshake refused (its issuer), never for traffic."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
