"""``/openapi.json`` and ``/docs`` on both servers: complete, valid, offline, and true to the code.

The route walk makes a new route without a description (or a description without a route) fail
here; the authorisation matrix keeps each operation's security and permissions honest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from api_server.app import create_app
from data_server import endpoints as data_endpoints
from data_server.app import create_app as create_data_app
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.reference_page import render_html
from shared.settings import Settings
from shared.web.routing import DOCS_POLICY
from tests.support.authz_matrix import RULES

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}  # HEAD is implied by GET; OPTIONS is never routed


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """Both servers in process, once for the module: nothing here writes anything."""
    state = tmp_path_factory.mktemp("openapi")
    settings = Settings(state_dir=state, sample_scale=0.001)
    upgrade_to_head(create_metadata_engine(settings.database_url))
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as api,
        TestClient(create_data_app(settings), raise_server_exceptions=False) as data,
    ):
        yield {"api": api, "data": data}


@pytest.fixture(params=["api", "data"])
def server(request: pytest.FixtureRequest, clients: dict[str, TestClient]) -> TestClient:
    """Each test of both servers runs once per server."""
    return clients[request.param]


def fetch_document(client: TestClient) -> dict[str, Any]:
    answer = client.get("/openapi.json")  # no credentials: the reference is public
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def routed(client: TestClient) -> set[tuple[str, str]]:
    """(method, path) of every route; ``resource_route`` keeps its methods in ``handled_methods``
    (its Route takes every method so that it can answer 405 itself)."""
    return {
        (method, route.path)
        for route in client.app.routes
        for method in getattr(route, "handled_methods", None) or route.methods
        if method not in UNDOCUMENTED_METHODS
    }


def test_every_route_is_documented_and_every_operation_is_routed(server):
    document = fetch_document(server)
    documented = {(method, path) for method, path, _ in operations(document)}
    routes = routed(server)
    assert len(routes) >= 6, "few routes found: the route walk is broken"
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations that no route serves"


def test_the_document_is_valid_openapi_3_1(server):
    document = fetch_document(server)
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises on the first violation of the OpenAPI 3.1 schema


def test_operation_ids_are_unique_and_every_operation_is_complete(server):
    found = list(operations(fetch_document(server)))
    ids = Counter(op["operationId"] for _, _, op in found)
    assert [name for name, count in ids.items() if count > 1] == []
    for method, path, op in found:
        assert op["tags"] and op["summary"] and op["description"], (method, path)
        assert any(status.startswith("2") for status in op["responses"]), (method, path)
        if op["security"]:  # anything that takes credentials can refuse them
            assert "401" in op["responses"], (method, path)


def test_the_docs_page_is_self_contained_html_naming_every_operation(server):
    document = fetch_document(server)
    answer = server.get("/docs")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    page = answer.text
    assert page.startswith("<!doctype html>")
    for method, path, op in operations(document):
        assert f'id="op-{op["operationId"]}"' in page, (method, path)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    # A browser is told so: nothing but the inline style loads.
    assert answer.headers["content-security-policy"] == DOCS_POLICY
    assert "default-src 'none'" in DOCS_POLICY and "script-src" not in DOCS_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_every_api_operation_has_the_security_and_permissions_of_the_authz_matrix(clients):
    paths = fetch_document(clients["api"])["paths"]
    for rule in RULES:
        op = paths[rule.path][rule.method.lower()]
        assert str(rule.success) in op["responses"], rule.name
        if rule.public:
            assert op["security"] == [], rule.name
            continue
        assert op["security"] == [{"ApiKey": []}], rule.name
        assert set(op["x-permissions"]) == {str(p) for p in rule.permissions}, rule.name
        assert {"401", "429"} <= set(op["responses"]), rule.name
        if rule.permissions:
            assert "403" in op["responses"], rule.name
        if rule.target:
            assert "404" in op["responses"], rule.name


def test_fetch_data_documents_exactly_the_query_parameters_it_accepts(clients):
    op = fetch_document(clients["data"])["paths"]["/data/{data_key}"]["get"]
    assert op["security"] == [{"DataToken": []}, {"DataTokenInUrl": []}]
    documented = {p["name"] for p in op["parameters"] if p["in"] == "query"}
    accepted = data_endpoints._RESULT_PARAMETERS | data_endpoints._SCHEMA_PARAMETERS
    # The token's query parameter is described by its security scheme, as OpenAPI asks.
    in_url = fetch_document(clients["data"])["components"]["securitySchemes"]["DataTokenInUrl"]
    assert documented | {in_url["name"]} == accepted


def test_the_page_escapes_what_the_document_says():
    hostile = "<script>alert(1)</script>"
    document = {
        "openapi": "3.1.0",
        "info": {"title": hostile, "version": "1", "description": hostile},
        "paths": {
            "/x": {
                "get": {
                    "operationId": "x",
                    "summary": hostile,
                    "description": f"`{hostile}`",
                    "parameters": [{"name": hostile, "in": "query", "schema": {"enum": [hostile]}}],
                    "responses": {"200": {"description": hostile}},
                }
            }
        },
    }
    page = render_html(document)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
