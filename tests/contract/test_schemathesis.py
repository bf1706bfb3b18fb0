"""Schemathesis against both servers' OpenAPI documents, in process, with every check on.

tests/contract/test_openapi.py pins that the documents are valid and name every route; this module checks
that the servers do what the documents say. Schemathesis loads ``GET /openapi.json`` from each app
and runs what ``schemathesis run`` runs (coverage, fuzzing and stateful phases; positive and
negative data) with every check, ``ignored_auth`` and ``not_a_server_error`` among them. Any
failure, or any error such as a 500, fails the test with the request that caused it.

Random ids and credentials would only ever meet 401s and 404s, so an organisation is seeded first
and a data server with workers runs alongside, as in production. Requests carry its
all-permissions key; ``object_level_authorization`` replays successful reads with another
organisation's key. Path ids are real part of the time (a datasource, a completed execution with a
stored result, a SQL snippet, an API key; for the data server a result's and a schema's data key,
each request with a token minted for its key), and so are some body values (a database file, SQL
that runs). Reads, changes and deletions each get objects of their own, so that a DELETE early in
the run leaves later reads something to read.

The run is bounded and reproducible: a fixed seed, derandomized Hypothesis and a few fuzzed
examples per operation keep the module under a minute on two cores.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events
from starlette.testclient import TestClient

from api_server.app import create_app
from api_server.permissions import Permission
from data_server.app import create_app as create_data_app
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.settings import Settings
from shared.signing_keys import SigningKeyring
from shared.tokens import mint_data_token, scope_of_data_key
from tests.support.factories import Api, Org, resource

MAX_EXAMPLES = 5  # fuzzed per operation; the coverage phase adds its boundary cases

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "object_level_authorization",
)
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # the check's default


def _accepting(operation_id: str, *statuses: str) -> dict[str, Any]:
    """``positive_data_acceptance`` for one operation, also accepting ``statuses``."""
    expected = {"expected-statuses": [*POSITIVE_STATUSES, *statuses]}
    return {
        "include-operation-id": operation_id,
        "checks": {"positive_data_acceptance": expected},
    }


# An operation's config that skips the coverage phase (fuzzing and the stateful phase still run).
WITHOUT_COVERAGE = {"phases": {"coverage": {"enabled": False}}}


def _sometimes_from(dictionary: str) -> dict[str, Any]:
    return {"dictionary": dictionary, "probability": 0.5}


# Values that exist in the seeded world, drawn half of the time where only they can succeed.
DATASOURCE_VALUES = {
    "body.data.attributes.database": _sometimes_from("databases"),
    "body.data.attributes.data_time_zone": _sometimes_from("time_zones"),
}

CONFIG = {
    # Hypothesis as Schemathesis drives it: no deadline (its own setting), every health check
    # suppressed (slow requests and filtered-out cases are expected here), derandomized, no
    # example database: the same cases every run.
    "seed": 20251123,
    "suppress-health-check": ["all"],
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        # No database stores U+0000 in text, so both servers refuse it anywhere in a request (422
        # in a body, 400 in the URL; tests/shared/test_http_limits.py pins that): a rule JSON Schema can
        # only state string by string, member names included.
        "allow-x00": False,
    },
    "checks": {name: {"enabled": True} for name in CHECKS},  # max_response_time stays off
    "phases": {"stateful": {"max-steps": 6}},
    "dictionaries": {
        "databases": {"values": ["shop.duckdb", "files"]},
        "time_zones": {"values": ["UTC", "Europe/Berlin"]},
        "queries": {
            "values": ["SELECT 1", "SELECT a FROM t ORDER BY a", "SELECT * FROM t WHERE a = 2"]
        },
    },
    "operations": [
        # Rules JSON Schema cannot state, so a schema-valid request may rightly be refused:
        # whether a path names a file in the data root, whether SQL parses and its parameters
        # fit it, whether a time range ends after it starts (422); whether a data key names a
        # result or a schema, which decides if `offset`/`limit` apply (400) and which formats it
        # has (406).
        {**_accepting("createDatasource", "422"), "parameters": DATASOURCE_VALUES},
        {**_accepting("updateDatasource", "422"), "parameters": DATASOURCE_VALUES},
        {
            **_accepting("runExecution", "422"),
            "parameters": {"body.sql_query": _sometimes_from("queries")},
        },
        # Whether a relationship names a datasource or dashboard the key reaches; whether a
        # report's stored SQL expands and binds with the parameters given (422).
        _accepting("createReport", "422"),
        _accepting("updateReport", "422"),
        _accepting("runReport", "422"),
        _accepting("runDashboard", "422"),
        # Whether a name is one a files datasource reads, and whether an upload's bytes read as
        # their format (422); whether the media type is one of those the name's suffix takes
        # (415: the document lists every upload type, for every name); whether the datasource is
        # of the type that has such files (409).
        # Whether a layout names the dashboard's own reports, whether a time zone is an IANA
        # name, whether a group's dashboards exist (422).
        # Whether the attributes of a filter fit together (options of its value type, SQL with
        # a datasource the key reaches), whether `parameters` fit the options SQL (422); whether
        # `parameters` is JSON at all (400: a string to JSON Schema).
        _accepting("createFilter", "422"),
        _accepting("updateFilter", "422"),
        _accepting("getFilterOptions", "400", "422"),
        _accepting("createDashboard", "422"),
        _accepting("updateDashboard", "422"),
        # A group's coverage phase builds an array of 1,000 distinct patterned ids and one of
        # 1,001: a fifth of the phase's time, for one bound that test_dashboards.py checks on
        # both sides. Fuzzing and the stateful phase still run both operations.
        {**_accepting("createDashboardGroup", "422"), **WITHOUT_COVERAGE},
        {**_accepting("updateDashboardGroup", "422"), **WITHOUT_COVERAGE},
        # Whether a backup's references name its own entries and its datasources are mapped to
        # ones the key reaches; whether a snippet of the backup differs from the organisation's
        # of the same name (409).
        # As for groups: boundary arrays and maps of 1,000 entries, checked on both sides by
        # test_dashboard_backups.py.
        {**_accepting("restoreDashboard", "422"), **WITHOUT_COVERAGE},
        # A listing answers 2xx only for the one files datasource a drawn id may name (half the
        # time), and only with valid paging: five examples missed it once the API's parameters
        # changed the cases drawn (a run must see every read succeed once).
        {"include-operation-id": "listDatasourceFiles", "generation": {"max-examples": 15}},
        # The same for a database file, read only on the read role's duckdb datasource: five
        # examples missed it once the datasources' filter took an enum.
        {"include-operation-id": "showDatabaseFile", "generation": {"max-examples": 15}},
        _accepting("showDatasourceFile", "422"),
        _accepting("deleteDatasourceFile", "422"),
        _accepting("uploadDatasourceFile", "413", "415", "422"),
        _accepting("uploadDatabaseFile", "413", "422"),
        # The data plane has one operation and every request is cheap: fuzz it harder.
        {**_accepting("fetchData", "400", "406"), "generation": {"max-examples": 25}},
    ],
}


# ---------------------------------------------------------------------------- the world

KINDS = {  # the first path segment of each kind's URLs
    "datasources": "datasource",
    "executions": "execution",
    "sql_snippets": "snippet",
    "api_keys": "api_key",
    "dashboards": "dashboard",
    "dashboard_groups": "dashboard_group",
    "reports": "report",
    "filters": "filter",
}
ROLES = ("read", "changed", "deleted")
# A files datasource's files (/datasources/{id}/files…) belong to a files datasource of the role.
FILES_KIND = "files_datasource"
SEEDED_KINDS = (*KINDS.values(), FILES_KIND)
FILE_NAME = "t.csv"


@dataclass
class World:
    """A seeded organisation. Each kind of object exists three times, by role: one only read
    (GET), one changed (PATCH and the POST actions), one deleted (DELETE)."""

    settings: Settings
    key: str
    key_id: str
    organization_id: str
    other_key: str  # of another organisation, which must see none of these objects
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # role → kind → id
    data_keys: list[str] = field(default_factory=list)  # the read execution's and datasource's


def _settings(state: Path) -> Settings:
    (state / "data").mkdir(parents=True)
    return Settings(
        state_dir=state,
        sample_scale=0.001,
        max_datasources=50,
        rate_limit_per_minute=1_000_000,
        rate_limit_per_hour=10_000_000,
        max_running_executions=10_000,
        worker_processes=1,
    )


def _run_to_completion(api: Api, key: str, datasource_id: str) -> str:
    answer = api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps({"sql_query": "SELECT 1 AS a, 'x' AS b"}),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )
    execution_id = answer.json()["data"]["id"]
    deadline, status = time.monotonic() + 30, "starting"
    while status in ("starting", "running") and time.monotonic() < deadline:
        shown = api.get(f"/executions/{execution_id}?wait=5", key).json()["data"]
        status = shown["attributes"]["execution_status"]
    assert status == "completed", shown
    return execution_id


def _schema_data_key(api: Api, key: str, datasource_id: str) -> str:
    """The refresh queued when the datasource was created records its schema."""
    deadline = time.monotonic() + 30
    while (answer := api.get(f"/datasources/{datasource_id}/schema", key)).status_code == 409:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)
    return answer.json()["data_key"]


def _seed(api: Api, org: Org, role: str, read_datasource: str | None) -> dict[str, str]:
    datasource = api.create_datasource(org.key, name=role, database="shop.duckdb")["id"]
    folder = api.area(org) / f"files-{role}"
    folder.mkdir()
    (folder / FILE_NAME).write_text("a,b\n1,x\n")
    files = api.create_datasource(
        org.key, name=f"{role} files", database_type="files", database=folder.name
    )["id"]
    snippet = {"data": {"type": "sql_snippets", "attributes": {"name": role, "sql": "SELECT 1"}}}
    spare_key = api.create_key(org, [Permission.VIEW_DATASOURCES])
    dashboard = api.post("/dashboards", org.key, resource("dashboards", name=role))
    group = resource("dashboard_groups", name=role)
    group["data"]["relationships"] = {
        "dashboards": {"data": [{"type": "dashboards", "id": dashboard.json()["data"]["id"]}]}
    }
    report = resource("reports", name=role, sql_query="SELECT {a=a} AS a")
    report["data"]["relationships"] = {  # on the read datasource too: the deleted one is deleted
        "datasource": {"data": {"type": "datasources", "id": read_datasource or datasource}},
        "dashboard": {"data": {"type": "dashboards", "id": dashboard.json()["data"]["id"]}},
    }
    return {
        "datasource": datasource,
        FILES_KIND: files,
        # On the read datasource, so that deleting the deleted one leaves them alone.
        "execution": _run_to_completion(api, org.key, read_datasource or datasource),
        "snippet": api.post("/sql_snippets", org.key, snippet).json()["data"]["id"],
        "api_key": api.get("/api_key", spare_key).json()["data"]["id"],
        "dashboard": dashboard.json()["data"]["id"],
        "dashboard_group": api.post("/dashboard_groups", org.key, group).json()["data"]["id"],
        "report": api.post("/reports", org.key, report).json()["data"]["id"],
        "filter": api.post("/filters", org.key, _filter_document(role)).json()["data"]["id"],
    }


def _filter_document(role: str) -> dict[str, Any]:
    """A drop-down filter with manual options (its variable named after the role: unique)."""
    return resource(
        "filters",
        name=role,
        variable_name=role,
        control_type="dropdown",
        value_type="text",
        values=["a", "b"],
        value_names=["A", "B"],
    )


@contextmanager
def seeded_world(state: Path) -> Iterator[World]:
    """The world, while a data server with workers runs (for as long as the world is used)."""
    settings = _settings(state)
    upgrade_to_head(create_metadata_engine(settings.database_url))
    with TestClient(create_data_app(settings, run_workers=True)), Api.start(settings) as api:
        org = api.create_org("Schemathesis")
        api.duckdb_file(org, "shop.duckdb")  # table t (a); and a folder for `files` datasources
        (api.area(org) / "files").mkdir()
        (api.area(org) / "files" / "t.csv").write_text("a,b\n1,x\n")
        key_id = api.get("/api_key", org.key).json()["data"]["id"]
        world = World(settings, org.key, key_id, org.id, api.create_org("Other").key)
        read = world.ids["read"] = _seed(api, org, "read", None)
        for role in ROLES[1:]:
            world.ids[role] = _seed(api, org, role, read["datasource"])
        grant = api.get(f"/executions/{read['execution']}/data", org.key).json()
        world.data_keys = [grant["data_key"], _schema_data_key(api, org.key, read["datasource"])]
        yield world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with seeded_world(tmp_path_factory.mktemp("schemathesis") / "state") as seeded:
        yield seeded


# ---------------------------------------------------------------------------- the schemas


def _kind(path: str) -> str | None:
    if path.startswith("/datasources/{id}/files"):
        return FILES_KIND
    return KINDS.get(path.strip("/").partition("/")[0]) if "{id}" in path else None


def _role(method: str) -> str:
    return {"GET": "read", "DELETE": "deleted"}.get(method.upper(), "changed")


def _sometimes(name: str, real: list[str]) -> Any:
    """A flatmap hook: the generated path parameters, or the same with ``name`` made real."""

    def choose(generated: dict[str, Any] | None) -> st.SearchStrategy[Any]:
        if not generated or name not in generated or not real:
            return st.just(generated)
        made_real = st.sampled_from(real).map(lambda value: {**generated, name: value})
        return st.one_of(st.just(generated), made_real)

    return choose


def _retargeting(world: World) -> dict[str, dict[str, str]]:
    """Role → {a seeded id of another role: this role's object of the same kind}.

    Schemathesis also reuses ids it saw in responses, and would otherwise delete the read objects
    or its own key (turning the rest of the run into 404s and 401s). Its own key is never a target.
    """
    return {
        role: {
            **{
                world.ids[other][kind]: world.ids[role][kind]
                for other in ROLES
                for kind in SEEDED_KINDS
            },
            world.key_id: world.ids[role]["api_key"],
        }
        for role in ROLES
    }


def _identities(world: World) -> dict[str, Any]:
    """``[auth.wfc]``: every request as the organisation's first key (it holds every permission);
    ``object_level_authorization`` replays each successful read as another organisation's key."""
    users = {"owner": world.key, "other": world.other_key}
    document = {
        "auth": [
            {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Api {key}"}]}
            for name, key in users.items()
        ]
    }
    path = world.settings.state_dir / "identities.json"
    path.write_bytes(orjson.dumps(document))
    return {"wfc": {"path": str(path), "user": "owner", "peers": list(users)}}


def load_api_schema(world: World) -> Any:
    config = schemathesis.Config.from_dict({**CONFIG, "auth": _identities(world)})
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(world.settings), config=config
    )
    retargeting = _retargeting(world)

    @schema.hook("flatmap_path_parameters")
    def real_ids(context: schemathesis.HookContext, path_parameters: Any) -> Any:
        op = context.operation
        assert op is not None
        kind = _kind(op.path)
        real = [world.ids[_role(op.method)][kind]] if kind else []
        return _sometimes("id", real)(path_parameters).flatmap(_sometimes("name", [FILE_NAME]))

    @schema.hook("map_case")
    def objects_of_the_role(
        context: schemathesis.HookContext, case: schemathesis.Case
    ) -> schemathesis.Case:
        """Point a request at the object of its method's role. An update names its object twice,
        in the URL and as ``data.id``; for a seeded object a positive case names it twice (the
        schema cannot say that both must be equal, only its description does)."""
        path = case.path_parameters or {}
        targets = retargeting[_role(case.method)]
        if path.get("id") not in targets:
            return case
        path["id"] = targets[path["id"]]
        data = case.body.get("data") if isinstance(case.body, dict) else None
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if positive and isinstance(data, dict) and "id" in data:
            data["id"] = path["id"]
        return case

    return schema


def load_data_schema(world: World) -> Any:
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_data_app(world.settings), config=config
    )
    keyring = SigningKeyring(world.settings)

    @schema.hook("flatmap_path_parameters")
    def real_data_keys(context: schemathesis.HookContext, path_parameters: Any) -> Any:
        return _sometimes("data_key", world.data_keys)(path_parameters)

    @schema.auth(refresh_interval=None)
    class DataTokenAuth:
        """A token for exactly the data key in the path, as the API server mints them."""

        def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
            data_key = str((case.path_parameters or {}).get("data_key", ""))
            if scope_of_data_key(data_key) is None:  # not a data key at all: a token for another
                data_key = world.data_keys[0]
            scope = scope_of_data_key(data_key)
            assert scope is not None
            return mint_data_token(
                keyring,
                world.settings,
                organization_id=world.organization_id,
                data_key=data_key,
                scope=scope,
            )

        def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Data {data}"}

    return schema


