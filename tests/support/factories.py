"""Small factories for tests: organisations, keys and datasources made through the real services."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import update
from starlette.testclient import TestClient

from api_server.app import create_app
from api_server.permissions import Permission
from api_server.services import api_keys, organizations
from data_server.engine import Limits
from shared.datapaths import ensure_organization_area
from shared.db.models import Dashboard, Execution, Report, utcnow
from shared.settings import Settings
from shared.tokens import Scope, new_data_key
from tests.support.log_watch import remember

# What a sandbox may use in tests that call the engine or the pool directly.
SANDBOX_LIMITS = Limits(
    timeout_seconds=20,
    memory_limit_mb=256,
    threads=1,
    max_temp_directory_size_mb=64,
    max_result_rows=1_000_000,
    max_result_bytes=1 << 30,
)

JSONAPI = "application/vnd.api+json"
# A remote datasource's attributes: enough for the API (nothing connects until a query runs).
# Not port 5432: where the metadata DB is the test PostgreSQL on 127.0.0.1:5432, the egress policy
# refuses that address and port to every datasource (it is the region's own database).
POSTGRES_DATASOURCE = {
    "database_type": "postgres",
    "host": "127.0.0.1",
    "port": 15432,
    "database": "test",
    "username": "reader",
    "require_ssl": False,
}


@dataclass
class Org:
    id: str
    key: str
    sample_datasource_id: str


@dataclass
class Api:
    """An API server app in process, with helpers to seed it."""

    client: TestClient
    settings: Settings
    # Which organisation each key (secret) made here belongs to, for create_datasource's file.
    organization_of_key: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def start(cls, settings: Settings) -> Iterator[Api]:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield cls(client=client, settings=settings)

    @property
    def app(self) -> Any:
        return self.client.app

    def create_org(self, name: str = "Org") -> Org:
        with self.app.state.sessions.begin() as session:
            created = organizations.create_organization(session, self.app.state.secrets, name)
        remember(created.api_key)
        self.organization_of_key[created.api_key] = created.organization_id
        ds = self.get("/datasources", created.api_key).json()["data"][0]["id"]
        return Org(created.organization_id, created.api_key, ds)

    def create_key(
        self,
        org: Org,
        permissions: Sequence[Permission],
        datasource_ids: Sequence[str] | None = None,
    ) -> str:
        with self.app.state.sessions.begin() as session:
            _, secret = api_keys.create_api_key(
                session,
                self.app.state.secrets,
                organization_id=org.id,
                name="test key",
                permissions=list(permissions),
                datasource_ids=datasource_ids,
            )
        remember(secret)
        self.organization_of_key[secret] = org.id
        return secret

    def area(self, org: Org | str) -> Path:
        """The organisation's file area (``<data root>/<org id>``), created as the server does."""
        organization_id = org.id if isinstance(org, Org) else org
        return ensure_organization_area(self.settings.data_root, organization_id)

    def duckdb_file(self, org: Org | str, name: str = "shop.duckdb") -> str:
        """A DuckDB file with table t (a) in the organisation's area; its path as datasources
        name it (relative to the area)."""
        with duckdb.connect(str(self.area(org) / name)) as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS a")
        return name

    def create_dashboard(
        self, org: Org, report_sqls: Sequence[str] = (), **values: Any
    ) -> tuple[str, list[str]]:
        """A dashboard with a report per SQL (``r0``, ``r1``, … on the sample datasource), made
        through the model: its id and its reports' ids."""
        with self.app.state.sessions.begin() as session:
            dashboard = Dashboard(organization_id=org.id, name="Sales", **values)
            session.add(dashboard)
            session.flush()
            reports = [
                Report(
                    organization_id=org.id,
                    datasource_id=org.sample_datasource_id,
                    dashboard_id=dashboard.id,
                    name=f"r{index}",
                    sql_query=sql,
                )
                for index, sql in enumerate(report_sqls)
            ]
            session.add_all(reports)
            session.flush()
            return dashboard.id, [report.id for report in reports]

    def create_datasource(self, key: str, **attributes: Any) -> dict[str, Any]:
        remember(attributes.get("password"))
        attributes.setdefault("name", "Shop")
        attributes.setdefault("database_type", "duckdb")
        if "database" not in attributes:
            attributes["database"] = self.duckdb_file(self.organization_of_key[key])
        response = self.post("/datasources", key, resource("datasources", **attributes))
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def complete_by_hand(self, execution_id: str) -> str:
        """Mark the execution completed with a result of its own (nothing stored): what a grant
        reads. Its data key."""
        data_key = new_data_key(Scope.EXECUTION_RESULT)
        with self.app.state.sessions.begin() as session:
            session.execute(
                update(Execution)
                .where(Execution.id == execution_id)
                .values(status="completed", completed_at=utcnow(), result_size=10,
                        data_key=data_key)
            )  # fmt: skip
        return data_key

    # HTTP helpers ------------------------------------------------------------------------
    def get(self, path: str, key: str | None, **kwargs: Any) -> Any:
        return self.client.get(path, headers=auth(key), **kwargs)

    def delete(self, path: str, key: str | None) -> Any:
        return self.client.delete(path, headers=auth(key))

    def post(
        self,
        path: str,
        key: str | None,
        document: Any,
        content_type: str = JSONAPI,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return self._send("POST", path, key, document, content_type, headers)

    def patch(self, path: str, key: str | None, document: Any, content_type: str = JSONAPI) -> Any:
        return self._send("PATCH", path, key, document, content_type)

    def _send(
        self,
        method: str,
        path: str,
        key: str | None,
        document: Any,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body = document if isinstance(document, (bytes, str)) else _dumps(document)
        sent = {**auth(key), "Content-Type": content_type, **(headers or {})}
        return self.client.request(method, path, content=body, headers=sent)


def _dumps(document: Any) -> bytes:
    import orjson

    return orjson.dumps(document)


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Api {key}"} if key else {}


def resource(type_: str, id_: str | None = None, **attributes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type_, "attributes": attributes}
    if id_ is not None:
        data["id"] = id_
    return {"data": data}


def dump_tables(app: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered: compare before/after, or grep for secrets."""
    from sqlalchemy import text

    from shared.db.models import Base

    dump = {}
    with app.state.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(text(f"SELECT * FROM {table.name}")).all()
            dump[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return dump
