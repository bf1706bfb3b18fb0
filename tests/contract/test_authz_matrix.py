"""One parametrised test over every route of both servers, driven by tests/support/authz_matrix.py.

Each case builds an organisation with one object of each kind, then calls the route as every kind
of caller: no key, a bad key, a key without the permission, a key of another organisation, a key
restricted to another datasource, and a key holding only the permission the rule names. Everyone
but the last must be refused with the matrix's status and change nothing stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from api_server.permissions import Permission, effective_permissions
from api_server.resources import datasource_actions
from data_server.app import create_app as create_data_app
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.settings import Settings
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key
from tests.support.authz_matrix import RULES, Caller, Rule, expected_status
from tests.support.factories import JSONAPI, Api, Org, dump_tables

UNKNOWN_KEY = "dfk_" + "A" * 40 + "_000000"  # well formed, checksum aside: never stored


@dataclass
class World:
    api: Api
    org: Org
    other: Org
    database: str
    ids: dict[str, str] = field(default_factory=dict)
    callers: dict[str, Caller] = field(default_factory=dict)
    keys_by_profile: dict[tuple, str] = field(default_factory=dict)

    def database_bytes(self) -> bytes:
        """The DuckDB file of the world's datasource, as an upload replacing it sends it."""
        return (self.api.area(self.org) / self.database).read_bytes()

    def caller_with(self, rule: Rule) -> Caller:
        """A key the rule admits with as little as it may: one of its permissions (all of them
        where it wants every one)."""
        if rule.every_permission:
            granted: tuple[Permission, ...] = tuple(Permission)
        else:
            granted = rule.permissions[:1] or (Permission.VIEW_ALERTS,)
        key = self.api.create_key(self.org, list(granted))
        return Caller("permitted", key, permissions=frozenset(granted))


@pytest.fixture(autouse=True)
def prompt_connection_tests(monkeypatch):
    """No data server runs here, so Test Connection answers its own time-out: 1 s, not 30."""
    monkeypatch.setattr(datasource_actions, "CONNECTION_TEST_TIMEOUT_SECONDS", 1)


def _document(kind: str, **attributes: object) -> dict:
    return {"data": {"type": kind, "attributes": attributes}}


def build_world(api: Api) -> World:
    org, other = api.create_org("A"), api.create_org("B")
    database = api.duckdb_file(org)
    api.duckdb_file(other, database)  # each organisation creates datasources over its own file
    world = World(api, org, other, database)
    datasource = api.create_datasource(org.key, name="D1", database=database)["id"]
    world.ids["datasource"] = datasource
    folder = api.area(org) / "shop"
    folder.mkdir()
    (folder / "orders.csv").write_text("order_id,amount\n1,9.5\n")
    world.ids["files_datasource"] = api.create_datasource(
        org.key, name="F1", database_type="files", database="shop"
    )["id"]
    world.ids["file"] = "orders.csv"
    run = api.client.post(
        f"/datasources/{datasource}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1"}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    world.ids["execution"] = run.json()["data"]["id"]
    snippet = api.post(
        "/sql_snippets",
        org.key,
        {"data": {"type": "sql_snippets", "attributes": {"name": "s", "sql": "SELECT 1"}}},
    )
    world.ids["snippet"] = snippet.json()["data"]["id"]
    # A dashboard with a report on the files datasource (so within its scope; the datasource stays
    # deletable: reports keep theirs from being deleted), in a group.
    dashboard = api.post("/dashboards", org.key, _document("dashboards", name="d"))
    world.ids["dashboard"] = dashboard.json()["data"]["id"]
    report = _document("reports", name="r", sql_query="SELECT 1")
    report["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": world.ids["files_datasource"]}},
        "dashboard": {"data": {"type": "dashboards", "id": world.ids["dashboard"]}},
    }
    world.ids["report"] = api.post("/reports", org.key, report).json()["data"]["id"]
    # A filter with manual options on the files datasource (within its scope alike).
    manual = _document(
        "filters", name="f", variable_name="w", control_type="dropdown", value_type="text",
        values=["a"],
    )  # fmt: skip
    manual["data"]["relationships"] = {
        "datasource": {"data": {"type": "datasources", "id": world.ids["files_datasource"]}}
    }
    world.ids["filter"] = api.post("/filters", org.key, manual).json()["data"]["id"]
    group = _document("dashboard_groups", name="g")
    members = [{"type": "dashboards", "id": world.ids["dashboard"]}]
    group["data"]["relationships"] = {"dashboards": {"data": members}}
    grouped = api.post("/dashboard_groups", org.key, group)
    world.ids["dashboard_group"] = grouped.json()["data"]["id"]
    # Within the scope of any Manage Users key that reaches the datasource (api_keys.within_scope).
    spare = api.create_key(org, [Permission.VIEW_USERS], datasource_ids=[datasource])
    world.ids["api_key"] = api.get("/api_key", spare).json()["data"]["id"]
    everything = list(Permission)
    lacking = [Permission.VIEW_ALERTS]
    world.callers = {
        "anonymous": Caller("anonymous"),
        "unknown key": Caller("unknown key"),
        "lacking permission": Caller(
            "lacking permission", api.create_key(org, lacking), permissions=frozenset(lacking)
        ),
        "other organisation": Caller("other organisation", other.key, same_organization=False),
        "other datasource": Caller(
            "other datasource",
            api.create_key(org, everything, datasource_ids=[org.sample_datasource_id]),
            restricted=True,
            reaches_target_datasource=False,
        ),
    }
    for caller in world.callers.values():  # first use writes last_used_at: not part of a case
        if caller.key:
            api.get("/api_key", caller.key)
    return world


