"""What the remote datasource tests (tests/data_server/remote_datasources/) share: the servers'
description, the module's names and limits, and short ways to create a datasource and run SQL
through the region's API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from data_server import engine
from data_server.remote_databases import RemoteDatabaseSpec
from tests.support.client import DataferryClient

NAME = f"dataferry_remote_{os.getpid()}"  # schema/database and login of these tests

# Longer than the region's connect timeout (remote_datasources/conftest.py) by enough that a
# connect the child gives up on (its guard: the connect timeout plus 1 s) is reported as such
# before the pool ends the call as a timeout (the query timeout plus 1.5 s), also on a slow CI.
QUERY_TIMEOUT = 5

BIG_ROWS = 1_000_000


@dataclass
class Server:
    kind: str  # postgres | mysql
    host: str
    port: int
    database: str  # where the fixture tables are: the datasource's database
    schema: str  # how queries name the fixture tables' schema
    user: str
    password: str
    admin: Any
    admin_login: tuple[str, str]  # user and password of the server's admin: it may write

    def attributes(self, **overrides: Any) -> dict[str, Any]:
        attributes = {
            "name": f"{self.kind} fixtures",
            "database_type": self.kind,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "username": self.user,
            "password": self.password,
            "require_ssl": False,
        }
        return {**attributes, **overrides}

    def scalar(self, sql: str, *args: Any) -> Any:
        with self.admin.cursor() as cursor:
            cursor.execute(sql, args or None)
            row = cursor.fetchone()
        return row[0] if row else None

    def active_queries(self, naming: str = "") -> int:
        """Statements of our login the server is running now (those whose text holds
        ``naming``, if given)."""
        if self.kind == "postgres":
            return self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active' "
                "AND strpos(query, %s) > 0",
                self.user,
                naming,
            )
        return self.scalar(
            "SELECT count(*) FROM information_schema.processlist WHERE user = %s "
            "AND command <> 'Sleep' "  # the extension's statements are prepared: 'Execute'
            "AND locate(%s, coalesce(info, '')) > 0",
            self.user,
            naming,
        )

    def connections(self) -> int:
        if self.kind == "postgres":
            return self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", self.user
            )
        return self.scalar(
            "SELECT count(*) FROM information_schema.processlist WHERE user = %s", self.user
        )

    def fingerprint(self) -> Any:
        """What the fixture tables hold, to show that nothing changed them."""
        table = f"{self.schema}.events"
        return self.scalar(f"SELECT count(*) * 1000 + sum(id) FROM {table}")


def create(client: DataferryClient, **attributes: Any) -> httpx.Response:
    return client.http.post(
        f"{client.api_url}/datasources",
        headers={**client.headers, "Content-Type": "application/vnd.api+json"},
        json={"data": {"type": "datasources", "attributes": attributes}},
    )


def created(client: DataferryClient, **attributes: Any) -> str:
    response = create(client, **attributes)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def finished(client: DataferryClient, datasource_id: str, sql: str, parameters=None) -> dict:
    execution = client.run(datasource_id, sql, parameters)
    return client.wait_until_done(execution["execution_id"], timeout=60)


def failure(client: DataferryClient, datasource_id: str, sql: str) -> dict:
    done = finished(client, datasource_id, sql)
    assert done["execution_status"] == "failed", done
    return done


def rows(client: DataferryClient, datasource_id: str, sql: str, parameters=None) -> list:
    return client.query(datasource_id, sql, parameters=parameters).json()["rows"]


def remote_spec(server: Server, **overrides: Any) -> engine.DatasourceSpec:
    values = {
        "host": server.host,
        "address": "127.0.0.1",
        "port": server.port,
        "database": server.database,
        "username": server.user,
        "password": server.password,
        "require_ssl": False,
        "verify_ssl": False,
        "connect_timeout_seconds": 2.0,
        **overrides,
    }
    return engine.DatasourceSpec(
        database_type=server.kind, path="", remote=RemoteDatabaseSpec(**values)
    )


LIMITS = engine.Limits(
    timeout_seconds=QUERY_TIMEOUT,
    memory_limit_mb=256,
    threads=2,
    max_temp_directory_size_mb=64,
    max_result_rows=1000,
    max_result_bytes=1 << 20,
)
