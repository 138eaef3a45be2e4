"""Which forward proxy one outbound URL goes through: a `proxy` setting (an http(s) proxy URL, or `none`
for a direct connection) or, without one, HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
Shared by the gateway's destinations and the relay's JWKS fetches; it chooses, and opens nothing.
"""

from __future__ import annotations

import urllib.request
from typing import Final
from urllib.parse import urlsplit

from gateway.config.base import is_http_url

DIRECT: Final = "none"
"""The setting that means a direct connection, whatever the environment says."""


def valid_proxy_setting(value: str) -> bool:
    """Whether `value` may be a `proxy` setting: an absolute http(s) URL, or `none`."""
    return value == DIRECT or is_http_url(value)


def choose_proxy(url: str, setting: str | None) -> str | None:
    """The proxy to reach `url` through (None: directly): the explicit setting, else the environment's
    for this URL's scheme unless NO_PROXY exempts its host."""
    if setting is not None:
        return None if setting == DIRECT else setting
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if proxy is None or not parts.hostname:
        return None
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return None if urllib.request.proxy_bypass(host) else proxy
