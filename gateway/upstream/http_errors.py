"""aiohttp failures in the contract's words: the one place they become `UpstreamError`s.
Messages name the server, never the URL, the body or the peer's exception text.

Owns `map_aiohttp_errors` (the translation every HTTP request to an MCP server or its metadata goes
through) and the failure of a request the gateway could not even address.
"""

from __future__ import annotations

import contextlib
import errno
import ssl
from collections.abc import Iterator

import aiohttp

from gateway.protocol.errors import UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.wire import TunnelFailure


@contextlib.contextmanager
def map_aiohttp_errors(server: str) -> Iterator[None]:
    """Translate aiohttp/socket failures into UpstreamErrors (the one place that does).

    Messages name the server only: never the URL, the body or the peer's exception text.
    """
    try:
        yield
    except aiohttp.ClientConnectorDNSError as exc:
        raise UpstreamUnavailable.dns(server) from exc
    except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch, ssl.SSLError) as exc:
        raise UpstreamUnavailable.tls(server) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise UpstreamUnavailable.timeout(server) from exc
    except aiohttp.ClientConnectorError as exc:
        raise _connect_failure(server, exc.os_error.errno) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamUnavailable.closed(server, "connection_closed") from exc
    except (aiohttp.ClientConnectionResetError, ConnectionResetError) as exc:
        raise UpstreamUnavailable.closed(server, "connection_reset") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamUnavailable.closed(server, "unexpected_eof") from exc
    except aiohttp.ClientResponseError as exc:  # unparseable status line or headers
        raise UpstreamProtocolError(server, "non_protocol_response") from exc
    except (aiohttp.ClientOSError, ConnectionError) as exc:
        raise UpstreamUnavailable.closed(server, _closed_kind(exc.errno)) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise unaddressable(server) from exc
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamUnavailable.closed(server, "unknown") from exc
    except aiohttp.ClientError as exc:
        raise unaddressable(server) from exc


def _connect_failure(server: str, code: int | None) -> UpstreamUnavailable:
    if code == errno.ETIMEDOUT:
        return UpstreamUnavailable.timeout(server)
    if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return UpstreamUnavailable.closed(server, _closed_kind(code))
    kinds = {
        errno.ECONNREFUSED: "connection_refused",
        errno.EHOSTUNREACH: "host_unreachable",
        errno.ENETUNREACH: "network_unreachable",
    }
    return UpstreamUnavailable.connect(server, kinds.get(code or 0, "dial"))


def _closed_kind(code: int | None) -> str:
    kinds = {errno.ECONNRESET: "connection_reset", errno.EPIPE: "closed_pipe", errno.ECONNABORTED: "connection_aborted"}
    return kinds.get(code or 0, "connection_closed")


def unaddressable(server: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"upstream {server!r} could not be addressed",
        TunnelFailure(source="client_internal", transport_error_kind="unknown", upstream_response_received=False),
    )
