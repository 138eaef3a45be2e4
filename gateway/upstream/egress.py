"""How the gateway reaches out: TLS trust and client certificates, and which proxy to use.
Built once per destination at provision time; nothing here runs per request.

Owns turning a destination's settings (`proxy`, `ca_bundle`, `client_cert`,
`client_key` in routing.yaml, or the standard `HTTPS_PROXY`/`HTTP_PROXY`/
`NO_PROXY` variables) into what an HTTP request needs; the proxy choice itself is
`gateway.config.proxy`'s, which the relay shares.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.config.egress import Egress as EgressSpec
from gateway.config.proxy import choose_proxy
from gateway.protocol.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Egress:
    """Per-request settings for one destination: `ssl=` and `proxy=` for aiohttp."""

    ssl: ssl.SSLContext | bool
    proxy: str | None


def _path(value: str, base: Path) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def tls_context(spec: EgressSpec, *, file: str, key: str, base: Path) -> ssl.SSLContext | bool:
    """The system trust roots plus `ca_bundle`, and the client certificate for mTLS."""
    if spec.ca_bundle is None and spec.client_cert is None:
        return True
    context = ssl.create_default_context()
    try:
        if spec.ca_bundle is not None:
            context.load_verify_locations(cafile=_path(spec.ca_bundle, base))
        if spec.client_cert is not None:
            keyfile = _path(spec.client_key, base) if spec.client_key else None
            context.load_cert_chain(_path(spec.client_cert, base), keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(file, key, f"readable PEM certificate files ({exc.strerror or exc})") from None
    return context


def proxy_for(url: str, spec: EgressSpec) -> str | None:
    """The destination's `proxy`, else the environment's for this URL (`gateway.config.proxy`)."""
    return choose_proxy(url, spec.proxy)


def egress(url: str, spec: EgressSpec, *, file: str, key: str, base: Path) -> Egress:
    return Egress(tls_context(spec, file=file, key=key, base=base), proxy_for(url, spec))