# ---------------------------------------------------------------------------- the run


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # operation → status → count

    def summary(self) -> str:
        return "\n\n".join(dict.fromkeys(self.failures + self.errors))  # each once, in order

    def unanswered_reads(self, documented: set[str]) -> set[str]:
        """GET operations that never answered 2xx: the seeding failed to reach them."""
        answered = {
            label for label, counts in self.statuses.items() if any(200 <= s < 300 for s in counts)
        }
        return {label for label in documented if label.startswith("GET ")} - answered


def run_schemathesis(schema: Any) -> Report:
    """Every phase of ``schemathesis run``, in process; failures and errors as readable text."""
    report = Report()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event.recorder)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.failures.extend(str(failure) for failure in event.failures)
    return report


def _record(report: Report, recorder: Any) -> None:
    for case_id, interaction in recorder.interactions.items():
        label = recorder.cases[case_id].value.operation.label
        if interaction.response is not None:
            report.statuses.setdefault(label, Counter())[interaction.response.status_code] += 1
    for case_id, checks in recorder.checks.items():
        for check in (check for check in checks if check.failure_info is not None):
            failure, request = check.failure_info.failure, check.failure_info.code_sample
            answer = _answer(recorder.interactions.get(case_id))
            report.failures.append(
                f"{failure.operation} [{check.name}] {failure}\n{request}{answer}"
            )


