"""Two writes of one object at once, on SQLite and PostgreSQL, the first holding its transaction
open while the second is sent (tests.support.races). The second must wait for the first and
answer what it then finds (404 once the object is gone, 409 or 422 once it changed), never a
500 from a row that vanished under it, and never undo or slip past what the first decided.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api_server.permissions import Permission
from api_server.services import api_keys, datasources, reports, sql_snippets
from tests.support.factories import POSTGRES_DATASOURCE, Api, resource
from tests.support.races import while_held


def _snippet(api: Api, key: str) -> str:
    created = api.post("/sql_snippets", key, resource("sql_snippets", name="paid", sql="1 = 1"))
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def _report(api: Api, key: str, datasource: str) -> str:
    document = {
        "data": {
            "type": "reports",
            "attributes": {"name": "r", "sql_query": "SELECT 1"},
            "relationships": {"datasource": {"data": {"type": "datasources", "id": datasource}}},
        }
    }
    created = api.post("/reports", key, document)
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


@pytest.mark.parametrize("second", ["PATCH", "DELETE"])
@pytest.mark.parametrize("kind", ["sql_snippets", "reports", "api_keys"])
def test_a_write_racing_a_delete_finds_the_object_gone(api, monkeypatch, kind, second):
    """Before, on PostgreSQL, a PATCH racing a DELETE failed with a 500 (StaleDataError: the row
    it read was gone when it wrote), and two DELETEs both answered 204."""
    org = api.create_org()
    if kind == "sql_snippets":
        object_id, module, delete = _snippet(api, org.key), sql_snippets, "delete_snippet"
        change = {"name": "renamed"}
    elif kind == "reports":
        object_id = _report(api, org.key, org.sample_datasource_id)
        module, delete, change = reports, "delete_report", {"name": "renamed"}
    else:
        held = api.create_key(org, [Permission.VIEW_DATASOURCES])
        object_id = api.get("/api_key", held).json()["data"]["id"]
        module, delete, change = api_keys, "delete_key", {"name": "renamed"}
    path = f"/{kind}/{object_id}"

    def patch() -> httpx.Response:
        return api.patch(path, org.key, resource(kind, object_id, **change))

    deleted, raced = while_held(
        monkeypatch,
        module,
        delete,
        lambda: api.delete(path, org.key),
        patch if second == "PATCH" else lambda: api.delete(path, org.key),
    )
    assert deleted.status_code == 204, deleted.text
    assert raced.status_code == 404, raced.text
    assert api.get(path, org.key).status_code == 404


def test_deletes_of_one_datasource_at_once_answer_204_then_404(api, monkeypatch):
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="D1")["id"]
    path = f"/datasources/{datasource}"
    first, second = while_held(
        monkeypatch,
        datasources,
        "delete_datasource",
        lambda: api.delete(path, org.key),
        lambda: api.delete(path, org.key),
    )
    assert (first.status_code, second.status_code) == (204, 404), (first.text, second.text)


def test_creates_at_once_never_pass_the_datasource_limit(api, monkeypatch):
    """Before, creates sent together each counted the same datasources and all succeeded."""
    org = api.create_org()
    limit = api.settings.max_datasources
    for n in range(limit - 1):
        api.create_datasource(org.key, name=f"D{n}")

    def create(name: str) -> Callable[[], httpx.Response]:
        attributes = {"name": name, "database_type": "files", "database": name}
        api.area(org).joinpath(name).mkdir()
        return lambda: api.post("/datasources", org.key, resource("datasources", **attributes))

    first, second = while_held(
        monkeypatch, datasources, "create_datasource", create("last"), create("over")
    )
    assert first.status_code == 201, first.text
    assert second.status_code == 409 and "datasource_limit_reached" in second.text, second.text


def test_a_new_destination_racing_a_new_password_still_needs_the_password(api, monkeypatch):
    """Before, a host change read the datasource before a concurrent PATCH gave it a password,
    so it was not asked for the password again: the password then went to the new host."""
    org = api.create_org()
    created = api.post(
        "/datasources",
        org.key,
        resource("datasources", name="pg", **POSTGRES_DATASOURCE),
    )
    assert created.status_code == 201, created.text
    datasource = created.json()["data"]["id"]
    path = f"/datasources/{datasource}"
    password = resource("datasources", datasource, password="s3cret")
    host = resource("datasources", datasource, host="127.0.0.2")
    given, moved = while_held(
        monkeypatch,
        datasources,
        "update_datasource",
        lambda: api.patch(path, org.key, password),
        lambda: api.patch(path, org.key, host),
    )
    assert given.status_code == 200, given.text
    assert moved.status_code == 422 and "password" in moved.text, moved.text


def test_an_operators_disable_racing_an_api_enable_holds(api, monkeypatch):
    """Before, the API's enable read the key before the operator's disable committed, and
    undid it: the key authenticated again."""
    org = api.create_org()
    key = api.create_key(org, [Permission.MANAGE_USERS])
    key_id = api.get("/api_key", key).json()["data"]["id"]
    other = api.create_key(org, [Permission.MANAGE_USERS])
    sessions = api.app.state.sessions

    def operator_disables() -> httpx.Response:
        with sessions.begin() as session:
            api_keys.set_enabled_by_operator(
                session, api_keys.find_key_anywhere(session, key_id), enabled=False
            )
        return httpx.Response(204)

    path = f"/api_keys/{key_id}"
    _, enabled = while_held(
        monkeypatch,
        api_keys,
        "set_enabled_by_operator",
        operator_disables,
        lambda: api.patch(path, other, resource("api_keys", key_id, enabled=True)),
    )
    assert enabled.status_code == 409 and "disabled_by_operator" in enabled.text, enabled.text
    assert api.get("/api_key", key).status_code == 401


@pytest.mark.parametrize("deleted", ["datasource", "report", "datasource refreshed"])
def test_a_run_racing_the_delete_of_what_it_runs_on_is_404(api, monkeypatch, deleted):
    """Before, the execution's insert failed its foreign key once the delete committed: a 500."""
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="D1")["id"]
    report = _report(api, org.key, datasource)
    if deleted.startswith("datasource"):
        api.delete(f"/reports/{report}", org.key)
        module, function, path = datasources, "delete_datasource", f"/datasources/{datasource}"
        run = f"/datasources/{datasource}/executions"
        body = {"sql_query": "SELECT 1", "parameters": {}}
        if deleted == "datasource refreshed":
            run, body = f"/datasources/{datasource}/refresh", {}
    else:
        module, function, path = reports, "delete_report", f"/reports/{report}"
        run, body = f"/reports/{report}/executions", {}
    gone, ran = while_held(
        monkeypatch,
        module,
        function,
        lambda: api.delete(path, org.key),
        lambda: api.client.post(run, json=body, headers={"Authorization": f"Api {org.key}"}),
    )
    assert gone.status_code == 204, gone.text
    assert ran.status_code == 404, ran.text