def call(world: World, rule: Rule, key: str | None, query: str = ""):
    path = rule.path.replace("{id}", world.ids.get(rule.target, "x"))
    path = path.replace("{name}", world.ids["file"]) + query
    headers = {"Authorization": f"Api {key}"} if key else {}
    content = None
    if rule.body is not None:
        content = orjson.dumps(rule.body(world))
        headers["Content-Type"] = "application/json" if rule.json_body else JSONAPI
    if rule.upload is not None:
        headers["Content-Type"], content = rule.upload(world)
    return world.api.client.request(rule.method, path, content=content, headers=headers)


# On SQLite only: who may do what is decided above the metadata database, the same code on both
# (the undeclared-parameter test below, which also checks that a refusal changes nothing, runs on
# PostgreSQL too). On both backends this test took a tenth of the whole suite's time.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_every_caller_gets_the_matrix_answer(api, rule):
    world = build_world(api)
    for name in list(world.callers):
        caller = world.callers[name]
        key = UNKNOWN_KEY if caller.name == "unknown key" else caller.key
        before = dump_tables(api.app)
        answer = call(world, rule, key)
        assert answer.status_code == expected_status(rule, caller), (caller.name, answer.text)
        if answer.status_code >= 400:
            assert answer.json()["errors"][0]["status"] == str(answer.status_code)
            assert dump_tables(api.app) == before, f"refused, yet {caller.name} changed something"
        elif rule.method != "GET":  # an allowed write (in its own organisation): start afresh
            world = build_world(api)
    permitted = world.caller_with(rule)
    answer = call(world, rule, permitted.key)
    assert answer.status_code == expected_status(rule, permitted) == rule.success, answer.text


def test_an_undeclared_or_repeated_query_parameter_is_400_and_changes_nothing(api):
    """Each operation takes the query parameters its document declares, each once; some
    ignored any other (a refresh even ran), found by the outside probe. Refused, nothing
    changes: one world serves every route."""
    world = build_world(api)
    for rule in (r for r in RULES if not r.public):
        permitted = world.caller_with(rule)
        api.get("/api_key", permitted.key)  # its first use writes last_used_at: not the case's
        before = dump_tables(api.app)
        declared = sorted(rule.declared.declared_query) if rule.declared else []
        queries = {"?undeclared=1": "undeclared"}
        if declared:
            queries[f"?{declared[0]}=1&{declared[0]}=1"] = declared[0]
        for query, blamed in queries.items():
            answer = call(world, rule, permitted.key, query)
            assert answer.status_code == 400, (rule.name, query, answer.text)
            assert answer.json()["errors"][0]["source"] == {"parameter": blamed}, rule.name
        assert dump_tables(api.app) == before, rule.name


