"""The egress policy (shared.egress): where a datasource may make the servers connect."""

from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy.engine import make_url

from data_server.engine import QueryFailed
from data_server.worker import Worker
from shared import egress, lifecycle
from shared.egress import NetworkRule, check_destination, parse_allowed_networks
from shared.errors import (
    ConfigurationError,
    DestinationNotAllowed,
    HostNotFound,
    ServiceUnavailable,
    Unprocessable,
)
from shared.settings import Settings
from tests.support.factories import Api, resource
from tests.support.processes import LOOPBACK_NETWORKS

POINTER = "/data/attributes/host"


def _settings(**overrides: str) -> Settings:
    """Settings with an SQLite metadata DB (no network service of ours) unless overridden."""
    return Settings(**overrides)


def _refusal(host: str, port: int, settings: Settings) -> Unprocessable:
    with pytest.raises(Unprocessable) as caught:
        check_destination(host, port, settings, pointer=POINTER)
    assert caught.value.pointer == POINTER
    assert caught.value.status == 422 or isinstance(caught.value, ServiceUnavailable)
    return caught.value


@pytest.fixture
def resolver(monkeypatch):
    """Replace DNS: ``resolver[name] = [addresses]``; ``resolver.calls`` counts lookups."""

    class FakeResolver(dict):
        calls: list[str]

        def lookup(self, name, port, *args, **kwargs):
            self.calls.append(name)
            if name not in self:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, port, 0, 0) if ":" in address else (address, port),
                )
                for address in self[name]
            ]

    fake = FakeResolver()
    fake.calls = []
    monkeypatch.setattr(socket, "getaddrinfo", fake.lookup)
    return fake


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
    address = egress.resolve("10.1.2.3", 1)[0]
    assert rule.permits(address, 5432) and rule.permits(address, 5433)
    assert not rule.permits(address, 5431) and not rule.permits(address, 5434)
    assert not rule.permits(egress.resolve("11.0.0.1", 1)[0], 5432)
    assert not rule.permits(egress.resolve("::a00:1", 1)[0], 5432)


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
    error = _refusal(host, 5432, _settings())
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
    error = _refusal(host, 5432, _settings())
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
    assert check_destination(host, 5432, _settings()) == address


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
    error = _refusal(host, 5432, _settings(datasource_allowed_networks=networks))
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
    ],
)
def test_malformed_hosts_are_422_without_a_lookup(host, resolver):
    error = _refusal(host, 5432, _settings())
    assert error.code == "invalid_host"
    assert resolver.calls == []


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_range_is_refused(port):
    assert _refusal("8.8.8.8", port, _settings()).code == "invalid_port"


# ------------------------------------------------------------------ host names


def test_a_name_resolving_to_loopback_is_refused_without_telling_the_address():
    error = _refusal("localhost", 5432, _settings())
    assert isinstance(error, DestinationNotAllowed)
    assert "loopback" in error.detail
    assert "127.0.0.1" not in error.detail and "::1" not in error.detail


def test_every_resolved_address_must_be_allowed(resolver):
    resolver["mixed.example"] = ["8.8.8.8", "2606:4700:4700::1111", "10.0.0.7"]
    resolver["public.example"] = ["8.8.4.4", "2606:4700:4700::1111"]
    assert _refusal("mixed.example", 5432, _settings()).code == "destination_not_allowed"
    assert check_destination("public.example", 5432, _settings()) == "8.8.4.4"


def test_a_resolved_ipv4_mapped_address_counts_as_ipv4(resolver):
    resolver["mapped.example"] = ["::ffff:169.254.169.254"]
    assert "link-local" in _refusal("mapped.example", 80, _settings()).detail


def test_a_name_is_resolved_once_and_the_address_returned(resolver):
    """DNS rebinding: the caller connects to what was checked, so a second, different answer
    for the same name never matters. One lookup per check, and an address comes back."""
    resolver["rebind.example"] = ["8.8.8.8"]
    assert check_destination("rebind.example", 5432, _settings()) == "8.8.8.8"
    assert resolver.calls == ["rebind.example"]
    resolver["rebind.example"] = ["127.0.0.1"]
    assert _refusal("rebind.example", 5432, _settings()).code == "destination_not_allowed"


def test_a_trailing_dot_name_is_looked_up_without_it(resolver):
    resolver["db.example"] = ["8.8.8.8"]
    assert check_destination("db.example.", 5432, _settings()) == "8.8.8.8"


def test_an_unknown_name_is_host_not_found(resolver):
    error = _refusal("nowhere.example", 5432, _settings())
    assert isinstance(error, HostNotFound) and error.code == "host_not_found"


def test_a_lookup_that_hangs_is_given_up(monkeypatch):
    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "timeout")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(egress, "RESOLVE_TIMEOUT_SECONDS", 0.05)
    try:
        error = _refusal("slow.example", 5432, _settings())
    finally:
        release.set()
    assert isinstance(error, HostNotFound)
    assert "did not resolve within" in error.detail


# ------------------------------------------------------------------ the allow-list


