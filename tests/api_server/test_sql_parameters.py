"""Cluvio parameters through the API: bad input is a 422 that stores nothing, bound values are
exact and seen only by the key that ran the query.

The binding itself is tested in process in tests/sql_templating/test_parameters.py; the rows each
form returns are checked end to end in tests/e2e/test_sql_parameters.py.
"""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import update

from api_server.permissions import Permission
from api_server.resources.executions import WITHHELD_ERROR_MESSAGE
from shared.db.models import Execution
from tests.support.factories import dump_tables
from tests.support.sql_parameter_cases import BAD_INPUT, pick


def _run(api, key, datasource_id, body):
    return api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("sql", "parameters", "pointer", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT[::4]],
)
def test_the_api_answers_422_and_stores_nothing(api, sql, parameters, pointer, code):
    org = api.create_org()
    before = dump_tables(api.app)
    response = _run(
        api, org.key, org.sample_datasource_id, {"sql_query": sql, "parameters": parameters}
    )
    assert response.status_code == 422, response.text
    assert {"pointer": pointer} in [error.get("source") for error in response.json()["errors"]]
    assert dump_tables(api.app) == before


@pytest.mark.parametrize("digits", ["12345678901234567890123", "-9223372036854775809"])
def test_an_integer_beyond_bigint_is_refused_not_rounded(api, digits):
    """Over HTTP, not only in process: a JSON parser that reads it as a double would match
    other rows than the one asked for."""
    org = api.create_org()
    body = (
        '{"sql_query": "SELECT * FROM orders WHERE {order_id=v}", "parameters": {"filters": '
        f'[{{"variable_name": "v", "selected_values": ["x", {digits}]}}]}}}}'
    )
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=body.encode(),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "number_out_of_range"
    assert error["source"] == {"pointer": "/parameters/filters/0/selected_values/1"}


@pytest.mark.parametrize(
    ("value_type", "bound"),
    [("number", 2**63 - 1), ("text", "9223372036854775807"), (None, "9223372036854775807")],
)
def test_the_largest_bigint_is_bound_exactly(api, value_type, bound):
    """As a number where a number filter defines the variable; as its text where a text filter
    does, or none (an ad hoc variable is Cluvio's text input): Cluvio's value type is how the
    values are "represented in SQL"."""
    org = api.create_org()
    if value_type is not None:
        attributes = {"name": "V", "variable_name": "v", "control_type": "text"}
        attributes["value_type"] = value_type
        document = {"data": {"type": "filters", "attributes": attributes}}
        created = api.post("/filters", org.key, document)
        assert created.status_code == 201, created.text
    body = (
        '{"sql_query": "SELECT {v.value} AS v", "parameters": {"filters": '
        '[{"variable_name": "v", "selected_values": [9223372036854775807]}]}}'
    )
    response = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=body.encode(),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["attributes"]["bound_parameters"] == [bound]


def test_only_the_key_that_ran_it_sees_the_bound_values(api):
    org = api.create_org()
    other_key = api.create_key(org, [Permission.MANAGE_DATASOURCES, Permission.VIEW_DATASOURCES])
    body = {"sql_query": "SELECT * FROM orders WHERE {status=s}", "parameters": pick("s", "paid")}
    created = _run(api, org.key, org.sample_datasource_id, body)
    assert created.status_code == 200, created.text
    attributes = created.json()["data"]["attributes"]
    assert attributes["expanded_sql"] == "SELECT * FROM orders WHERE ((status) = $1)"
    assert attributes["bound_parameters"] == ["paid"]

    path = f"/executions/{created.json()['data']['id']}"
    assert api.get(path, org.key).json()["data"]["attributes"]["bound_parameters"] == ["paid"]
    seen_by_other = api.get(path, other_key)
    assert seen_by_other.status_code == 200
    assert "bound_parameters" not in seen_by_other.json()["data"]["attributes"]
    assert "expanded_sql" not in seen_by_other.json()["data"]["attributes"]
    assert "paid" not in seen_by_other.text


