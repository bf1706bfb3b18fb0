"""DATAFERRY_DATASOURCE_ALLOWED_NETWORKS: its syntax (networks, ports, IPv6 in brackets), the
refusal of bad entries at start-up, and what an allow-list opens: only what it lists, and never
unspecified or multicast addresses.
"""

from __future__ import annotations

import pytest

from shared import host_resolution
from shared.egress import NetworkRule, check_destination, parse_allowed_networks
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.support.egress import policy_settings, refusal
from tests.support.processes import LOOPBACK_NETWORKS

# ------------------------------------------------------------------ the setting's syntax


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("", ()),
        (" , ", ()),
        ("10.0.0.0/8", (("10.0.0.0/8", None),)),
        ("127.0.0.1/32:5432", (("127.0.0.1/32", (5432, 5432)),)),
        ("10.40.0.7:3306-3307", (("10.40.0.7/32", (3306, 3307)),)),
        ("[::1]/128:5432", (("::1/128", (5432, 5432)),)),
        ("[fd00::/8]:5432-5439", (("fd00::/8", (5432, 5439)),)),
        ("fd00::/8", (("fd00::/8", None),)),
        ("[fd00::/8]", (("fd00::/8", None),)),
        ("0.0.0.0/0", (("0.0.0.0/0", None),)),
        (
            " 10.20.0.0/16 , 10.30.0.0/24:5432,::1/128",
            (("10.20.0.0/16", None), ("10.30.0.0/24", (5432, 5432)), ("::1/128", None)),
        ),
    ],
)
def test_allowed_networks_parse(text, rules):
    parsed = parse_allowed_networks(text)
    assert [(str(rule.network), rule.ports) for rule in parsed] == list(rules)


@pytest.mark.parametrize(
    "rule", ["10.0.0.0/8", "10.0.0.0/8:5432", "10.0.0.0/8:1-1024", "[fd00::/8]:5432", "::1/128"]
)
def test_a_rule_prints_as_it_parses(rule):
    (parsed,) = parse_allowed_networks(rule)
    assert parse_allowed_networks(str(parsed)) == (parsed,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "host bits"),
        ("db.internal", "not an IP address"),
        ("db.internal:5432", "not an IP address"),
        ("10.0.0.0/33", "not an IP address"),
        ("10.0.0.0/8:", "port must be a number"),
        ("10.0.0.0/8:abc", "port must be a number"),
        ("10.0.0.0/8:0", "1-65535"),
        ("10.0.0.0/8:65536", "1-65535"),
        ("10.0.0.0/8:5439-5432", "lower one first"),
        ("[fd00::/8", "in brackets"),
        ("[fd00::/8]5432", "in brackets"),
        ("[fd00::/8]:", "in brackets"),
        ("::ffff:10.0.0.0/104", "IPv4 form"),
        ("224.0.0.0/4", "multicast"),
        ("0.0.0.0/8", "unspecified"),
        ("ff00::/8:5432", "not an IP address"),
    ],
)
def test_bad_allowed_networks_are_refused_naming_the_entry(text, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_allowed_networks(f"192.168.0.0/16,{text}")
    assert repr(text) in str(caught.value)


def test_a_bad_setting_stops_start_up_naming_the_variable():
    with pytest.raises(ConfigurationError, match="DATAFERRY_DATASOURCE_ALLOWED_NETWORKS"):
        Settings.from_env({"DATAFERRY_DATASOURCE_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"})
    settings = Settings.from_env({"DATAFERRY_DATASOURCE_ALLOWED_NETWORKS": "10.0.0.0/8:5432"})
    assert settings.allowed_networks == parse_allowed_networks("10.0.0.0/8:5432")


def test_rule_opens_only_its_ports_and_family():
    (rule,) = parse_allowed_networks("10.0.0.0/8:5432-5433")
    assert isinstance(rule, NetworkRule)
    address = host_resolution.resolve("10.1.2.3", 1)[0]
    assert rule.permits(address, 5432) and rule.permits(address, 5433)
    assert not rule.permits(address, 5431) and not rule.permits(address, 5434)
    assert not rule.permits(host_resolution.resolve("11.0.0.1", 1)[0], 5432)
    assert not rule.permits(host_resolution.resolve("::a00:1", 1)[0], 5432)


# ------------------------------------------------------------------ the allow-list


def test_allowed_loopback_is_returned():
    settings = policy_settings(datasource_allowed_networks=LOOPBACK_NETWORKS)
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"
    assert check_destination("::1", 5432, settings) == "::1"
    assert check_destination("localhost", 5999, settings) in ("127.0.0.1", "::1")


def test_an_entry_opens_only_what_it_lists():
    settings = policy_settings(datasource_allowed_networks="127.0.0.1/32:5432,10.0.0.0/8:3306-3307")
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"
    assert check_destination("10.9.8.7", 3307, settings) == "10.9.8.7"
    for host, port in [("127.0.0.1", 5433), ("127.0.0.2", 5432), ("::1", 5432), ("10.9.8.7", 22)]:
        assert refusal(host, port, settings).code == "destination_not_allowed"
    assert refusal("169.254.169.254", 80, settings).code == "destination_not_allowed"
    assert refusal("192.168.0.1", 5432, settings).code == "destination_not_allowed"


def test_allowing_everything_still_refuses_unspecified_and_multicast():
    settings = policy_settings(datasource_allowed_networks="0.0.0.0/0,::/0")
    assert check_destination("169.254.169.254", 80, settings) == "169.254.169.254"
    for host in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "::ffff:0.0.0.0"):  # noqa: S104
        assert refusal(host, 5432, settings).code == "destination_not_allowed"