def _answer(interaction: Any) -> str:
    response = interaction.response if interaction is not None else None
    return "" if response is None else f"\n→ {response.status_code} {response.content[:500]!r}"


def _documented(schema: Any) -> set[str]:
    return {result.ok().label for result in schema.get_all_operations()}


@pytest.mark.parametrize("load", [load_api_schema, load_data_schema], ids=["api", "data"])
def test_each_server_under_every_check_has_no_failures(world, load):
    schema = load(world)
    report = run_schemathesis(schema)
    assert report.failures == [] and report.errors == [], report.summary()
    assert set(report.statuses) == _documented(schema), "operations left untested"
    assert report.unanswered_reads(_documented(schema)) == set(), report.statuses


# ---------------------------------------------------------------------------- pinned

# What Schemathesis found, as plain examples: each was a 500.


@pytest.mark.parametrize(
    ("malformed", "pointer"),
    [
        ({"relationships": {"agents": None}}, "/data"),
        (
            {"relationships": {"agents": {"links": {"self": 1}}}},
            "/data/relationships/agents/links/self",
        ),
        ({"links": {"self": 1}}, "/data/links/self"),
        ({"links": []}, "/data/links"),
        ({"links": {"self": {"rel": "x"}}}, "/data/links/self"),
    ],
)
def test_a_member_of_the_wrong_type_in_a_resource_object_is_400(api, malformed, pointer):
    org = api.create_org()
    document = {"data": {"type": "datasources", "attributes": {"name": "x"}, **malformed}}
    answer = api.post("/datasources", org.key, document)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["source"] == {"pointer": pointer}


