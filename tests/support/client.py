"""A small dataferry client for end-to-end tests: run → wait → data grant → fetch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.log_watch import remember


@dataclass
class DataferryClient:
    api_url: str
    data_url: str
    key: str
    # One connection pool, as a backend application would keep: a new client per call costs more
    # (TLS context, connection set-up) than the server spends answering. Safe across threads.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60), repr=False)
    organization_id: str = ""  # the key's organisation: its files live in <data root>/<this id>

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api {self.key}"}

    def run(
        self, datasource_id: str, sql: str, parameters: dict | None = None, **headers: str
    ) -> dict[str, Any]:
        response = self.http.post(
            f"{self.api_url}/datasources/{datasource_id}/executions",
            json={"sql_query": sql, "parameters": parameters or {}},
            headers={**self.headers, **headers},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()["data"]["attributes"]

    def create_datasource(
        self, name: str, database_type: str, database: str | None = None
    ) -> dict[str, Any]:
        """A datasource created through the API (``database`` left out when None); its
        resource."""
        attributes = {"name": name, "database_type": database_type}
        if database is not None:
            attributes["database"] = database
        response = self.http.post(
            f"{self.api_url}/datasources",
            headers={**self.headers, "Content-Type": "application/vnd.api+json"},
            json={"data": {"type": "datasources", "attributes": attributes}},
        )
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def create_duckdb_datasource(self, name: str, file_name: str) -> str:
        """A datasource over a DuckDB file in the organisation's area (``file_name`` relative to
        it); its id."""
        return self.create_datasource(name, "duckdb", file_name)["id"]

    def execution(self, execution_id: str, wait: float = 0) -> dict[str, Any]:
        response = self.http.get(
            f"{self.api_url}/executions/{execution_id}",
            params={"wait": wait} if wait else None,
            headers=self.headers,
            timeout=wait + 30,
        )
        assert response.status_code == 200, response.text
        return response.json()["data"]["attributes"]

    def wait_until_done(self, execution_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            attributes = self.execution(
                execution_id, wait=min(10, max(0.1, deadline - time.monotonic()))
            )
            if attributes["execution_status"] in ("completed", "failed", "cancelled"):
                return attributes
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"execution {execution_id} still {attributes['execution_status']}"
                )

    def grant(self, execution_id: str) -> dict[str, Any]:
        response = self.http.get(
            f"{self.api_url}/executions/{execution_id}/data", headers=self.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        remember(response.json()["data_access_token"])
        return response.json()

    def fetch(
        self, grant: dict[str, Any], accept: str | None = None, **params: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Data {grant['data_access_token']}"}
        if accept:
            headers["Accept"] = accept
        return self.http.get(
            f"{self.data_url}/data/{grant['data_key']}", headers=headers, params=params, timeout=60
        )

    def query(
        self,
        datasource_id: str,
        sql: str,
        accept: str | None = None,
        parameters: dict | None = None,
        **params: Any,
    ) -> httpx.Response:
        execution = self.run(datasource_id, sql, parameters)
        done = self.wait_until_done(execution["execution_id"])
        assert done["execution_status"] == "completed", done
        return self.fetch(self.grant(execution["execution_id"]), accept, **params)