def test_allowed_loopback_is_returned():
    settings = _settings(datasource_allowed_networks=LOOPBACK_NETWORKS)
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"
    assert check_destination("::1", 5432, settings) == "::1"
    assert check_destination("localhost", 5999, settings) in ("127.0.0.1", "::1")


def test_an_entry_opens_only_what_it_lists():
    settings = _settings(datasource_allowed_networks="127.0.0.1/32:5432,10.0.0.0/8:3306-3307")
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"
    assert check_destination("10.9.8.7", 3307, settings) == "10.9.8.7"
    for host, port in [("127.0.0.1", 5433), ("127.0.0.2", 5432), ("::1", 5432), ("10.9.8.7", 22)]:
        assert _refusal(host, port, settings).code == "destination_not_allowed"
    assert _refusal("169.254.169.254", 80, settings).code == "destination_not_allowed"
    assert _refusal("192.168.0.1", 5432, settings).code == "destination_not_allowed"


def test_allowing_everything_still_refuses_unspecified_and_multicast():
    settings = _settings(datasource_allowed_networks="0.0.0.0/0,::/0")
    assert check_destination("169.254.169.254", 80, settings) == "169.254.169.254"
    for host in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "::ffff:0.0.0.0"):  # noqa: S104
        assert _refusal(host, 5432, settings).code == "destination_not_allowed"


# ------------------------------------------------------------------ the region's own services


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql+psycopg://postgres:secret@127.0.0.1:5432/meta",
        "postgresql+psycopg://postgres@127.0.0.1/meta",  # default port
        "postgresql+psycopg://postgres@localhost:5432/meta",
        "postgresql+psycopg://postgres@[::1]:5432/meta",
        "postgresql+psycopg:///meta?host=127.0.0.1:5432",
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost"])
def test_the_metadata_database_is_refused_even_with_loopback_allowed(database_url, host):
    settings = _settings(database_url=database_url, datasource_allowed_networks=LOOPBACK_NETWORKS)
    error = _refusal(host, 5432, settings)
    assert isinstance(error, DestinationNotAllowed)
    assert "own services" in error.detail
    assert check_destination(host, 5433, settings) in ("127.0.0.1", "127.0.0.2", "::1")


def test_the_metadata_database_is_refused_even_when_listed_by_port():
    settings = _settings(
        database_url="postgresql+psycopg://postgres@10.0.0.5:5432/meta",
        datasource_allowed_networks="10.0.0.5/32:5432,10.0.0.0/24",
    )
    assert "own services" in _refusal("10.0.0.5", 5432, settings).detail
    assert "own services" in _refusal("::ffff:10.0.0.5", 5432, settings).detail
    assert check_destination("10.0.0.6", 5432, settings) == "10.0.0.6"
    assert check_destination("10.0.0.5", 5433, settings) == "10.0.0.5"


def test_a_metadata_database_by_name_is_refused_at_its_addresses(resolver):
    resolver["meta.internal"] = ["10.0.0.5"]
    resolver["alias.example"] = ["10.0.0.5"]
    settings = _settings(
        database_url="mysql://dataferry@meta.internal/meta",
        datasource_allowed_networks="10.0.0.0/8",
    )
    assert "own services" in _refusal("alias.example", 3306, settings).detail
    assert check_destination("alias.example", 5432, settings) == "10.0.0.5"


def test_an_unresolvable_metadata_database_name_fails_closed(resolver):
    resolver["db.example"] = ["10.0.0.9"]
    settings = _settings(
        database_url="postgresql+psycopg://u@meta.internal:5432/meta",
        datasource_allowed_networks="10.0.0.0/8",
    )
    with pytest.raises(ServiceUnavailable) as caught:
        check_destination("db.example", 5432, settings, pointer=POINTER)
    assert caught.value.code == "egress_policy_unavailable"
    assert check_destination("db.example", 5433, settings) == "10.0.0.9"


@pytest.mark.parametrize(
    "redis_url",
    ["redis://127.0.0.1:6379/0", "redis://:secret@localhost/0", "rediss://[::1]:6379"],
)
def test_the_rate_limit_redis_is_refused_even_with_loopback_allowed(redis_url):
    settings = _settings(redis_url=redis_url, datasource_allowed_networks=LOOPBACK_NETWORKS)
    for host in ("127.0.0.1", "::1", "localhost"):
        assert "own services" in _refusal(host, 6379, settings).detail
    assert check_destination("127.0.0.1", 6380, settings) == "127.0.0.1"


def test_an_sqlite_metadata_database_reserves_no_address():
    settings = _settings(datasource_allowed_networks=LOOPBACK_NETWORKS)
    assert egress.own_service_endpoints(settings) == []
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"


# ------------------------------------------------------------------ at the API, and at connect time


def _postgres_attributes(**overrides):
    attributes = {
        "name": "Warehouse",
        "database_type": "postgres",
        "host": "db.example",
        "port": 5432,
        "database": "warehouse",
        "username": "reader",
        "password": "pw-never-stored",
        "require_ssl": False,
    }
    attributes.update(overrides)
    return resource("datasources", **attributes)