def test_a_resource_sent_back_with_its_own_links_is_accepted(api):
    """JSON:API links are URI references: the relative ``self`` the server hands out too."""
    org = api.create_org()
    created = api.post("/sql_snippets", org.key, resource("sql_snippets", name="s", sql="SELECT 1"))
    sent_back = created.json()
    sent_back["data"]["attributes"] = {"description": "x"}
    sent_back["data"].pop("relationships", None)  # read-only ones are refused, never ignored
    snippet = sent_back["data"]["id"]
    sent_back["data"]["links"] = {
        "self": f"/sql_snippets/{snippet}",
        "related": None,
        "about": {"href": "https://example.com/a", "meta": {}},
    }
    answer = api.patch(f"/sql_snippets/{snippet}", org.key, sent_back)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "data",
    [
        {"type": "sql_snippets", "id": "x" * 5000, "attributes": {"name": "s", "sql": "SELECT 1"}},
        {
            "type": "reports",
            "attributes": {"name": "r", "sql_query": "SELECT 1"},
            "relationships": {"datasource": {"data": {"type": "datasources", "id": "x" * 4000}}},
        },
        {
            "type": "reports",
            "attributes": {"name": "r", "sql_query": "SELECT 1"},
            "relationships": {"datasource": {"data": {"type": "datasources"}}},
        },
    ],
    ids=["long-id", "long-related-id", "linkage-without-id"],
)
def test_an_invalid_resource_object_is_told_without_the_validators_words(api, data):
    """Pydantic's own text (``sys.set_int_max_str_digits()``) and its model names in the
    pointer (``/data/.../ResourceIdentifier/id``) reached clients."""
    org = api.create_org()
    answer = api.post(f"/{data['type']}", org.key, {"data": data})
    assert answer.status_code in (400, 403), answer.text
    error = answer.json()["errors"][0]
    assert "sys." not in error["detail"] and "digits" not in error["detail"]
    assert "ResourceIdentifier" not in error["source"]["pointer"]
    assert "wrap" not in error["source"]["pointer"]


