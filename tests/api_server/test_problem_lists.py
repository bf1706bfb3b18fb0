"""An error document lists at most ``MAX_LISTED_PROBLEMS`` problems and then how many more it
found: a 1 MiB body of 80,000 unknown names was answered with an error object each (14 MB, most
of a second of the API server's CPU, and 20 such requests held its health check up for 7 s)."""

from __future__ import annotations

import pytest

from shared.errors import (
    MAX_LISTED_PROBLEMS,
    UnlistedProblems,
    Unprocessable,
    ValidationErrors,
)
from shared.problems import error_document
from tests.support.datasources import new_datasource_document
from tests.support.factories import dump_tables

JSON = "application/json"
NAMES = 80_000  # about as many as a 1 MiB body holds
MANY = {f"k{index}": 1 for index in range(NAMES)}
UNLISTED = NAMES - MAX_LISTED_PROBLEMS


def test_a_list_of_problems_keeps_the_first_and_counts_the_rest():
    found = [Unprocessable(f"problem {n}", pointer=f"/{n}") for n in range(25)]
    listed = error_document(ValidationErrors([*found[:3], UnlistedProblems(100), *found[3:]]))
    errors = listed["errors"]
    assert [e["detail"] for e in errors[:-1]] == [f"problem {n}" for n in range(20)]
    assert errors[-1]["code"] == "more_problems" and errors[-1]["status"] == "422"
    assert errors[-1]["detail"] == "105 more problems found, not listed."  # 5 beyond 20, 100 before


def test_a_short_list_is_listed_whole():
    found = [Unprocessable("one"), Unprocessable("two")]
    assert [e["detail"] for e in error_document(ValidationErrors(found))["errors"]] == [
        "one",
        "two",
    ]


def _counted(response) -> list[dict]:
    assert response.status_code == 422, response.text
    assert len(response.content) < 10_000
    errors = response.json()["errors"]
    assert len(errors) == MAX_LISTED_PROBLEMS + 1
    assert errors[-1]["code"] == "more_problems"
    return errors


def test_a_create_with_a_great_many_unknown_attributes_lists_a_few_and_writes_nothing(api):
    org = api.create_org()
    before = dump_tables(api.app)
    document = new_datasource_document(api, org)
    document["data"]["attributes"] |= MANY
    errors = _counted(api.post("/datasources", org.key, document))
    assert {e["code"] for e in errors[:-1]} == {"unknown_attribute"}
    assert errors[0]["source"]["pointer"] == "/data/attributes/k0"
    assert errors[-1]["detail"] == f"{UNLISTED} more problems found, not listed."
    assert dump_tables(api.app) == before


@pytest.mark.parametrize("where", ["body", "parameters"])
def test_a_run_with_a_great_many_unknown_members_lists_a_few(api, where):
    org = api.create_org()
    body = {"sql_query": "SELECT 1", "parameters": {}}
    if where == "body":
        body |= MANY
    else:
        body["parameters"] = MANY
    path = f"/datasources/{org.sample_datasource_id}/executions"
    errors = _counted(api.post(path, org.key, body, JSON))
    first = "/k0" if where == "body" else "/parameters/k0"
    assert errors[0]["source"]["pointer"] == first
    assert errors[-1]["detail"] == f"{UNLISTED} more problems found, not listed."


def test_a_dashboard_run_with_a_great_many_unknown_parameters_lists_a_few(api):
    org = api.create_org()
    dashboard_id, _ = api.create_dashboard(org, ["SELECT 1"])
    path = f"/dashboards/{dashboard_id}/executions"
    errors = _counted(api.post(path, org.key, {"parameters": MANY}, JSON))
    assert errors[0]["source"]["pointer"] == "/parameters/k0"


def test_a_list_of_problems_is_logged_by_its_first_problems_code():
    """A skipped dashboard refresh logged code=invalid_attribute, the list's own, for a report
    whose API error was invalid_value (the second outside probe)."""
    found = [Unprocessable("bad date", code="invalid_value"), Unprocessable("other")]
    problems = ValidationErrors(found)
    assert (problems.code, problems.detail) == ("invalid_value", "bad date")
