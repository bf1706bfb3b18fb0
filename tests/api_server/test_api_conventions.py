"""The API's conventions, shown on /datasources: malformed documents get the error shape, JSON:API
media types in Content-Type and Accept, body size, unknown routes and methods, request ids and
the health endpoints.
"""

from __future__ import annotations

import gzip
import json

import pytest

from api_server.resource_layer import names
from api_server.resources import dashboards as dashboard_resources
from shared.db.models import ApiKey, Dashboard, DashboardGroup, Datasource, Filter, Report
from tests.support.datasources import new_datasource_document
from tests.support.factories import dump_tables, resource


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[]", 400, "bad_request"),
        # A member given twice (RFC 8259 §4): the last one silently won
        (
            b'{"data": {"type": "datasources"}, "data": {"type": "datasources"}}',
            400,
            "malformed_json",
        ),
        (
            b'{"data": {"type": "datasources", "attributes": {"name": "a", "name": "b"}}}',
            400,
            "malformed_json",
        ),
        (b'{"data": []}', 400, "bad_request"),
        # No type: the endpoint's (Cluvio's samples send none); then the name is missing.
        (b'{"data": {"attributes": {}}}', 422, "missing_attribute"),
        (b'{"data": {"type": null, "attributes": {"name": "x"}}}', 400, "bad_request"),
        (b'{"data": {"type": "users", "attributes": {"name": "x"}}}', 409, "conflict"),
        (
            b'{"data": {"type": "datasources", "id": "abcd-abcd-abcd", "attributes": {}}}',
            403,
            "forbidden",
        ),
        (b'{"data": {"type": "datasources", "attributes": []}}', 400, "bad_request"),
        (
            b'{"data": {"type": "datasources", "attributes": {"name": "x"}, "relationships": {"agents": {"data": [{"type": "datasource_agents", "id": "a"}]}}}}',
            422,
            "invalid_attribute",
        ),
    ],
)
def test_malformed_documents_get_the_error_shape(api, body, status, code):
    org = api.create_org()
    before = dump_tables(api.app)
    response = api.post("/datasources", org.key, body)
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["code"] == code and error["status"] == str(status)
    assert dump_tables(api.app) == before


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            '{"data": {"attributes": {"name": "é"}}}'.encode("utf-16"),
            "The request body is not UTF-8, which JSON is (byte 0 is not).",
        ),
        (
            b'{"data": {"attributes": {"name": "\xff"}}}',
            "The request body is not UTF-8, which JSON is (byte 34 is not).",
        ),
        (b'{"data": ', "The request body is not valid JSON: unexpected end of data."),
    ],
)
def test_a_body_that_is_not_json_says_why(api, body, detail):
    """A body in another encoding was "not valid JSON: str is not valid UTF-8: surrogates not
    allowed", orjson's words for it."""
    org = api.create_org()
    response = api.post("/datasources", org.key, body)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["code"], error["detail"]) == ("malformed_json", detail)


@pytest.mark.parametrize(
    ("number", "pointer"),
    [
        (b"1e400", "/data/attributes/name"),
        (b"-" + b"9" * 5000, "/data/attributes/name"),  # past Python's 4,300-digit int limit
        (b"9" * 309, "/data/attributes/name"),  # one digit more than the largest double's
    ],
)
def test_a_number_beyond_a_double_is_422_at_that_number_not_malformed_json(api, number, pointer):
    """JSON's grammar bounds no number (RFC 8259 §6 lets a reader set its own range): such a body
    is valid JSON, refused at the number it cannot read, not called malformed."""
    org = api.create_org()
    before = dump_tables(api.app)
    body = b'{"data": {"type": "datasources", "attributes": {"name": ' + number + b"}}}"
    response = api.post("/datasources", org.key, body)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "number_out_of_range"
    assert error["source"] == {"pointer": pointer}
    assert "1.8e308" in error["detail"]
    assert dump_tables(api.app) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": 1e400} and more',  # trailing data
        b'{"data": NaN, "n": 1e400}',  # NaN is no JSON
        b'{"data": ' + b"9" * 308 + b"}",  # within a double's range: read, then refused as data
    ],
)
def test_a_body_malformed_besides_its_number_is_not_told_about_the_number(api, body):
    org = api.create_org()
    response = api.post("/datasources", org.key, body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] in ("malformed_json", "bad_request")