def test_a_run_racing_the_delete_of_its_key_is_401(api, monkeypatch):
    """The key was checked when the request began: its execution's insert then failed the key's
    foreign key, a 500 (an outside probe: 9-18 of 24 runs racing a key's delete)."""
    org = api.create_org()
    doomed = api.create_key(org, [Permission.MANAGE_DATASOURCES])
    key_id = api.get("/api_key", doomed).json()["data"]["id"]
    deleted, ran = while_held(
        monkeypatch,
        api_keys,
        "delete_key",
        lambda: api.delete(f"/api_keys/{key_id}", org.key),
        lambda: api.client.post(
            f"/datasources/{org.sample_datasource_id}/executions",
            json={"sql_query": "SELECT 1", "parameters": {}},
            headers={"Authorization": f"Api {doomed}"},
        ),
    )
    assert deleted.status_code == 204, deleted.text
    assert ran.status_code == 401, ran.text
    assert ran.json()["errors"][0]["code"] == "unauthorized"
    assert ran.headers["www-authenticate"] == 'Api realm="dataferry"'


@pytest.mark.parametrize("change", ["DELETE", "lock"])
def test_a_scoped_change_racing_a_hidden_report_joining_the_dashboard_is_404(
    api, monkeypatch, change
):
    """A key restricted to one datasource changes a dashboard while a report on another joins it.
    Before, on PostgreSQL, the key's lock waited for the join, and its visibility check, a
    subquery of the locking statement, still saw the reports from before: the key deleted (or
    renamed and locked) a dashboard it may no longer see (an outside probe, 6 of 25 tries)."""
    org = api.create_org()
    mine = api.create_datasource(org.key, name="Mine")["id"]
    dashboard, _ = api.create_dashboard(org)
    scoped = api.create_key(org, [Permission.MANAGE_DASHBOARDS], [mine])
    hidden = {
        "data": {
            "type": "reports",
            "attributes": {"name": "hidden", "sql_query": "SELECT 1"},
            "relationships": {
                "datasource": {"data": {"type": "datasources", "id": org.sample_datasource_id}},
                "dashboard": {"data": {"type": "dashboards", "id": dashboard}},
            },
        }
    }
    path = f"/dashboards/{dashboard}"

    def scoped_change() -> httpx.Response:
        if change == "DELETE":
            return api.delete(path, scoped)
        locking = resource("dashboards", dashboard, name="renamed", is_locked=True)
        return api.patch(path, scoped, locking)

    joined, changed = while_held(
        monkeypatch,
        reports,
        "create_report",
        lambda: api.post("/reports", org.key, hidden),
        scoped_change,
    )
    assert joined.status_code == 201, joined.text
    assert changed.status_code == 404, changed.text
    kept = api.get(path, org.key).json()["data"]["attributes"]
    assert (kept["name"], kept["is_locked"]) == ("Sales", False)


