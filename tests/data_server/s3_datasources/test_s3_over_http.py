"""``s3`` datasources through the API and the worker (both servers in process): created,
refreshed and queried; wrong secrets, other prefixes, credentials in answers, denied endpoints
and bad attributes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from data_server.sandbox_pool import memory_cap_of
from tests.data_server.s3_datasources.conftest import QUERY_MEMORY_LIMIT_MB
from tests.support.factories import Api, resource
from tests.support.log_watch import remember
from tests.support.s3_buckets import Bucket


@dataclass
class Service:
    """Both servers in process (the data server running its workers and sandbox children)."""

    api: Api
    data: TestClient
    key: str

    def create(self, **attributes: object) -> httpx.Response:
        remember(attributes.get("password"))
        document = resource("datasources", name="bucket", **attributes)
        return self.api.post("/datasources", self.key, document)

    def datasource(self, bucket: Bucket, prefix: str, **overrides: object) -> str:
        url = urlsplit(bucket.endpoint_url)
        attributes = {
            "database_type": "s3",
            "database": f"s3://{bucket.name}/{prefix}",
            "host": "127.0.0.1",
            "port": url.port,
            "username": bucket.key_id,
            "password": bucket.secret,
            "require_ssl": url.scheme == "https",
            **overrides,
        }
        response = self.create(**attributes)
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def action(self, datasource_id: str, action: str) -> dict:
        response = self.api.post(f"/datasources/{datasource_id}/{action}", self.key, b"")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, execution_id: str) -> dict:
        for _ in range(60):
            response = self.api.get(f"/executions/{execution_id}?wait=5", self.key)
            attributes = response.json()["data"]["attributes"]
            if attributes["execution_status"] in ("completed", "failed", "cancelled"):
                return attributes
        raise AssertionError(f"execution {execution_id} did not finish")

    def run(self, datasource_id: str, sql: str) -> dict:
        response = self.api.client.post(
            f"/datasources/{datasource_id}/executions",
            json={"sql_query": sql},
            headers={"Authorization": f"Api {self.key}"},
        )
        assert response.status_code == 200, response.text
        return self.wait(response.json()["data"]["id"])

    def fetch(self, grant: dict, **params: str) -> bytes:
        remember(grant["data_access_token"])
        response = self.data.get(
            f"/data/{grant['data_key']}",
            params=params,
            headers={"Authorization": f"Data {grant['data_access_token']}"},
        )
        assert response.status_code == 200, response.text
        return response.content

    def rows(self, datasource_id: str, sql: str) -> list[dict]:
        done = self.run(datasource_id, sql)
        assert done["execution_status"] == "completed", done
        grant = self.api.get(f"/executions/{done['execution_id']}/data", self.key).json()
        return json.loads(self.fetch(grant, format="records"))

    def schema(self, datasource_id: str) -> bytes:
        done = self.wait(self.action(datasource_id, "refresh")["execution_id"])
        assert done["execution_status"] == "completed", done
        grant = self.api.get(f"/datasources/{datasource_id}/schema", self.key).json()
        return self.fetch(grant)

    def failed(self, datasource_id: str, sql: str) -> dict:
        done = self.run(datasource_id, sql)
        assert done["execution_status"] == "failed", done
        return done


@pytest.fixture(scope="module")
def service(servers) -> Service:
    api, data = servers
    return Service(api, data, api.create_org("S3").key)


def test_created_over_http_refreshed_and_queried(plain, service):
    datasource = service.datasource(plain, "data/", s3_region="us-east-1")
    assert service.action(datasource, "test_connection") == {"status": "ok", "error_message": None}
    schema = json.loads(service.schema(datasource))
    tables = sorted(t["name"] for s in schema["schemas"] for t in s["tables"])
    assert tables == ["clicks", "events", "orders", "people"]
    rows = service.rows(datasource, "SELECT city FROM orders WHERE amount > 8 ORDER BY id")
    assert rows == [{"city": "Bern"}, {"city": "Oslo"}]
    shown = service.api.get(f"/datasources/{datasource}", service.key).json()["data"]
    assert shown["attributes"]["database"] == f"s3://{plain.name}/data/"
    assert "password" not in shown["attributes"]


def test_a_wrong_secret_is_reported_as_an_authentication_failure(secured, service):
    wrong = "wrong-secret-over-http-5b2e"
    datasource = service.datasource(secured, "data/", password=wrong, verify_ssl=False)
    outcome = service.action(datasource, "test_connection")
    assert outcome["status"] == "error"
    assert outcome["error_message"].startswith("The object store refused the access key id")
    assert "HTTP 403" in outcome["error_message"] and wrong not in outcome["error_message"]
    failed = service.failed(datasource, "SELECT * FROM people")
    assert failed["error_code"] == "authentication_failed"
    assert wrong not in failed["error_message"]


_EMPTY_LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><KeyCount>0</KeyCount>'
    b"<IsTruncated>false</IsTruncated></ListBucketResult>"
)


class _Endpoint(BaseHTTPRequestHandler):
    """Answers a prefix's listing (``list-type=2``) as an empty one and anything else, the
    bucket's own listing too, with ``other``: a page for any path, as a web server or a captive
    portal does, or a 403, as an object store does to a key that may list only its prefix."""

    other: tuple[int, str, bytes]

    def do_GET(self) -> None:
        listing = "list-type=2" in self.path
        status, kind, body = (200, "application/xml", _EMPTY_LISTING) if listing else self.other
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


class _AnyPathIsAPage(_Endpoint):
    other = (200, "text/html", b"<html><body>Welcome</body></html>")


class _PrefixOnlyKey(_Endpoint):
    other = (403, "application/xml", b"<Error><Code>AccessDenied</Code></Error>")


class _EndlessPage(_Endpoint):
    """A page without a length, sent until the client goes (at most ``BOUND`` bytes): DuckDB
    reads such a body whole into memory, beyond its own memory limit."""

    BOUND = 8 * 1024**3
    sent = 0

    def do_GET(self) -> None:
        if "list-type=2" in self.path:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()  # no length: the body ends when the connection closes
        if self.command == "HEAD":
            return
        chunk = b"<p>" * (1 << 18)
        try:
            while type(self).sent < self.BOUND:
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:  # the client went away
            pass

    do_HEAD = do_GET


def test_a_hostile_endpoint_cannot_take_the_data_servers_memory(plain, service):
    """An endpoint of the tenant's choosing answers the bucket's listing with an endless page:
    the sandbox's watchdog stops the child holding it at its memory cap, long before the page
    ends."""
    outcome = _test_connection_at(service, plain, _EndlessPage)
    assert outcome["status"] == "error", outcome
    assert "exceeded its memory limit" in outcome["error_message"], outcome
    cap = memory_cap_of(QUERY_MEMORY_LIMIT_MB) * 1024**2
    assert _EndlessPage.sent < 2 * cap  # 264 MB here (DuckDB holds about twice what it read)


def _test_connection_at(service: Service, bucket: Bucket, handler: type[_Endpoint]) -> dict:
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        port = site.server_address[1]
        datasource = service.datasource(bucket, "data/", port=port, require_ssl=False)
        return service.action(datasource, "test_connection")
    finally:
        site.shutdown()
        site.server_close()


def test_test_connection_tells_an_object_store_from_any_web_server(plain, service):
    """An empty prefix of a real bucket tests fine, as one holding objects does, and so does
    one whose key may not list the whole bucket; an endpoint that answers every path with a
    page lists nothing either, but is no object store."""
    empty = service.datasource(plain, "nothing-here/")
    assert service.action(empty, "test_connection") == {"status": "ok", "error_message": None}
    limited = _test_connection_at(service, plain, _PrefixOnlyKey)
    assert limited == {"status": "ok", "error_message": None}
    web = _test_connection_at(service, plain, _AnyPathIsAPage)
    assert web["status"] == "error", web
    assert "not as an S3-compatible object store" in web["error_message"]


def test_other_prefixes_and_datasources_stay_out_of_reach(plain, service, servers):
    other = Service(servers[0], servers[1], servers[0].create_org("Other").key)
    other.datasource(plain, "private/")  # its view "secret" is no view of ours
    datasource = service.datasource(plain, "data/")
    for sql, code in [
        ("SELECT * FROM secret", "execution_error"),
        (f"SELECT * FROM read_csv('s3://{plain.name}/private/secret.csv')", "forbidden_function"),
        (f"SELECT * FROM 's3://{plain.name}/private/secret.csv'", "forbidden_operation"),
        # A qualified name is joined back into a path, and the ".." is collapsed only after the
        # locked instance compared the URL with the prefix: the check alone stops these.
        (f'SELECT * FROM "s3://{plain.name}/data/../private/secret".csv', "forbidden_operation"),
        (
            f'SELECT * FROM "s3://{plain.name}/data/../..".private."secret.csv"',
            "forbidden_operation",
        ),
    ]:
        failed = service.failed(datasource, sql)
        assert failed["error_code"] == code, (sql, failed)


def test_credentials_appear_in_no_result_schema_or_error(plain, service):
    """(And in no log line: tests/contract/test_logs_hold_no_secrets.py greps for them.)"""
    secret, key_id = "s3-secret-that-must-stay-hidden-81ac", "S3KEYIDTHATSTAYSHIDDEN"
    remember(key_id)
    datasource = service.datasource(plain, "data/", username=key_id, password=secret)
    answers = [service.schema(datasource)]  # moto takes any key: the refresh succeeds
    answers.append(json.dumps(service.rows(datasource, "SELECT * FROM duckdb_views()")).encode())
    failed = service.failed(datasource, "SELECT * FROM duckdb_secrets()")
    answers.append(json.dumps(failed).encode())
    for answer in answers:
        assert secret.encode() not in answer and key_id.encode() not in answer


@pytest.mark.parametrize("host", ["169.254.169.254", "[::ffff:169.254.169.254]", "10.0.0.8"])
def test_endpoints_in_denied_networks_are_refused(service, host):
    response = service.create(database_type="s3", database="bucket-x/data", host=host)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "destination_not_allowed"
    assert error["source"] == {"pointer": "/data/attributes/host"}


@pytest.mark.parametrize(
    ("attributes", "pointer", "code"),
    [
        ({"database": "bucket-x/a/../b"}, "database", "invalid_location"),
        ({"database": "bucket-x/a?s3_endpoint=evil.example"}, "database", "invalid_location"),
        ({"database": "s3://Not_A_Bucket/a"}, "database", "invalid_location"),
        ({"database": "bucket-x", "username": "AKIAONLYTHEID"}, "password", "missing_attribute"),
        ({"database": "bucket-x", "port": 9000}, "port", "invalid_attribute"),
        ({"database": "bucket-x", "s3_region": "eu west"}, "s3_region", "invalid_attribute"),
        (
            {"database": "bucket-x", "ssh_tunnel_host": "jump"},
            "ssh_tunnel_host",
            "invalid_attribute",
        ),
        ({}, "database", "missing_attribute"),
    ],
)
def test_bad_attributes_are_refused_with_a_pointer(service, attributes, pointer, code):
    response = service.create(database_type="s3", **attributes)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["code"], error["source"]) == (code, {"pointer": f"/data/attributes/{pointer}"})


def test_s3_region_belongs_to_s3_datasources_only(service):
    response = service.create(
        database_type="postgres", host="127.0.0.1", database="shop", username="reader",
        s3_region="eu-west-1",
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["source"] == {"pointer": "/data/attributes/s3_region"}
