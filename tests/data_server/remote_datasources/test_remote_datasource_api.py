"""Database datasources at the API: the password is never shown nor logged, bad attributes are 422
with a pointer, ports default per type, SSH tunnel attributes are kept but cannot run; and the
sqlite file type reads its own file only.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.support.remote_databases import create, created, failure, rows

pytestmark = pytest.mark.e2e


def test_the_password_is_never_shown_and_not_in_the_logs(region, client, server, datasources):
    datasource = datasources[server.kind]
    shown = client.http.get(f"{client.api_url}/datasources/{datasource}", headers=client.headers)
    assert shown.status_code == 200 and "password" not in shown.json()["data"]["attributes"]
    listed = client.http.get(f"{client.api_url}/datasources", headers=client.headers)
    assert server.password not in shown.text + listed.text
    failure(client, datasource, "SELECT * FROM duckdb_databases()")
    assert server.password not in region.log()


BAD_REMOTE_ATTRIBUTES = [
    ({"host": None}, "missing_attribute", "host"),
    ({"host": "  "}, "missing_attribute", "host"),
    ({"database": None}, "missing_attribute", "database"),
    ({"username": None}, "missing_attribute", "username"),
    ({"port": 0}, "invalid_attribute", "port"),
    ({"port": 65536}, "invalid_attribute", "port"),
    ({"ssh_tunnel_port": 70000}, "invalid_attribute", "ssh_tunnel_port"),
    ({"host": "169.254.169.254"}, "destination_not_allowed", "host"),
]


@pytest.mark.parametrize(("overrides", "code", "attribute"), BAD_REMOTE_ATTRIBUTES)
def test_bad_remote_attributes_are_422_with_a_pointer(client, postgres, overrides, code, attribute):
    response = create(client, **postgres.attributes(**overrides))
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["code"], error["source"]["pointer"]) == (code, f"/data/attributes/{attribute}")


def test_port_defaults_per_type_and_a_file_type_takes_no_credentials(region, client):
    for kind, port in (("postgres", 5432), ("mysql", 3306)):
        attributes = {"name": kind, "database_type": kind, "host": "127.0.0.1",
                      "database": "d", "username": "u", "require_ssl": False}  # fmt: skip
        response = create(client, **attributes)
        assert response.status_code == 201, response.text
        assert response.json()["data"]["attributes"]["port"] == port
    sqlite3.connect(region.area(client.organization_id) / "a.sqlite").close()
    refused = create(client, name="x", database_type="sqlite", database="a.sqlite", password="pw")
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["source"]["pointer"] == "/data/attributes/password"


def test_ssh_tunnel_attributes_are_stored_but_the_datasource_cannot_run(client, postgres):
    tunnel = {"ssh_tunnel_host": "bastion.example", "ssh_tunnel_port": 22, "ssh_tunnel_user": "me"}
    response = create(client, **postgres.attributes(name="tunnelled", **tunnel))
    assert response.status_code == 201, response.text
    attributes = response.json()["data"]["attributes"]
    assert {name: attributes[name] for name in tunnel} == tunnel
    datasource = response.json()["data"]["id"]
    for path, body in (("executions", {"sql_query": "SELECT 1"}), ("test_connection", None),
                       ("refresh", None)):  # fmt: skip
        answer = client.http.post(
            f"{client.api_url}/datasources/{datasource}/{path}", headers=client.headers, json=body
        )
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["errors"][0]["code"] == "ssh_tunnel_not_supported"


# ---------------------------------------------------------------------------- SQLite


def test_sqlite_file_datasource_reads_its_file_only(region, client):
    area = region.area(client.organization_id)
    with sqlite3.connect(area / "shop.sqlite") as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER, item TEXT)")
        connection.execute("DELETE FROM orders")
        connection.executemany("INSERT INTO orders VALUES (?, ?)", [(1, "tea"), (2, "café")])
    datasource = created(client, name="shop", database_type="sqlite", database="shop.sqlite")
    assert rows(client, datasource, "SELECT id, item FROM orders ORDER BY id") == [
        [1, "tea"],
        [2, "café"],
    ]
    for sql, code in (
        ("SELECT * FROM sqlite_scan('/etc/hostname', 'x')", "forbidden_function"),
        ("SELECT * FROM sqlite_query('ds', 'SELECT 1')", "forbidden_function"),
        ("DELETE FROM orders", "not_a_select"),
    ):
        assert failure(client, datasource, sql)["error_code"] == code
    refresh = client.http.post(
        f"{client.api_url}/datasources/{datasource}/refresh", headers=client.headers
    ).json()
    assert client.wait_until_done(refresh["execution_id"])["execution_status"] == "completed"
    attributes = client.http.get(
        f"{client.api_url}/datasources/{datasource}", headers=client.headers
    ).json()["data"]["attributes"]
    assert attributes["server_version"].startswith("SQLite 3.")
    assert (attributes["total_row_count"], attributes["total_row_count_exact"]) == (2, True)