def _datasource_count(api, key) -> int:
    return api.get("/datasources", key).json()["meta"]["total"]


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("169.254.169.254", "destination_not_allowed"),
        ("10.0.0.5", "destination_not_allowed"),
        ("::ffff:169.254.169.254", "destination_not_allowed"),
        ("0x7f.1", "invalid_host"),
        ("db.invalid", "host_not_found"),
    ],
)
def test_create_refuses_a_denied_host_with_a_pointer_and_stores_nothing(api, host, code):
    org = api.create_org()
    response = api.post("/datasources", org.key, _postgres_attributes(host=host))
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert (error["code"], error["source"]) == (code, {"pointer": POINTER})
    assert _datasource_count(api, org.key) == 1  # the sample datasource only


def test_loopback_is_refused_at_the_api_unless_the_operator_allows_it(settings):
    with Api.start(settings.with_overrides(datasource_allowed_networks="")) as default_api:
        org = default_api.create_org()
        for host in ("127.0.0.1", "localhost", "::1"):
            response = default_api.post("/datasources", org.key, _postgres_attributes(host=host))
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["code"] == "destination_not_allowed"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_update_rechecks_a_changed_host_and_keeps_the_old_one(api):
    org = api.create_org()
    created = api.post("/datasources", org.key, _postgres_attributes(host="127.0.0.1"))
    assert created.status_code == 201, created.text
    id_ = created.json()["data"]["id"]
    path = f"/datasources/{id_}"
    response = api.patch(path, org.key, resource("datasources", id_, host="169.254.169.254"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["source"] == {"pointer": POINTER}
    assert api.get(path, org.key).json()["data"]["attributes"]["host"] == "127.0.0.1"
    moved = api.patch(path, org.key, resource("datasources", id_, host="::1", port=5433))
    assert moved.status_code == 200, moved.text


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_metadata_database_is_refused_at_the_api(api, settings):
    """The suite allows loopback; the metadata DB (PostgreSQL on loopback here) stays refused."""
    url = make_url(settings.database_url)
    org = api.create_org()
    for host in (url.host, "localhost", "127.0.0.2"):
        body = _postgres_attributes(host=host, port=url.port or 5432)
        response = api.post("/datasources", org.key, body)
        assert response.status_code == 422, response.text
        assert "own services" in response.json()["errors"][0]["detail"]
    assert _datasource_count(api, org.key) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_narrower_policy_does_not_block_unrelated_updates(api, settings):
    org = api.create_org()
    created = api.post("/datasources", org.key, _postgres_attributes(host="127.0.0.1"))
    assert created.status_code == 201, created.text
    id_ = created.json()["data"]["id"]
    with Api.start(settings.with_overrides(datasource_allowed_networks="")) as narrowed:
        path = f"/datasources/{id_}"
        renamed = narrowed.patch(path, org.key, resource("datasources", id_, name="Renamed"))
        assert renamed.status_code == 200, renamed.text
        moved = narrowed.patch(path, org.key, resource("datasources", id_, port=5433))
        assert moved.status_code == 422, moved.text


def _postgres_claim(**overrides: object) -> lifecycle.Claim:
    values: dict = {
        "execution_id": "e",
        "attempt": 1,
        "organization_id": "o",
        "execution_type": "sql_query",
        "sql": "SELECT 1",
        "bound_parameters": [],
        "datasource_id": "d",
        "database_type": "postgres",
        "database": "warehouse",
        "data_time_zone": "UTC",
        "host": "localhost",
        "port": 5999,  # not the metadata DB's port, when that is PostgreSQL on loopback
        "username": "reader",
        "require_ssl": False,
    }
    return lifecycle.Claim(**{**values, **overrides})


def _worker(api, settings: Settings) -> Worker:
    state = api.app.state
    return Worker(settings, state.sessions, state.result_store, pool=None)  # type: ignore[arg-type]


def test_the_worker_hands_the_child_the_address_it_checked(api):
    """The child connects to the checked address (libpq ``hostaddr``); the name stays only for
    TLS. Connecting by name would let a second DNS answer choose the destination."""
    spec = _worker(api, api.settings)._datasource_spec(_postgres_claim())
    assert spec.remote is not None
    assert (spec.remote.host, spec.remote.port) == ("localhost", 5999)
    assert spec.remote.address in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("policy", "host", "port"),
    [
        ("", "localhost", 5999),  # loopback no longer allowed: the policy changed since saving
        (LOOPBACK_NETWORKS, "169.254.169.254", 80),
        (LOOPBACK_NETWORKS, "::ffff:10.0.0.1", 5432),
    ],
)
def test_the_worker_checks_the_host_again_before_connecting(api, policy, host, port):
    strict = _worker(api, api.settings.with_overrides(datasource_allowed_networks=policy))
    with pytest.raises(QueryFailed) as refused:
        strict._datasource_spec(_postgres_claim(host=host, port=port))
    assert refused.value.code == "destination_not_allowed"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_worker_refuses_the_metadata_database(api, settings):
    url = make_url(settings.database_url)
    with pytest.raises(QueryFailed) as refused:
        _worker(api, settings)._datasource_spec(
            _postgres_claim(host=url.host, port=url.port or 5432)
        )
    assert refused.value.code == "destination_not_allowed"