def test_only_the_key_that_ran_it_sees_an_error_message_that_may_quote_values(api):
    """DuckDB quotes values in some messages (``invalid date field format: "pin42"``)."""
    org = api.create_org()
    other_key = api.create_key(org, [Permission.VIEW_DATASOURCES])
    body = {"sql_query": "SELECT CAST({d.value} AS DATE)", "parameters": pick("d", "pin42")}
    created = _run(api, org.key, org.sample_datasource_id, body)
    execution_id = created.json()["data"]["id"]
    message = 'Conversion Error: invalid date field format: "pin42"'
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(status="failed", error_code="execution_error", error_message=message)
        )
    path = f"/executions/{execution_id}"
    assert api.get(path, org.key).json()["data"]["attributes"]["error_message"] == message
    seen_by_other = api.get(path, other_key)
    assert seen_by_other.json()["data"]["attributes"]["error_code"] == "execution_error"
    assert seen_by_other.json()["data"]["attributes"]["error_message"] == WITHHELD_ERROR_MESSAGE
    assert "pin42" not in seen_by_other.text
    # A cancellation's message is the server's own: every key sees it as it is.
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(status="cancelled", error_code="cancelled", error_message="Cancelled.")
        )
    cancelled = api.get(path, other_key).json()["data"]["attributes"]
    assert (cancelled["error_code"], cancelled["error_message"]) == ("cancelled", "Cancelled.")


def test_another_key_does_not_see_a_message_quoting_sql_it_sent_directly(api):
    """The outside probe's case: no values bound, but DuckDB quotes a literal of the SQL, which
    only the key that sent it sees (``expanded_sql``). A report's SQL is its readers' own: a
    report run's message stays visible to them."""
    org = api.create_org()
    other_key = api.create_key(org, [Permission.VIEW_DATASOURCES])
    direct = _run(
        api, org.key, org.sample_datasource_id, {"sql_query": "SELECT 'SECRET-DATE'::DATE"}
    )
    _, [report] = api.create_dashboard(org, ["SELECT 1"])
    run_path = f"/reports/{report}/executions"
    of_report = api.post(run_path, org.key, {}, content_type="application/json")
    assert of_report.status_code == 200, of_report.text
    message = 'Conversion Error: invalid date field format: "SECRET-DATE"'
    ids = [direct.json()["data"]["id"], of_report.json()["data"]["id"]]
    with api.app.state.sessions.begin() as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids))
            .values(status="failed", error_code="execution_error", error_message=message)
        )
    seen = [api.get(f"/executions/{i}", other_key).json()["data"]["attributes"] for i in ids]
    assert seen[0]["error_message"] == WITHHELD_ERROR_MESSAGE
    assert seen[1]["error_message"] == message
    own = api.get(f"/executions/{ids[0]}", org.key).json()["data"]["attributes"]
    assert own["error_message"] == message
    # Its key deleted (the execution's api_key_id is then set null): still the sender's own.
    with api.app.state.sessions.begin() as session:
        session.execute(update(Execution).where(Execution.id == ids[0]).values(api_key_id=None))
    orphan = api.get(f"/executions/{ids[0]}", other_key).json()["data"]["attributes"]
    assert orphan["error_message"] == WITHHELD_ERROR_MESSAGE


def test_the_same_idempotency_key_with_other_parameters_is_refused(api):
    org = api.create_org()
    headers = {"Idempotency-Key": "k1"}
    sql = "SELECT * FROM orders WHERE {status=s}"
    first = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": pick("s", "paid")}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json", **headers},
    )
    second = api.client.post(
        f"/datasources/{org.sample_datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql, "parameters": pick("s", "open")}),
        headers={"Authorization": f"Api {org.key}", "Content-Type": "application/json", **headers},
    )
    assert first.status_code == 200 and second.status_code == 422
    assert second.json()["errors"][0]["code"] == "idempotency_key_reused"


def test_a_number_filter_refuses_what_is_no_number_before_anything_runs(api):
    """It was bound as text and failed in DuckDB ("Could not convert string"); now a 422 at the
    value; a string that spells a number binds as the number."""
    org = api.create_org()
    attributes = {"name": "N", "variable_name": "n", "control_type": "text", "value_type": "number"}
    created = api.post("/filters", org.key, {"data": {"type": "filters", "attributes": attributes}})
    assert created.status_code == 201, created.text
    body = {"sql_query": "SELECT * FROM orders WHERE {order_id=n}", "parameters": pick("n", "abc")}
    refused = _run(api, org.key, org.sample_datasource_id, body)
    assert refused.status_code == 422, refused.text
    error = refused.json()["errors"][0]
    assert error["code"] == "invalid_value"
    assert error["source"] == {"pointer": "/parameters/filters/0/selected_values/0"}
    body["parameters"] = pick("n", "1" * 4301)  # more digits than Python reads: a 500 once
    refused = _run(api, org.key, org.sample_datasource_id, body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["code"] == "invalid_value"
    body["parameters"] = pick("n", "2", "2.50")
    accepted = _run(api, org.key, org.sample_datasource_id, body)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["data"]["attributes"]["bound_parameters"] == [2, "2.50"]