def test_renaming_a_snippet_onto_a_taken_name_is_409_and_changes_nothing(api):
    org = api.create_org()
    for name in ("taken", "mine"):
        api.post("/sql_snippets", org.key, resource("sql_snippets", name=name, sql="SELECT 1"))
    mine = api.get("/sql_snippets?filter[name]=mine", org.key).json()["data"][0]["id"]
    answer = api.patch(
        f"/sql_snippets/{mine}", org.key, resource("sql_snippets", mine, name="taken")
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["errors"][0]["code"] == "sql_snippet_name_taken"
    shown = api.get(f"/sql_snippets/{mine}", org.key).json()["data"]["attributes"]
    assert shown["name"] == "mine"


def test_a_path_too_long_for_the_file_system_is_422(api):
    org = api.create_org()
    too_long = "d" * 300  # one name above NAME_MAX, within the attribute's 1024 characters
    attributes = {"name": "long", "database_type": "duckdb", "database": too_long}
    answer = api.post("/datasources", org.key, resource("datasources", **attributes))
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert (error["code"], error["source"]) == (
        "path_not_found",
        {"pointer": "/data/attributes/database"},
    )


@pytest.mark.parametrize("number", [str(2**62), "1" + "0" * 40, "²", "9" * 5000])
def test_a_page_number_too_large_or_not_in_ascii_digits_is_400(api, number):
    org = api.create_org()
    answer = api.get("/datasources", org.key, params={"page[number]": number})
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["source"] == {"parameter": "page[number]"}


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"])
def test_an_audit_filter_at_the_edge_of_time_is_answered(api, moment):
    org = api.create_org()
    for name in ("since", "until"):
        answer = api.get("/audit_events", org.key, params={f"filter[{name}]": moment})
        assert answer.status_code == 200, answer.text