def test_patch_with_mismatched_id_is_409(api):
    org = api.create_org()
    created = api.create_datasource(org.key)
    response = api.patch(
        f"/datasources/{created['id']}",
        org.key,
        resource("datasources", "zzzz-zzzz-zzzz", name="x"),
    )
    assert response.status_code == 409
    assert response.json()["errors"][0]["source"] == {"pointer": "/data/id"}


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain",
        "",
        "application/vnd.api+json; charset=utf-8",
        # JSON:API 1.1: an extension the server does not support (it supports none) is a 415
        'application/vnd.api+json; ext="https://jsonapi.org/ext/atomic"',
        "application/vnd.api+json; ext=foo",
        "application/vnd.api+json, text/plain",  # one media type, not a list
    ],
)
def test_write_without_jsonapi_content_type_is_415(api, content_type):
    org = api.create_org()
    response = api.post(
        "/datasources", org.key, new_datasource_document(api, org), content_type=content_type
    )
    assert response.status_code == 415
    assert response.json()["errors"][0]["code"] == "unsupported_media_type"


def test_one_value_headers_sent_twice_are_400_and_change_nothing(api):
    """Content-Type and Idempotency-Key hold one value: which copy would a proxy have kept?"""
    org = api.create_org()
    before = dump_tables(api.app)
    document = new_datasource_document(api, org)
    typed = api.client.post(
        "/datasources",
        content=json.dumps(document),
        headers=[
            ("Authorization", f"Api {org.key}"),
            ("Content-Type", "application/vnd.api+json"),
            ("Content-Type", "text/plain"),
        ],
    )
    assert typed.status_code == 400 and typed.json()["errors"][0]["code"] == "repeated_header"
    keyed = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=json.dumps({"sql_query": "SELECT 1", "parameters": {}}),
        headers=[
            ("Authorization", f"Api {org.key}"),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ],
    )
    assert keyed.status_code == 400 and keyed.json()["errors"][0]["code"] == "repeated_header"
    assert dump_tables(api.app) == before


