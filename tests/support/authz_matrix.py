"""The authorisation matrix, as data: every route of both servers, who may call it, what it answers.

``RULES`` lists each (method, route) of the API server with what the test world needs to call it:
whether the route's object belongs to a datasource (a key restricted to other datasources then
gets 404), which object fills ``{id}``, and the status a permitted key gets. The permissions that
admit a key (any one of them; none: any valid key) and whether a route needs a key at all are read
from the operation's declaration (``api_server.resources``), the one place the server enforces
them from; ``expected_status`` turns a rule and a caller into the one right answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api_server.permissions import Permission, effective_permissions
from api_server.resource_layer.operations import Operation
from api_server.resources import all_operations

DECLARED: dict[tuple[str, str], Operation] = {
    (op.method, op.template): op for op in all_operations()
}


@dataclass(frozen=True)
class Rule:
    method: str
    path: str
    success: int
    # "datasource", "files_datasource", "execution", "snippet", "api_key", "dashboard",
    # "dashboard_group", "report", "filter": the object in {id}
    # ({name} is the files datasource's file)
    target: str = ""
    scoped: bool = False  # the object belongs to (a key: is restricted to) the target datasource
    # The body names the world's files datasource: a caller that does not reach it (another
    # organisation's key, a key restricted to another datasource) gets the 422 of an unknown id.
    names_datasource: bool = False
    unrestricted_only: bool = False  # keys restricted to listed datasources get 403
    every_permission: bool = False  # keys lacking any permission get 403
    # The object holds one that belongs to the target datasource: a key restricted to another
    # datasource sees it but may not change it (403; a dashboard group holding the dashboard).
    holds_scoped: bool = False
    body: Callable[[Any], Any] | None = field(default=None, compare=False)
    json_body: bool = False  # plain JSON (Cluvio's action operations) instead of JSON:API
    # An upload: (Content-Type, the file's bytes) for the world.
    upload: Callable[[Any], tuple[str, bytes]] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def declared(self) -> Operation | None:
        """None for the routes both servers share (health, metrics, documentation): public."""
        return DECLARED.get((self.method, self.path))

    @property
    def permissions(self) -> tuple[Permission, ...]:
        return self.declared.permissions if self.declared else ()

    @property
    def public(self) -> bool:
        return self.declared is None or self.declared.public


def _resource(kind: str, target: str, **attributes: Any) -> Callable[[Any], Any]:
    """A JSON:API update document for the world's ``target`` object."""
    return lambda world: {"data": {"type": kind, "id": world.ids[target], "attributes": attributes}}


# A backup of a dashboard with one report on the datasource "source" (docs/dashboard-backups.md).
_BACKUP = {
    "format": "dataferry.dashboard-backup",
    "version": 1,
    "dashboard": {"name": "restored"},
    "reports": [{"key": "r", "datasource": "source", "name": "r", "sql_query": "SELECT 1"}],
    "datasources": [{"ref": "source", "name": "F1", "database_type": "files"}],
}

