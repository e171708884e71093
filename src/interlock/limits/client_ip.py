"""The caller's IP address, as far as it can be trusted.

The TCP peer is the only address nobody can forge. ``X-Forwarded-For`` is a list that every
proxy on the way appends the address it saw to, so its rightmost entries come from our own
proxies and its leftmost from whoever sent the request, which may be anyone. It is therefore
read only when the peer is one of the configured ``trusted_proxies``, and then right to left:
each entry that is itself a trusted proxy is a hop to walk past; the first one that is not is
the client (what our outermost proxy saw). An entry that is not an address (``unknown``, a
name, garbage) ends the walk at the last trusted hop: nothing left of it can be believed.

An untrusted peer's ``X-Forwarded-For`` is ignored entirely, so spoofing it changes nothing.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Reported for a peer that has no IP address (a Unix socket): all such callers share one
# per-IP bucket.
UNKNOWN = "unknown"
# Longer headers are not walked: no real chain of proxies is this long.
MAX_HOPS = 64
IPV6_PREFIX = 64  # one IPv6 client usually holds a whole /64


def parse_address(text: str) -> IPAddress | None:
    """The address in one ``X-Forwarded-For`` entry or peer string; None if there is none.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443`` and a zone
    (``fe80::1%eth0``, dropped). An IPv4 address mapped into IPv6 (``::ffff:1.2.3.4``) is the
    IPv4 address, so one client is one bucket however a dual-stack socket reports it.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from ``10.0.0.0/8``-style entries (a bare address is a single host).

    Raises ``ValueError`` naming the first bad entry (including one with host bits set, such
    as ``10.0.0.1/8``, which is almost always a typo).
    """
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network ({exc})") from None
    return tuple(networks)


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def _entries(x_forwarded_for: str | Sequence[str] | None) -> list[str]:
    if x_forwarded_for is None:
        return []
    # Several X-Forwarded-For headers are one list, in order (RFC 9110, 5.3).
    joined = x_forwarded_for if isinstance(x_forwarded_for, str) else ",".join(x_forwarded_for)
    entries = joined.split(",")
    return entries[-MAX_HOPS:]


def client_ip(
    peer: str | None,
    x_forwarded_for: str | Sequence[str] | None,
    trusted_proxies: Sequence[IPNetwork],
) -> str:
    """The client's IP address, normalised (see the module docstring).

    ``peer`` is the TCP peer's host (ASGI ``scope["client"][0]``; None for a Unix socket),
    ``x_forwarded_for`` the header's value, or each of its values if it came more than once.
    Returns the address as text (IPv6 compressed, IPv4-mapped IPv6 as IPv4), or ``UNKNOWN``
    when the peer has no IP address.
    """
    address = parse_address(peer) if peer is not None else None
    if address is None:
        return UNKNOWN
    if not trusted_proxies or not _trusted(address, trusted_proxies):
        return str(address)
    for entry in reversed(_entries(x_forwarded_for)):
        hop = parse_address(entry)
        if hop is None:
            break  # unparseable: trust nothing to its left
        address = hop
        if not _trusted(hop, trusted_proxies):
            break
    return str(address)


@functools.lru_cache(maxsize=4096)
def ip_bucket(ip: str) -> str:
    """The bucket name of a client address: the address itself, or its /64 for IPv6 (a
    client that holds a /64 must not get 2**64 buckets). Cached: the same clients come back."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return UNKNOWN
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


@functools.lru_cache(maxsize=4096)
def peer_address(peer: str) -> str:
    """A TCP peer's address, normalised (cached: the same peers come back)."""
    return client_ip(peer, None, ())