def test_a_restore_racing_a_static_filter_of_its_variable_does_not_deadlock(api, monkeypatch):
    """Before, on PostgreSQL: the filter's create inserted its row, then locked the organisation
    to queue its SQL; a restore that had locked the organisation meanwhile waited on that row's
    unique name: a deadlock, the restore's 500. The create now locks the organisation first."""
    from api_server.services import dashboard_backups
    from api_server.services import filters as filter_service
    from tests.api_server.test_dashboard_backups import _backup, _restore, _sales_dashboard
    from tests.api_server.test_filters import _create, _dropdown

    source, target = api.create_org("Source"), api.create_org("Target")
    shop = api.create_datasource(source.key, name="Shop")["id"]
    backup = _backup(api, source.key, _sales_dashboard(api, source, shop))
    their_shop = api.create_datasource(target.key, name="Shop")["id"]
    mapping = {shop: their_shop, source.sample_datasource_id: target.sample_datasource_id}
    inserted, restore_locked = threading.Event(), threading.Event()
    queue_static, mapped = filter_service._queue_static, dashboard_backups._mapped_datasources

    def queue_after_the_restore_locked(*args: Any, **kwargs: Any) -> Any:
        if not inserted.is_set():  # the filter's row is written: let the restore lock now
            inserted.set()
            restore_locked.wait(2)  # it cannot, once the create holds the organisation
        return queue_static(*args, **kwargs)

    def mapped_and_locked(*args: Any, **kwargs: Any) -> Any:
        restore_locked.set()
        return mapped(*args, **kwargs)

    monkeypatch.setattr(filter_service, "_queue_static", queue_after_the_restore_locked)
    monkeypatch.setattr(dashboard_backups, "_mapped_datasources", mapped_and_locked)
    static = _dropdown(
        options_source="static_sql", options_sql_query="SELECT 'de'", values=None, value_names=None
    )
    answers: dict[str, httpx.Response] = {}
    create = threading.Thread(
        target=lambda: answers.setdefault(
            "filter", _create(api, target.key, target.sample_datasource_id, **static)
        )
    )
    create.start()
    assert inserted.wait(30)
    answers["restore"] = _restore(api, target.key, backup, mapping)
    create.join(30)
    assert answers["filter"].status_code == 201, answers["filter"].text
    restored = answers["restore"]
    assert restored.status_code == 409 and "filter_conflict" in restored.text, restored.text


def test_a_refresh_racing_a_change_of_the_same_static_filter_does_not_deadlock(api, monkeypatch):
    """Before, on PostgreSQL: a refresh locked the filter's row, then the organisation (to queue
    the SQL, and now to cancel the run it replaces); a change, which locks the organisation
    first, then waited on that row: a deadlock. The refresh now locks the organisation first."""
    from api_server.services import filters as filter_service
    from tests.api_server.test_filters import static_filter

    org = api.create_org()
    filter_id = static_filter(api, org)
    attributes = {"options_sql_query": "SELECT 'fr'"}
    document = {"data": {"type": "filters", "id": filter_id, "attributes": attributes}}
    refreshed, changed = while_held(
        monkeypatch,
        filter_service,
        "get_filter",
        lambda: api.post(f"/filters/{filter_id}/refresh", org.key, b""),
        lambda: api.patch(f"/filters/{filter_id}", org.key, document),
    )
    assert (refreshed.status_code, changed.status_code) == (200, 200), (
        refreshed.text,
        changed.text,
    )


def test_a_report_created_on_a_datasource_being_deleted_is_422(api, monkeypatch):
    """Before, on PostgreSQL, the report read the datasource before the delete committed, and
    its insert then failed the foreign key: a 500."""
    org = api.create_org()
    datasource = api.create_datasource(org.key, name="D1")["id"]
    deleted, created = while_held(
        monkeypatch,
        datasources,
        "delete_datasource",
        lambda: api.delete(f"/datasources/{datasource}", org.key),
        lambda: api.post(
            "/reports",
            org.key,
            {
                "data": {
                    "type": "reports",
                    "attributes": {"name": "r", "sql_query": "SELECT 1"},
                    "relationships": {
                        "datasource": {"data": {"type": "datasources", "id": datasource}}
                    },
                }
            },
        ),
    )
    assert deleted.status_code == 204, deleted.text
    assert created.status_code == 422 and "datasource_not_found" in created.text, created.text
