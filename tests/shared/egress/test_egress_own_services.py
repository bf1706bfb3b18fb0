"""The region's own services (the metadata database, the rate-limit Redis) are refused as
destinations even where the allow-list would let their addresses through.
"""

from __future__ import annotations

import pytest

from shared import egress
from shared.egress import check_destination
from shared.errors import DestinationNotAllowed, ServiceUnavailable
from tests.support.egress import POINTER, policy_settings, refusal
from tests.support.processes import LOOPBACK_NETWORKS


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
    settings = policy_settings(
        database_url=database_url, datasource_allowed_networks=LOOPBACK_NETWORKS
    )
    error = refusal(host, 5432, settings)
    assert isinstance(error, DestinationNotAllowed)
    assert "own services" in error.detail
    assert check_destination(host, 5433, settings) in ("127.0.0.1", "127.0.0.2", "::1")


@pytest.mark.parametrize(
    ("database_url", "port"),
    [
        ("postgresql+psycopg://postgres@/meta", 5432),  # libpq's default socket
        ("postgresql+psycopg://postgres@/meta?host=/var/run/postgresql", 5432),
        ("postgresql+psycopg://postgres@/meta?host=/var/run/postgresql&port=5433", 5433),
        ("postgresql+psycopg://postgres@/meta?host=/tmp,db.internal", 5432),
        ("postgresql+psycopg://postgres@/meta?hostaddr=10.0.0.5,127.0.0.1&port=6432", 6432),
    ],
)
def test_a_metadata_database_reached_by_socket_is_refused_on_this_machine(
    resolver, database_url, port
):
    """A server reached through a unix socket is on this machine and listens on its port there
    too (libpq's ``port=`` names it)."""
    resolver["db.internal"] = ["10.0.0.9"]
    settings = policy_settings(
        database_url=database_url, datasource_allowed_networks=LOOPBACK_NETWORKS
    )
    for host in ("127.0.0.1", "127.0.0.2", "::1"):
        assert "own services" in refusal(host, port, settings).detail
    assert check_destination("127.0.0.1", port + 1, settings) == "127.0.0.1"


def test_a_libpq_service_name_fails_closed():
    settings = policy_settings(
        database_url="postgresql+psycopg://postgres@/meta?service=dataferry",
        datasource_allowed_networks=LOOPBACK_NETWORKS,
    )
    with pytest.raises(ServiceUnavailable) as caught:
        check_destination("127.0.0.1", 5433, settings)
    assert caught.value.code == "egress_policy_unavailable"


def test_a_redis_reached_by_socket_is_refused_on_this_machine():
    settings = policy_settings(
        redis_url="unix:///run/redis/redis.sock", datasource_allowed_networks=LOOPBACK_NETWORKS
    )
    assert "own services" in refusal("127.0.0.1", 6379, settings).detail


def test_a_refusal_reads_as_a_sentence_and_never_shows_what_a_name_resolves_to(resolver):
    resolver["meta.internal"] = ["10.0.0.5"]
    settings = policy_settings(
        database_url="postgresql+psycopg://u@meta.internal:5432/meta",
        datasource_allowed_networks="10.0.0.0/8",
    )
    assert refusal("meta.internal", 5432, settings).detail == (
        "meta.internal resolves to an address that is, with port 5432, one of this region's "
        "own services; datasources may not connect there."
    )
    assert refusal("0.0.0.0", 5432, settings).detail == (  # noqa: S104 - a refused destination
        "0.0.0.0 is an unspecified address; datasources may not connect there."
    )


def test_the_metadata_database_is_refused_even_when_listed_by_port():
    settings = policy_settings(
        database_url="postgresql+psycopg://postgres@10.0.0.5:5432/meta",
        datasource_allowed_networks="10.0.0.5/32:5432,10.0.0.0/24",
    )
    assert "own services" in refusal("10.0.0.5", 5432, settings).detail
    assert "own services" in refusal("::ffff:10.0.0.5", 5432, settings).detail
    assert check_destination("10.0.0.6", 5432, settings) == "10.0.0.6"
    assert check_destination("10.0.0.5", 5433, settings) == "10.0.0.5"


def test_a_metadata_database_by_name_is_refused_at_its_addresses(resolver):
    resolver["meta.internal"] = ["10.0.0.5"]
    resolver["alias.example"] = ["10.0.0.5"]
    settings = policy_settings(
        database_url="postgresql+psycopg://dataferry@meta.internal:3306/meta",
        datasource_allowed_networks="10.0.0.0/8",
    )
    assert "own services" in refusal("alias.example", 3306, settings).detail
    assert check_destination("alias.example", 5432, settings) == "10.0.0.5"


def test_an_unresolvable_metadata_database_name_fails_closed(resolver):
    resolver["db.example"] = ["10.0.0.9"]
    settings = policy_settings(
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
    settings = policy_settings(redis_url=redis_url, datasource_allowed_networks=LOOPBACK_NETWORKS)
    for host in ("127.0.0.1", "::1", "localhost"):
        assert "own services" in refusal(host, 6379, settings).detail
    assert check_destination("127.0.0.1", 6380, settings) == "127.0.0.1"


def test_an_sqlite_metadata_database_reserves_no_address():
    settings = policy_settings(datasource_allowed_networks=LOOPBACK_NETWORKS)
    assert egress.own_service_endpoints(settings) == []
    assert check_destination("127.0.0.1", 5432, settings) == "127.0.0.1"


def test_libpq_host_lists_are_read_whatever_their_ports_say():
    """``host=a:port`` entries (libpq's form): a port that is not ASCII digits (``²`` passes
    ``str.isdigit``) or is out of range (thousands of digits, which ``int`` refuses) is none."""
    settings = policy_settings(
        database_url="postgresql+psycopg://u@/meta?host=a.internal:6432,b.internal:²,"
        f"[::2]:{'9' * 5000},c.internal",
    )
    assert egress.own_service_endpoints(settings) == [
        ("a.internal", 6432),
        ("b.internal:²", 5432),
        ("::2", 5432),
        ("c.internal", 5432),
    ]


def test_the_s3_result_store_is_refused_even_with_loopback_allowed():
    """The outside probe's case: an s3 datasource pointed at the result store's own MinIO read
    another organisation's schema documents (the store answered anonymous requests)."""
    settings = policy_settings(
        results_url="s3://results/dataferry",
        s3_endpoint_url="http://localhost:9000",
        datasource_allowed_networks=LOOPBACK_NETWORKS,
    )
    for host in ("127.0.0.1", "::1", "localhost"):
        assert "own services" in refusal(host, 9000, settings).detail
    assert check_destination("127.0.0.1", 9001, settings) == "127.0.0.1"
    local_results = policy_settings(
        s3_endpoint_url="http://localhost:9000", datasource_allowed_networks=LOOPBACK_NETWORKS
    )
    assert check_destination("127.0.0.1", 9000, local_results) == "127.0.0.1"
