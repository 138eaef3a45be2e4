"""routing.yaml's egress settings (`proxy`, `ca_bundle`, `client_cert`, `client_key`) as one Struct that every
outbound destination's section inherits: the control plane, the token endpoint, HTTP servers, budget webhooks.
Declares the keys only (routing.py checks them); TLS contexts: `upstream.egress`; proxy choice: `config.proxy`.
"""

from __future__ import annotations

from msgspec import Struct


class Egress(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach one destination: proxy, extra trust roots, client certificate (mTLS)."""

    proxy: str | None = None
    """An http(s) proxy URL; `none` for a direct connection; absent: HTTPS_PROXY/HTTP_PROXY/NO_PROXY."""
    ca_bundle: str | None = None
    """PEM file of CA certificates added to the system roots (TLS-inspecting middleboxes)."""
    client_cert: str | None = None
    client_key: str | None = None
