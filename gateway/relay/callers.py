"""Whose budget a request spends: its TCP peer's address, or, when that peer is one of the configured
trusted proxies (`identity.trusted_proxies`), the caller those proxies name in `X-Forwarded-For`.
Sans-IO (addresses and header values in, a key out); it never believes an address no trusted proxy wrote.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

X_FORWARDED_FOR: Final = "X-Forwarded-For"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` is believed: IP addresses or CIDR networks (validated by
    the config: `gateway.relay.config.IdentitySpec`). None: the header is never read."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(entry) for entry in entries)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def caller(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The caller's address. `peer` unless it is a trusted proxy; then, walking `X-Forwarded-For` (every
        value of the header, joined: comma-separated addresses, the nearest hop last) from the right, the
        first address that is not itself trusted, or the left-most when all are. An entry that is not an
        IP address (a port, a name, nothing) ends the walk with `peer`: garbage is never believed, and
        what a client wrote left of the proxies' own entries is never reached."""
        if not self._networks or not peer:
            return peer
        peer_address = _address(peer)
        if peer_address is None or not self.trusts(peer_address):
            return peer
        found: Address | None = None
        for entry in reversed([entry for value in forwarded_for for entry in value.split(",")]):
            address = _address(entry.strip())
            if address is None:
                return peer
            found = address
            if not self.trusts(address):
                break
        return peer if found is None else str(found)


def _address(text: str) -> Address | None:
    """`text` as an IP address (an IPv4-mapped IPv6 one as IPv4); None when it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def caller_key(remote: str | None) -> str:
    """The budget key of a caller's address (the peer's, or `TrustedProxies.caller`'s): an IPv4-mapped
    one as IPv4, an IPv6 one as its /64, which one host usually holds whole."""
    if not remote:
        return ""
    address = _address(remote)
    if address is None:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))  # any zone id dropped too
    return str(address)
