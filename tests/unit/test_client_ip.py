"""The client's IP: X-Forwarded-For is believed only from trusted proxies, right to left."""

from __future__ import annotations

import re

import pytest

from interlock.limits.client_ip import UNKNOWN, client_ip, ip_bucket, parse_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_ip("203.0.113.9", None, ()) == "203.0.113.9"
    assert client_ip("203.0.113.9", "1.2.3.4", ()) == "203.0.113.9"


@pytest.mark.parametrize(
    "spoofed",
    ["1.2.3.4", "10.0.0.1", "1.2.3.4, 10.0.0.2", "unknown", "", "::1", "1.2.3.4:80, 5.6.7.8"],
)
def test_an_untrusted_peer_cannot_change_its_ip_with_the_header(spoofed: str) -> None:
    assert client_ip("203.0.113.9", spoofed, PROXIES) == "203.0.113.9"


def test_a_trusted_proxy_names_the_client() -> None:
    assert client_ip("10.1.2.3", "198.51.100.4", PROXIES) == "198.51.100.4"
    # No header from a trusted proxy: the proxy is all we know.
    assert client_ip("10.1.2.3", None, PROXIES) == "10.1.2.3"


def test_the_chain_is_walked_right_to_left_past_trusted_hops_only() -> None:
    # client-written junk, the real client, then two of our proxies
    chain = "6.6.6.6, 198.51.100.4, 10.9.9.9, 192.168.1.7"
    assert client_ip("10.0.0.1", chain, PROXIES) == "198.51.100.4"
    # the client prepending a trusted-looking address does not help it either
    assert client_ip("10.0.0.1", "10.5.5.5, 198.51.100.4", PROXIES) == "198.51.100.4"


def test_a_chain_of_only_trusted_hops_gives_the_leftmost() -> None:
    assert client_ip("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


def test_an_unparseable_entry_stops_the_walk_at_the_last_trusted_hop() -> None:
    assert client_ip("10.0.0.1", "198.51.100.4, unknown", PROXIES) == "10.0.0.1"
    assert client_ip("10.0.0.1", "198.51.100.4, garbage, 10.0.0.2", PROXIES) == "10.0.0.2"


def test_several_headers_form_one_list() -> None:
    assert client_ip("10.0.0.1", ["6.6.6.6", "198.51.100.4, 10.0.0.2"], PROXIES) == "198.51.100.4"


def test_ports_brackets_zones_and_mapped_addresses_are_normalised() -> None:
    assert client_ip("10.0.0.1", "198.51.100.4:5555", PROXIES) == "198.51.100.4"
    assert client_ip("10.0.0.1", "[2001:DB8::1]:443", PROXIES) == "2001:db8::1"
    assert client_ip("fd00::5", "2001:db8:0:0::7", PROXIES) == "2001:db8::7"
    assert client_ip("::ffff:10.0.0.1", "198.51.100.4", PROXIES) == "198.51.100.4"
    assert client_ip("::ffff:203.0.113.9", None, ()) == "203.0.113.9"
    assert parse_address("fe80::1%eth0") == parse_address("fe80::1")
    assert parse_address("not-an-ip") is None


def test_a_peer_without_an_address_is_unknown() -> None:
    assert client_ip(None, "1.2.3.4", PROXIES) == UNKNOWN
    assert client_ip("unix-socket", None, ()) == UNKNOWN


def test_a_very_long_header_is_not_walked_past_its_last_hops() -> None:
    chain = ", ".join(["10.0.0.9"] * 10_000)
    assert client_ip("10.0.0.1", chain, PROXIES) == "10.0.0.9"


def test_proxy_networks_are_checked() -> None:
    with pytest.raises(ValueError, match="host bits set"):
        parse_networks(["10.0.0.1/8"])
    with pytest.raises(ValueError, match=re.escape("'proxy.local'")):
        parse_networks(["proxy.local"])


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    assert ip_bucket("2001:db8:1:2:aaaa::1") == ip_bucket("2001:db8:1:2:bbbb::2")
    assert ip_bucket("2001:db8:1:2::1") != ip_bucket("2001:db8:1:3::1")
    assert ip_bucket("203.0.113.9") == "203.0.113.9"
    assert ip_bucket(UNKNOWN) == UNKNOWN
