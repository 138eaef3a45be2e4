"""What every routing.yaml section module shares: the frozen Struct base every section inherits, and the
checks of URLs, egress settings and listen addresses (each failure names the file, the key and what was
expected). Shapes and checks only; resolves nothing and opens nothing.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

from msgspec import Struct

from gateway.config.egress import Egress
from gateway.protocol.errors import ConfigError


class Frozen(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A routing.yaml section: immutable once loaded, and an unknown key is an error."""


_USERINFO: Final = re.compile(r"^((?:[^/?#]*?//)?)[^/?#]*@")


def redact_url(url: str) -> str:
    """`url` with any userinfo (`user:password@`) replaced, for error messages; works on text
    that does not parse as a URL too."""
    return _USERINFO.sub(r"\1***@", url)


def is_http_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def check_url(url: str, file: str, key: str) -> None:
    if not is_http_url(url):
        raise ConfigError(file, key, f"an absolute http(s) URL (got {redact_url(url)!r})")


def check_origin_url(url: str, file: str, key: str) -> None:
    """`scheme://host[:port]`: an http(s) URL without path, query, fragment or userinfo."""
    check_url(url, file, key)
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(file, key, "an http(s) URL of a host only (no path, query, fragment or userinfo)")


def url_on_loopback(url: str) -> bool:
    """Whether a URL's host is a loopback address (`localhost`, 127.0.0.0/8, ::1)."""
    return is_loopback(urlsplit(url).hostname or "")


def check_egress(spec: Egress, file: str, key: str) -> None:
    if spec.proxy is not None and spec.proxy != "none":
        check_url(spec.proxy, file, f"{key}.proxy")
    if spec.client_key is not None and spec.client_cert is None:
        raise ConfigError(file, f"{key}.client_cert", "a certificate to go with `client_key`")


def check_listen(listen: str, file: str, key: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(file, key, f"HOST:PORT (got {listen!r})")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether a listen host is a loopback address (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
