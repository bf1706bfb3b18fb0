"""Where an ``s3`` datasource's requests go: AWS virtual-hosted or path-style endpoints, bucket
locations that could widen a read refused, locations stored canonical, and the worker's own
check of the endpoint before connecting.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from data_server.datasource_specs import DatasourceSpecs
from data_server.engine import QueryFailed
from shared import lifecycle
from shared.errors import Unprocessable
from shared.object_storage import Endpoint, check_attributes, endpoint_for, parse_location


def test_endpoints_aws_virtual_hosted_or_path_style():
    plain, dotted = parse_location("shop-data/x"), parse_location("shop.data/x")
    assert endpoint_for(plain, None, None, "eu-west-1", True) == Endpoint(
        "s3.eu-west-1.amazonaws.com", "vhost", True, "shop-data.s3.eu-west-1.amazonaws.com", 443
    )
    assert endpoint_for(dotted, None, None, "eu-west-1", True).url_style == "path"
    assert endpoint_for(plain, "minio.internal", None, "us-east-1", False) == Endpoint(
        "minio.internal", "path", False, "minio.internal", 80
    )
    assert endpoint_for(plain, "fd00::5", 9000, "garage", True).endpoint == "[fd00::5]:9000"


@pytest.mark.parametrize(
    "value",
    ["", "s3://", "Bucket/x", "b/x", "bucket..x/y", "10.0.0.1/x", "gs://bucket/x",
     "bucket/a/../b", "bucket/./a", "bucket//a", "bucket/a?s3_endpoint=evil", "bucket/*",
     "bucket/a%2F..", "bucket/a#b", "bucket/a\\b", "bucket/a\nb"],
)  # fmt: skip
def test_locations_that_could_widen_a_read_are_refused(value):
    with pytest.raises(ValueError):
        parse_location(value)


def test_locations_are_stored_canonical():
    assert parse_location("bucket").url == "s3://bucket/"
    assert parse_location("s3://bucket/a/b").url == "s3://bucket/a/b/"
    assert parse_location("bucket/a b/Ünïcode/").url == "s3://bucket/a b/Ünïcode/"


def test_the_worker_checks_the_endpoint_again_before_connecting(servers):
    """What the API accepted may be refused at run time (the policy or the DNS answer changed):
    the worker's own check decides, before any child connects."""
    api = servers[0]
    state = api.app.state
    claim = lifecycle.Claim(
        execution_id="e", attempt=1, organization_id="o", execution_type="connection_test",
        sql="", bound_parameters=[], datasource_id="d", database_type="s3",
        database="s3://bucket/data/", data_time_zone="UTC", host="127.0.0.1", port=9000,
        require_ssl=False,
    )  # fmt: skip
    for settings, host in [
        (api.settings.with_overrides(datasource_allowed_networks=""), "127.0.0.1"),
        (api.settings, "169.254.169.254"),
    ]:
        worker = DatasourceSpecs(settings, state.sessions)
        with pytest.raises(QueryFailed) as refused:
            worker.for_claim(replace(claim, host=host))
        assert refused.value.code == "destination_not_allowed"


@pytest.mark.parametrize("prefix", ["\u202eevil", "a\u2066b", "a\x85b", "a\u2028b"])
def test_a_prefix_given_holds_nothing_a_name_may_not(prefix):
    """It is shown in lists, where a bidirectional override disguises it (the outside probe's
    case); one stored before the rule still reads (the worker parses it as before)."""
    with pytest.raises(Unprocessable) as refused:
        check_attributes({"database": f"s3://bucket/{prefix}/"})
    assert refused.value.code == "invalid_location"
    assert parse_location(f"bucket/{prefix}").prefix == f"{prefix}/"