def test_a_content_coded_body_is_415_and_an_identity_one_is_read(api):
    org = api.create_org()
    document = json.dumps(new_datasource_document(api, org)).encode()
    headers = {"Authorization": f"Api {org.key}", "Content-Type": "application/vnd.api+json"}
    coded = api.client.post(
        "/datasources",
        content=gzip.compress(document),
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert coded.status_code == 415, coded.text
    assert coded.json()["errors"][0]["code"] == "unsupported_media_type"
    plain = api.client.post(
        "/datasources", content=document, headers={**headers, "Content-Encoding": "identity"}
    )
    assert plain.status_code == 201, plain.text


def test_if_match_naming_an_entity_tag_is_412_and_changes_nothing(api):
    """The API's resources carry no ETag, so no tag matches: the PATCH must not run."""
    org = api.create_org()
    created = api.create_datasource(org.key)
    api.get("/api_key", org.key)
    before = dump_tables(api.app)
    answer = api.client.patch(
        f"/datasources/{created['id']}",
        content=json.dumps(resource("datasources", created["id"], name="renamed")),
        headers={
            "Authorization": f"Api {org.key}",
            "Content-Type": "application/vnd.api+json",
            "If-Match": '"stale"',
        },
    )
    assert answer.status_code == 412 and answer.json()["errors"][0]["code"] == "precondition_failed"
    assert dump_tables(api.app) == before


def test_if_none_match_star_never_lets_a_patch_or_delete_run(api):
    """``*`` holds only where nothing exists, and both change what exists (RFC 9110 §13.1.2):
    a PATCH and a DELETE ran despite it (found by the outside probe)."""
    org = api.create_org()
    created = api.create_datasource(org.key)
    api.get("/api_key", org.key)
    before = dump_tables(api.app)
    headers = {
        "Authorization": f"Api {org.key}",
        "Content-Type": "application/vnd.api+json",
        "If-None-Match": "*",
    }
    url = f"/datasources/{created['id']}"
    document = json.dumps(resource("datasources", created["id"], name="renamed"))
    # A list that holds "*" is "*", however spelled (found by the second probe).
    for spelling in ("*", "*,", ", *", '"a", *'):
        headers["If-None-Match"] = spelling
        for answer in (
            api.client.patch(url, content=document, headers=headers),
            api.client.delete(url, headers=headers),
        ):
            assert answer.status_code == 412, (spelling, answer.text)
            assert answer.json()["errors"][0]["code"] == "precondition_failed"
    assert dump_tables(api.app) == before
    # An entity tag in If-None-Match matches none of the resource's (it has none): it runs.
    headers["If-None-Match"] = '"v1"'
    assert api.client.patch(url, content=document, headers=headers).status_code == 200


def test_jsonapi_content_type_with_profile_is_accepted(api):
    org = api.create_org()
    content_type = 'application/vnd.api+json; profile="https://example.com/p"'
    assert (
        api.post(
            "/datasources", org.key, new_datasource_document(api, org), content_type=content_type
        ).status_code
        == 201
    )


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("text/html", 406),
        ("application/vnd.api+json; ext=foo", 406),
        ("application/json", 406),
        ("application/vnd.api+json;q=0", 406),
        ("application/vnd.api+json", 200),
        ("*/*", 200),
        ("application/*", 200),
        ("text/html, application/vnd.api+json", 200),
        ('application/vnd.api+json; profile="https://example.com/p"', 200),  # JSON:API 1.1
        ("application/vnd.api+json;profile=x, application/vnd.api+json;charset=x", 200),
        ("application/vnd.api+json; charset=utf-8", 406),
    ],
)
def test_accept_is_negotiated(api, accept, status):
    org = api.create_org()
    response = api.client.get(
        "/datasources", headers={"Authorization": f"Api {org.key}", "Accept": accept}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/vnd.api+json"


def test_oversized_body_is_413(api):
    org = api.create_org()
    body = new_datasource_document(api, org, description="x" * (2 * 1024 * 1024))
    response = api.post("/datasources", org.key, body)
    assert response.status_code == 413


def test_unknown_route_and_wrong_method_get_the_error_shape(api):
    missing = api.client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "not_found"
    wrong = api.client.put("/datasources")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    assert wrong.json()["errors"][0]["code"] == "method_not_allowed"
    plain = api.client.post("/healthz")  # a route of one method: Starlette's own 405
    assert plain.status_code == 405 and plain.headers["allow"] == "GET, HEAD"
    # Any other method (FOO, QUERY) names the methods the path takes: Starlette's own 405
    # listed every method the route was given, several of them 405 themselves.
    for path, allowed in (
        ("/datasources", "GET, HEAD, POST"),
        ("/datasources/zzzz-zzzz-zzzz", "DELETE, GET, HEAD, PATCH"),
        ("/healthz", "GET, HEAD"),
    ):
        for method in ("FOO", "QUERY", "TRACE"):
            unknown = api.client.request(method, path)
            assert (unknown.status_code, unknown.headers["allow"]) == (405, allowed), path
            assert unknown.json()["errors"][0]["code"] == "method_not_allowed"
    assert api.client.request("FOO", "/no/such/route").status_code == 404


def test_every_response_carries_a_request_id_and_nosniff(api):
    for answer in (
        api.client.get("/healthz"),
        api.client.get("/no/such/route"),
        api.client.get("/datasources", headers={"Authorization": "Api nope"}),
    ):
        assert answer.headers["x-content-type-options"] == "nosniff", answer.status_code
    assert len(api.client.get("/healthz").headers["x-request-id"]) == 32
    echoed = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    hostile = api.client.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"
    secret = api.create_org().key  # a key as the id: the audit log would keep it
    body = secret.removeprefix("dfk_")
    for disguised in (secret, secret.upper(), f"dfk-{body}", body, f"{secret[:14]}.{secret[14:]}"):
        answered = api.client.get("/healthz", headers={"X-Request-ID": disguised})
        assert answered.headers["x-request-id"] != disguised, disguised


def test_health_and_readiness(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}


def _named_resources(api, org) -> dict[str, str]:
    """One resource of each type a person names, made with a proper name: type → its path."""
    made = {"datasources": f"/datasources/{org.sample_datasource_id}"}
    keys = api.get("/api_keys", org.key).json()["data"]
    made["api_keys"] = f"/api_keys/{keys[0]['id']}"
    for type_, attributes in (
        ("dashboards", {"name": "Sales"}),
        ("dashboard_groups", {"name": "Team"}),
        (
            "filters",
            {"name": "Land", "variable_name": "land", "control_type": "text", "value_type": "text"},
        ),
    ):
        created = api.post(f"/{type_}", org.key, resource(type_, **attributes))
        assert created.status_code == 201, created.text
        made[type_] = f"/{type_}/{created.json()['data']['id']}"
    report = resource("reports", name="Revenue", sql_query="SELECT 1")
    dashboard_id = made["dashboards"].rsplit("/", 1)[1]
    report["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
        "dashboard": {"data": {"type": "dashboards", "id": dashboard_id}},
    }
    created = api.post("/reports", org.key, report)
    assert created.status_code == 201, created.text
    made["reports"] = f"/reports/{created.json()['data']['id']}"
    return made


# A name, and what the 422's detail says of it.
REFUSED_NAMES = [
    ("new\nline", "control character"),
    ("tab\there", "control character"),
    ("esc\x1b[2J", "control character"),
    ("del\x7f", "control character"),
    ("c1\x85inside", "control character"),
    ("invoice\u202egpj.exe", "control character"),
    ("\u2066x", "control character"),
    ("two\u2028lines", "control character"),
    ("\u200b", "must show some character"),
    ("\u3164", "must show some character"),
    ("\ufeff\u200d \u00ad\u2060", "must show some character"),
    ("\ufe0f\u200e", "must show some character"),
    ("\u2800\ufff9\ufffb", "must show some character"),
    ("\U000e0041\U000e0042\U000e007f", "must show some character"),  # tag characters
    ("\U0001d173\U000e0100\U0001bca0", "must show some character"),
]


def test_names_hold_no_control_character_or_bidirectional_override(api):
    """A name is one line of text other tools show: a control character in it clears a
    terminal or forges a log line, an override reorders what follows, and a name of zero-width
    characters shows as nothing (shared/display_names.py). Creating or renaming anything a
    person names with one is 422 at the name, and changes nothing."""
    org = api.create_org()
    made = _named_resources(api, org)
    before = dump_tables(api.app)
    for name, detail in REFUSED_NAMES:
        for type_, path in made.items():
            document = resource(type_, path.rsplit("/", 1)[1], name=name)
            renamed = api.patch(path, org.key, document)
            assert renamed.status_code == 422, (name, type_, renamed.text)
            (error,) = renamed.json()["errors"]
            assert error["source"] == {"pointer": "/data/attributes/name"}, (type_, error)
            assert detail in error["detail"], (name, error)
        created = api.post("/dashboards", org.key, resource("dashboards", name=name))
        assert created.status_code == 422, created.text
    assert dump_tables(api.app) == before


NAMED_MODELS = {
    "datasources": Datasource,
    "api_keys": ApiKey,
    "dashboards": Dashboard,
    "dashboard_groups": DashboardGroup,
    "filters": Filter,
    "reports": Report,
}


def test_a_name_stored_before_the_rule_may_be_sent_back_unchanged(api):
    """Clients that send every attribute back on an update (as many do) must be able to change
    the rest of a resource whose name an earlier version stored: a name sent as it is stored is
    no change. Any other refused name stays a 422, and another organisation gets its 404."""
    org = api.create_org()
    made = _named_resources(api, org)
    legacy = "old\tname \u202eexe"
    with api.app.state.sessions.begin() as session:
        for type_, path in made.items():
            session.get(NAMED_MODELS[type_], path.rsplit("/", 1)[1]).name = legacy
    stranger = api.create_org()
    for type_, path in made.items():
        resource_id = path.rsplit("/", 1)[1]
        kept = api.patch(path, org.key, resource(type_, resource_id, name=legacy))
        assert kept.status_code == 200, (type_, kept.text)
        assert kept.json()["data"]["attributes"]["name"] == legacy
        changed = api.patch(path, org.key, resource(type_, resource_id, name="new\tname"))
        assert changed.status_code == 422, (type_, changed.text)
        foreign = api.patch(path, stranger.key, resource(type_, resource_id, name=legacy))
        assert foreign.status_code == 404, (type_, foreign.text)
    with api.app.state.sessions() as session:
        for type_, path in made.items():
            assert session.get(NAMED_MODELS[type_], path.rsplit("/", 1)[1]).name == legacy


def test_a_name_sent_back_unchanged_does_not_undo_a_rename_committed_meanwhile(api, monkeypatch):
    """The stored name is read before the update's transaction; a name sent back as it was is
    left out of the update, so a rename committed in between stays (a refused name would
    otherwise be written back over it)."""
    org = api.create_org()
    created = api.post("/dashboards", org.key, resource("dashboards", name="Sales"))
    dashboard_id = created.json()["data"]["id"]
    sessions = api.app.state.sessions
    with sessions.begin() as session:
        session.get(Dashboard, dashboard_id).name = "old\tname"
    keeping = names.keeping_stored_name

    def renamed_meanwhile(request, stored):
        def read_then_rename(session):
            name = stored(session)
            with sessions.begin() as other:
                other.get(Dashboard, dashboard_id).name = "Clean"
            return name

        return keeping(request, read_then_rename)

    monkeypatch.setattr(dashboard_resources, "keeping_stored_name", renamed_meanwhile)
    document = resource("dashboards", dashboard_id, name="old\tname", description="kept")
    answer = api.patch(f"/dashboards/{dashboard_id}", org.key, document)
    assert answer.status_code == 200, answer.text
    with sessions() as session:
        dashboard = session.get(Dashboard, dashboard_id)
        assert (dashboard.name, dashboard.description) == ("Clean", "kept")


def test_names_drop_blanks_around_and_keep_other_scripts(api):
    """Blanks around a name are dropped as the operator commands drop them (Python's strip:
    tabs, line breaks and the C0 separators too); right-to-left text, marks and emoji are names
    people write."""
    org = api.create_org()
    for sent, kept in [
        ("\tSales\n", "Sales"),
        ("\x1cAcme\x1f", "Acme"),
        (" שלום ", "שלום"),
        ("café ☕", "café ☕"),
        ("x\u200fy", "x\u200fy"),
        ("\u200b x\u200b", "\u200b x\u200b"),
    ]:
        created = api.post("/dashboards", org.key, resource("dashboards", name=sent))
        assert created.status_code == 201, created.text
        assert created.json()["data"]["attributes"]["name"] == kept


def test_a_name_stored_before_the_rule_still_reads_and_its_resource_still_changes(api):
    """Names stored by earlier versions may hold what is refused now: reading them, and
    changing anything else, keeps working (nothing stored becomes unreachable); a backup, which
    a restore would refuse, is refused when it is made and names what to rename."""
    org = api.create_org()
    created = api.post("/dashboards", org.key, resource("dashboards", name="Sales"))
    dashboard_id = created.json()["data"]["id"]
    with api.app.state.sessions.begin() as session:
        session.get(Dashboard, dashboard_id).name = "old\tname"
    read = api.get(f"/dashboards/{dashboard_id}", org.key)
    assert read.status_code == 200 and read.json()["data"]["attributes"]["name"] == "old\tname"
    changed = api.patch(
        f"/dashboards/{dashboard_id}",
        org.key,
        resource("dashboards", dashboard_id, description="kept"),
    )
    assert changed.status_code == 200, changed.text
    assert api.get("/dashboards", org.key).status_code == 200
    # a backup of it would not restore (restore checks names as create does): refused when made
    backup = api.client.post(
        f"/dashboards/{dashboard_id}/backup", headers={"Authorization": f"Api {org.key}"}
    )
    assert backup.status_code == 409, backup.text
    (error,) = backup.json()["errors"]
    assert error["code"] == "backup_names_refused" and dashboard_id in error["detail"]
    with api.app.state.sessions.begin() as session:
        session.get(Dashboard, dashboard_id).name = "\u200b\u200b"
    backup = api.client.post(
        f"/dashboards/{dashboard_id}/backup", headers={"Authorization": f"Api {org.key}"}
    )
    assert backup.status_code == 409 and dashboard_id in backup.text, backup.text


def test_a_create_or_update_shaped_as_cluvios_samples_is_taken(api):
    """Found by the outside probe: Cluvio's reference shows every create and update as
    ``{"data": {"attributes": …}}``, without ``type`` or ``id``; this API refused those with 400.
    The type is the endpoint's and an update's id the URL's; given, they must still match."""
    org = api.create_org()
    created = api.post("/dashboards", org.key, {"data": {"attributes": {"name": "Sales"}}})
    assert created.status_code == 201, created.text
    datasource = api.create_datasource(org.key, name="Shop")["id"]
    renamed = api.patch(
        f"/datasources/{datasource}", org.key, {"data": {"attributes": {"name": "Store"}}}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["data"]["attributes"]["name"] == "Store"
    other_id = {"data": {"type": "datasources", "id": "abcd-abcd-abcd", "attributes": {}}}
    assert api.patch(f"/datasources/{datasource}", org.key, other_id).status_code == 409
    other_type = {"data": {"type": "dashboards", "attributes": {"name": "x"}}}
    assert api.patch(f"/datasources/{datasource}", org.key, other_type).status_code == 409