def test_the_matrix_covers_every_route_of_both_servers(api, tmp_path):
    data_app = create_data_app(Settings(state_dir=tmp_path, sample_scale=0.001))
    in_matrix = {(rule.method, rule.path) for rule in RULES} | set(DATA_SERVER_RULES)
    routed = {
        (method, route.path)
        for app in (api.app, data_app)
        for route in app.routes
        for method in getattr(route, "handled_methods", None) or route.methods
        if method != "HEAD"
    }
    assert len(routed) > 20, "few routes found: the route walk is broken"
    assert routed - in_matrix == set(), "routes missing from tests/support/authz_matrix.py"
    assert in_matrix - routed == set(), "matrix rules for routes that do not exist"


# ---------------------------------------------------------------------------- data server

DATA_SERVER_RULES = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public (restrict it at the load balancer)",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/data/{data_key}"): "data token for exactly this data key",
}


@pytest.fixture
def data_server(tmp_path):
    settings = Settings(state_dir=tmp_path, sample_scale=0.001)
    signing_key = SigningKeyring(settings).signing_key()
    with TestClient(create_data_app(settings), raise_server_exceptions=False) as client:
        yield client, settings, signing_key


def test_data_server_hands_data_only_to_a_token_for_that_key(data_server, api):
    client, settings, signing_key = data_server
    org = api.create_org()

    def token(data_key):
        return mint_data_token(
            signing_key,
            settings,
            organization_id="a" * 14,
            data_key=data_key,
            scope=Scope.EXECUTION_RESULT,
        )

    data_key, other_key = new_data_key(Scope.EXECUTION_RESULT), new_data_key(Scope.EXECUTION_RESULT)
    cases = {
        "no header": {},
        "an API key": {"Authorization": f"Api {org.key}"},
        "a token for another data key": {"Authorization": f"Data {token(other_key)}"},
        "a token in the wrong scheme": {"Authorization": f"Bearer {token(data_key)}"},
    }
    for name, headers in cases.items():
        answer = client.get(f"/data/{data_key}", headers=headers)
        assert answer.status_code == 401, name
    authorised = client.get(
        f"/data/{data_key}", headers={"Authorization": f"Data {token(data_key)}"}
    )
    assert authorised.status_code == 404  # past authorisation: no result stored under this key


# ---------------------------------------------------------------------------- property


READ_RULES = [rule for rule in RULES if rule.method == "GET" and not rule.public]


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    state = tmp_path_factory.mktemp("authz-world")
    (state / "data").mkdir()
    settings = Settings(state_dir=state, sample_scale=0.001, max_datasources=5)
    upgrade_to_head(create_metadata_engine(settings.database_url))
    with Api.start(settings) as api:
        yield build_world(api)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    permissions=st.frozensets(st.sampled_from(list(Permission)), min_size=1),
    same_organization=st.booleans(),
    restriction=st.sampled_from(["none", "target datasource", "other datasource"]),
    rule=st.sampled_from(READ_RULES),
)
def test_a_2xx_only_when_organisation_permission_and_scope_all_hold(
    shared_world, permissions, same_organization, restriction, rule
):
    key = _key_for(shared_world, permissions, same_organization, restriction)
    answer = call(shared_world, rule, key)
    # A key of the other organisation cannot list this one's datasource: _key_for leaves it
    # unrestricted then, so only the "other datasource" restriction restricts it.
    restricted = restriction == "other datasource" or (
        restriction == "target datasource" and same_organization
    )
    allowed = (
        (not rule.permissions or bool(effective_permissions(permissions) & set(rule.permissions)))
        and (same_organization or not rule.target)
        and (restriction != "other datasource" or not rule.scoped)
        and (not restricted or not rule.unrestricted_only)
        and (effective_permissions(permissions) == set(Permission) or not rule.every_permission)
    )
    succeeded = answer.status_code == rule.success or 200 <= answer.status_code < 300
    assert succeeded == allowed, (answer.status_code, answer.text)


def _key_for(world: World, permissions, same_organization: bool, restriction: str) -> str:
    """One key per profile, made on first use: the organisation's, or the other one's."""
    profile = (permissions, same_organization, restriction)
    if profile not in world.keys_by_profile:
        org = world.org if same_organization else world.other
        reach = {
            "none": None,
            # Every datasource a rule may target: the world's duckdb and files datasources.
            "target datasource": (
                [world.ids["datasource"], world.ids["files_datasource"]]
                if same_organization
                else None
            ),
            "other datasource": [org.sample_datasource_id],
        }[restriction]
        world.keys_by_profile[profile] = world.api.create_key(org, list(permissions), reach)
    return world.keys_by_profile[profile]
