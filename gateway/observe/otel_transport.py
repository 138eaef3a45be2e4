"""A keep-alive `http.client` transport for the SDK's OTLP/HTTP client, used for plain-`http://` endpoints
that `requests` would reach directly (no proxy, no .netrc login, no credential-provider session). Sends
what it is given: retries, backoff, deadlines, compression and headers stay the SDK's `_OTLPHTTPClient`'s.

`requests` builds a prepared request, merges session settings, checks the pooled connection with a
`poll` and wraps the answer per POST (about 0.5 ms a batch here); this writes the request on one kept
connection and reads the answer, reopening the connection after any error or a `Connection: close`.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import requests
import requests.utils
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from opentelemetry.sdk.environment_variables import (
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER,
    _OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER,
)
from requests.structures import CaseInsensitiveDict

_CONNECTION_ERRORS: Final = (ConnectionError, TimeoutError, http.client.HTTPException, OSError)
"""What a failed exchange raises: reset or refused connections, timeouts, a malformed or missing answer."""


@dataclass(frozen=True, slots=True)
class KeptResult(BaseHTTPResult):
    """One exchange's outcome (status and reason, or the error), with the answer's body and headers."""

    body: bytes = b""
    fields: http.client.HTTPMessage | None = field(default=None, hash=False, compare=False)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        """Case-insensitive; a repeated header's values joined with ", " (as the SDK's interface asks)."""
        out: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, value in (self.fields or {}).items():
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out


class KeepAliveTransport(BaseHTTPTransport):
    """One kept `http.client.HTTPConnection` to the endpoint's host; requests are sent one at a time.
    A request for any other URL goes through `fallback` (the SDK's `requests` transport over `session`)."""

    def __init__(self, endpoint: str, fallback: BaseHTTPTransport, session: requests.Session) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("KeepAliveTransport serves plain http:// endpoints only")
        self._fallback = fallback
        self._session = session
        """The session `fallback` sends through (its environment settled once, as for any endpoint)."""
        self._host = parts.hostname
        self._port = parts.port or 80
        self._connection: http.client.HTTPConnection | None = None
        self._pid = os.getpid()
        """The process that opened `_connection`."""
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        parts = urlsplit(url)
        if (parts.hostname, parts.port or 80) != (self._host, self._port) or parts.scheme != "http":
            return self._fallback.request(method, url, headers=headers, timeout=timeout, data=data)
        if timeout is not None and timeout <= 0:
            return KeptResult(error=TimeoutError("the export's deadline has passed"))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        with self._lock:
            try:
                connection = self._connect(timeout)
                connection.request(method, target, body=data, headers=headers or {})
                response = connection.getresponse()
                body = response.read()
            except _CONNECTION_ERRORS as error:
                self._drop()
                return KeptResult(error=error)
            if response.will_close:
                self._drop()
            return KeptResult(status_code=response.status, reason=response.reason, body=body, fields=response.msg)

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is not None and self._pid != os.getpid():
            connection.close()  # a forked child closes its copy of the parent's socket (no shutdown: the
            connection = self._connection = None  # parent's connection goes on) and never writes on it
        if connection is None:
            connection = self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._pid = os.getpid()
        else:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        return connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def is_connection_error(self, exception: Exception | None) -> bool:
        return isinstance(exception, _CONNECTION_ERRORS) or self._fallback.is_connection_error(exception)

    def close(self) -> None:
        with self._lock:
            self._drop()
        self._fallback.close()


def keeps_alive(endpoint: str) -> bool:
    """Whether `KeepAliveTransport` sends to `endpoint` what the SDK's `requests` transport would: a plain
    `http://` URL that no proxy setting covers, no `.netrc` login for its host, and no credential-provider
    session configured (each of those stays with `requests`)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if os.environ.get(_OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER) or os.environ.get(
        _OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER
    ):
        return False
    if requests.utils.get_environ_proxies(endpoint):
        return False
    return requests.utils.get_netrc_auth(endpoint) is None
