"""The egress policy with no allow-list: every non-public address is refused (IPv4-mapped IPv6
counting as IPv4), odd literals and malformed hosts before any lookup; a host name is resolved
once, every address it resolves to must be allowed, and the address checked is returned.
"""

from __future__ import annotations

import socket
import threading

import pytest

from shared import host_resolution
from shared.egress import check_destination
from shared.errors import DestinationNotAllowed, HostNotFound
from tests.support.egress import policy_settings, refusal
from tests.support.processes import LOOPBACK_NETWORKS

# ------------------------------------------------------------------ the default policy


@pytest.mark.parametrize(
    ("host", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.100.100.200", "CGNAT"),  # Alibaba Cloud's metadata service
        ("0.0.0.0", "unspecified"),  # noqa: S104 - a destination under test, nothing binds
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.0.8", "IETF"),
        ("192.0.2.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("2001:db8::1", "documentation"),
        ("2001::1", "Teredo"),
        ("100::1", "reserved"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b:1::1", "NAT64"),
    ],
)
def test_non_public_addresses_are_refused_by_default(host, word):
    error = refusal(host, 5432, policy_settings())
    assert isinstance(error, DestinationNotAllowed)
    assert error.code == "destination_not_allowed"
    assert word in error.detail


@pytest.mark.parametrize(
    ("host", "word"),
    [
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:192.168.0.1", "private"),
        ("::ffff:100.64.0.1", "CGNAT"),
        ("::ffff:0.0.0.0", "unspecified"),
    ],
)
def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address(host, word):
    error = refusal(host, 5432, policy_settings())
    assert isinstance(error, DestinationNotAllowed)
    assert word in error.detail


@pytest.mark.parametrize(
    ("host", "word"),
    [
        ("64:ff9b::", "unspecified"),  # NAT64 of 0.0.0.0
        ("2002::", "unspecified"),  # 6to4 of 0.0.0.0
        ("64:ff9b::e000:1", "multicast"),  # NAT64 of 224.0.0.1
        ("2002:e000:1::1", "multicast"),
        ("64:ff9b::ffff:ffff", "broadcast"),
    ],
)
def test_an_address_leading_to_one_never_allowed_is_never_allowed(host, word):
    """Even where the allow-list opens the NAT64 and 6to4 ranges they sit in."""
    for allowed in ("", "64:ff9b::/96,2002::/16"):
        error = refusal(host, 5432, policy_settings(datasource_allowed_networks=allowed))
        assert isinstance(error, DestinationNotAllowed)
        assert word in error.detail


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("8.8.8.8", "8.8.8.8"),
        ("172.32.0.1", "172.32.0.1"),
        ("100.128.0.1", "100.128.0.1"),
        ("2606:4700:4700::1111", "2606:4700:4700::1111"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("64:ff9b::808:808", "64:ff9b::808:808"),
    ],
)
def test_public_addresses_are_allowed_and_returned_canonical(host, address):
    assert check_destination(host, 5432, policy_settings()) == address


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0x7f.1",
        "0x7f.0.0.1",
        "127.1",
        "127.0.1",
        "127.000.000.001",
        "127.0.0.1.",
        "1.2.3.4.5",
        "017700000001",
        "internal.0x10",
    ],
)
@pytest.mark.parametrize("networks", ["", LOOPBACK_NETWORKS])
def test_odd_ipv4_literals_are_refused_before_any_lookup(host, networks, resolver):
    error = refusal(host, 5432, policy_settings(datasource_allowed_networks=networks))
    assert error.code == "invalid_host"
    assert "four decimal numbers" in error.detail
    assert resolver.calls == []


@pytest.mark.parametrize(
    "host",
    [
        "",
        " 10.0.0.1",
        "db.example.com:5432",
        "postgres://db.example.com",
        "db.example.com/x",
        "fe80::1%eth0",
        "db\x00.example.com",
        "db..example.com",
        "-db.example.com",
        "a" * 64 + ".example.com",
        "x." * 127 + "com",
        "dätenbank.example",
        "[1.1.1.1]",  # brackets hold IPv6 addresses only
        "[127.0.0.1]",
    ],
)
def test_malformed_hosts_are_422_without_a_lookup(host, resolver):
    error = refusal(host, 5432, policy_settings())
    assert error.code == "invalid_host"
    assert resolver.calls == []


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_range_is_refused(port):
    assert refusal("8.8.8.8", port, policy_settings()).code == "invalid_port"


# ------------------------------------------------------------------ host names


def test_a_name_resolving_to_loopback_is_refused_without_telling_the_address():
    error = refusal("localhost", 5432, policy_settings())
    assert isinstance(error, DestinationNotAllowed)
    assert "loopback" in error.detail
    assert "127.0.0.1" not in error.detail and "::1" not in error.detail


def test_every_resolved_address_must_be_allowed(resolver):
    resolver["mixed.example"] = ["8.8.8.8", "2606:4700:4700::1111", "10.0.0.7"]
    resolver["public.example"] = ["8.8.4.4", "2606:4700:4700::1111"]
    assert refusal("mixed.example", 5432, policy_settings()).code == "destination_not_allowed"
    assert check_destination("public.example", 5432, policy_settings()) == "8.8.4.4"


def test_a_resolved_ipv4_mapped_address_counts_as_ipv4(resolver):
    resolver["mapped.example"] = ["::ffff:169.254.169.254"]
    assert "link-local" in refusal("mapped.example", 80, policy_settings()).detail


def test_a_name_is_resolved_once_and_the_address_returned(resolver):
    """DNS rebinding: the caller connects to what was checked, so a second, different answer
    for the same name never matters. One lookup per check, and an address comes back."""
    resolver["rebind.example"] = ["8.8.8.8"]
    assert check_destination("rebind.example", 5432, policy_settings()) == "8.8.8.8"
    assert resolver.calls == ["rebind.example"]
    resolver["rebind.example"] = ["127.0.0.1"]
    assert refusal("rebind.example", 5432, policy_settings()).code == "destination_not_allowed"


def test_a_trailing_dot_name_is_looked_up_without_it(resolver):
    resolver["db.example"] = ["8.8.8.8"]
    assert check_destination("db.example.", 5432, policy_settings()) == "8.8.8.8"


def test_an_unknown_name_is_host_not_found(resolver):
    error = refusal("nowhere.example", 5432, policy_settings())
    assert isinstance(error, HostNotFound) and error.code == "host_not_found"


def test_a_lookup_that_hangs_is_given_up(monkeypatch):
    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "timeout")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(host_resolution, "RESOLVE_TIMEOUT_SECONDS", 0.05)
    try:
        error = refusal("slow.example", 5432, policy_settings())
    finally:
        release.set()
    assert isinstance(error, HostNotFound)
    assert "did not resolve within" in error.detail