RULES = [
    Rule("GET", "/healthz", 200),
    Rule("GET", "/readyz", 200),
    Rule("GET", "/metrics", 200),
    Rule("GET", "/openapi.json", 200),
    Rule("GET", "/docs", 200),
    Rule("GET", "/.well-known/jwks.json", 200),
    Rule("GET", "/api_key", 200),
    Rule("GET", "/api_keys", 200),
    # The target key is restricted to the target datasource: a key restricted to another one
    # does not reach it (services.api_keys.within_scope).
    Rule("GET", "/api_keys/{id}", 200, target="api_key", scoped=True),
    Rule("PATCH", "/api_keys/{id}", 200, target="api_key", scoped=True,
         body=_resource("api_keys", "api_key", name="renamed")),
    Rule("DELETE", "/api_keys/{id}", 204, target="api_key", scoped=True),
    Rule("GET", "/audit_events", 200, unrestricted_only=True, every_permission=True),
    Rule("GET", "/datasources", 200),
    Rule("POST", "/datasources", 201, unrestricted_only=True,
         body=lambda world: {"data": {"type": "datasources", "attributes": {
             "name": "new", "database_type": "duckdb", "database": world.database}}}),
    Rule("GET", "/datasources/{id}", 200, target="datasource", scoped=True),
    Rule("PATCH", "/datasources/{id}", 200, target="datasource",
         scoped=True, body=_resource("datasources", "datasource", name="renamed")),
    Rule("DELETE", "/datasources/{id}", 204, target="datasource",
         scoped=True),
    Rule("POST", "/datasources/{id}/executions", 200, target="datasource", scoped=True,
         body=lambda world: {"sql_query": "SELECT 1"}, json_body=True),
    Rule("POST", "/datasources/{id}/test_connection", 200,
         target="datasource", scoped=True),
    Rule("POST", "/datasources/{id}/refresh", 200, target="datasource",
         scoped=True),
    # No refresh has completed in process (no data server runs): 409 once authorised.
    Rule("GET", "/datasources/{id}/schema", 409, target="datasource",
         scoped=True),
    Rule("GET", "/datasources/{id}/files", 200, target="files_datasource",
         scoped=True),
    Rule("GET", "/datasources/{id}/files/{name}", 200,
         target="files_datasource", scoped=True),
    Rule("PUT", "/datasources/{id}/files/{name}", 200,
         target="files_datasource", scoped=True,
         upload=lambda world: ("text/csv", b"order_id,amount\n2,3.5\n")),
    Rule("DELETE", "/datasources/{id}/files/{name}", 200,
         target="files_datasource", scoped=True),
    Rule("GET", "/datasources/{id}/database_file", 200,
         target="datasource", scoped=True),
    Rule("PUT", "/datasources/{id}/database_file", 200,
         target="datasource", scoped=True,
         upload=lambda world: ("application/octet-stream", world.database_bytes())),
    Rule("GET", "/executions/{id}", 200, target="execution", scoped=True),
    Rule("DELETE", "/executions/{id}", 204, target="execution", scoped=True),
    # Not completed (no data server runs): 204, "no data yet", once authorised.
    Rule("GET", "/executions/{id}/data", 204, target="execution", scoped=True),
    Rule("POST", "/executions/{id}/cancel", 200, target="execution", scoped=True),
    Rule("GET", "/dashboards", 200),
    Rule("POST", "/dashboards", 201,
         body=lambda world: {"data": {"type": "dashboards", "attributes": {"name": "new"}}}),
    # The world's dashboard has a report on the target datasource: a key restricted to another
    # datasource does not see it (services.dashboards.visible_dashboards).
    Rule("GET", "/dashboards/{id}", 200, target="dashboard", scoped=True),
    Rule("PATCH", "/dashboards/{id}", 200, target="dashboard", scoped=True,
         body=_resource("dashboards", "dashboard", name="renamed")),
    Rule("DELETE", "/dashboards/{id}", 204, target="dashboard", scoped=True),
    Rule("GET", "/dashboard_groups", 200),
    Rule("POST", "/dashboard_groups", 201,
         body=lambda world: {"data": {"type": "dashboard_groups", "attributes": {"name": "new"}}}),
    Rule("GET", "/dashboard_groups/{id}", 200, target="dashboard_group"),
    # The world's group holds the world's dashboard.
    Rule("PATCH", "/dashboard_groups/{id}", 200, target="dashboard_group", holds_scoped=True,
         body=_resource("dashboard_groups", "dashboard_group", name="renamed")),
    Rule("DELETE", "/dashboard_groups/{id}", 204, target="dashboard_group", holds_scoped=True),
    Rule("GET", "/reports", 200),
    Rule("POST", "/reports", 201, names_datasource=True,
         body=lambda world: {"data": {"type": "reports", "attributes": {
             "name": "new", "sql_query": "SELECT 1"}, "relationships": {"datasource": {
                 "data": {"type": "datasources", "id": world.ids["files_datasource"]}}}}}),
    # The world's report is on the files datasource.
    Rule("GET", "/reports/{id}", 200, target="report", scoped=True),
    Rule("PATCH", "/reports/{id}", 200, target="report", scoped=True,
         body=_resource("reports", "report", name="renamed")),
    Rule("DELETE", "/reports/{id}", 204, target="report", scoped=True),
    Rule("POST", "/reports/{id}/executions", 200, target="report", scoped=True,
         body=lambda world: {"parameters": {}}, json_body=True),
    Rule("POST", "/dashboards/{id}/executions", 200, target="dashboard", scoped=True,
         body=lambda world: {}, json_body=True),
    Rule("POST", "/dashboards/{id}/backup", 200, target="dashboard", scoped=True),
    # The datasource map names the world's files datasource.
    Rule("POST", "/dashboards/restore", 201, names_datasource=True, json_body=True,
         body=lambda world: {"backup": _BACKUP, "datasource_map": {
             "source": world.ids["files_datasource"]}}),
    Rule("GET", "/filters", 200),
    # On the files datasource: a filter on none is the organisation's, which a restricted key
    # may not write (see the snippets').
    Rule("POST", "/filters", 201, names_datasource=True,
         body=lambda world: {"data": {"type": "filters", "attributes": {
             "name": "new", "variable_name": "fresh", "control_type": "text",
             "value_type": "text"}, "relationships": {"datasource": {"data": {
                 "type": "datasources", "id": world.ids["files_datasource"]}}}}}),
    # The world's filter has manual options and the files datasource.
    Rule("GET", "/filters/{id}", 200, target="filter", scoped=True),
    Rule("PATCH", "/filters/{id}", 200, target="filter", scoped=True,
         body=_resource("filters", "filter", name="renamed")),
    Rule("DELETE", "/filters/{id}", 204, target="filter", scoped=True),
    Rule("GET", "/filters/{id}/options", 200, target="filter", scoped=True),
    # Its options are manual, not static SQL: 409 once authorised.
    Rule("POST", "/filters/{id}/refresh", 409, target="filter", scoped=True),
    Rule("GET", "/sql_snippets", 200),
    # Snippets serve every datasource's SQL: a restricted key reads them, never writes them.
    Rule("POST", "/sql_snippets", 201, unrestricted_only=True,
         body=lambda world: {"data": {"type": "sql_snippets", "attributes": {
             "name": "fresh", "sql": "SELECT 1"}}}),
    Rule("GET", "/sql_snippets/{id}", 200, target="snippet"),
    Rule("PATCH", "/sql_snippets/{id}", 200, target="snippet", unrestricted_only=True,
         body=_resource("sql_snippets", "snippet", sql="SELECT 2")),
    Rule("DELETE", "/sql_snippets/{id}", 204, target="snippet", unrestricted_only=True),
]  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """Who calls: no key, a bad key, or a key of some organisation with some permissions."""

    name: str
    key: str | None = None
    same_organization: bool = True
    permissions: frozenset[Permission] = frozenset(Permission)
    restricted: bool = False  # limited to listed datasources
    reaches_target_datasource: bool = True


def expected_status(rule: Rule, caller: Caller) -> int:
    if rule.public:
        return rule.success
    if caller.key is None:
        return 401
    held = _with_implied(caller.permissions)
    if rule.permissions and not held & set(rule.permissions):
        return 403
    if rule.unrestricted_only and caller.restricted:
        return 403
    if rule.every_permission and held != set(Permission):
        return 403
    if rule.target and not caller.same_organization:
        return 404
    if rule.names_datasource and not (
        caller.same_organization and caller.reaches_target_datasource
    ):
        return 422
    if rule.scoped and not caller.reaches_target_datasource:
        return 404
    if rule.holds_scoped and not caller.reaches_target_datasource:
        return 403
    return rule.success


def _with_implied(permissions: frozenset[Permission]) -> set[Permission]:
    return set(effective_permissions(permissions))
