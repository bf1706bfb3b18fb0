"""Dashboard backups: Cluvio's Create Dashboard Backup (``POST /dashboards/{id}/backup``) and,
beyond Cluvio, their restore as a new dashboard (``POST /dashboards/restore``).

Cluvio's backup is an internal format; this one is documented (docs/dashboard-backups.md) and
versioned (``format``, ``version``). Each entry holds what its resource both reads back and
takes on create (``kept_attributes``), validated on restore by that resource's own attributes
model, so a restore refuses what Create would, with a pointer into the backup. Entries name each
other by backup-local references: reports by ``key`` (the layout's ``id``), datasources by
``ref`` (mapped to the target's datasources by the request), snippets by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.responses import Response

from api_server import jsonapi
from api_server.permissions import Permission
from api_server.principals import Principal
from api_server.resource_layer import documentation as doc
from api_server.resource_layer.operations import Body, Operations
from api_server.resource_layer.resource_types import (
    READ_ONLY,
    WRITE_ONLY,
    Attributes,
    AttributesModel,
)
from api_server.resource_layer.responses import one
from api_server.resources.dashboard_settings import distinct
from api_server.resources.dashboards import DASHBOARDS, DashboardAttributes
from api_server.resources.executions import NO_ROOM_TO_RUN
from api_server.resources.filters import FilterAttributes
from api_server.resources.reports import ReportAttributes
from api_server.resources.sql_snippets import SqlSnippetAttributes
from api_server.services import dashboard_backups
from api_server.services.dashboard_backups import (
    BackupRows,
    Restore,
    RestoredFilter,
    RestoredReport,
    filter_definition,
)
from shared import openapi as oa
from shared.db.models import Dashboard, Filter, Report, utcnow
from shared.display_names import is_display_name
from shared.errors import AppError, Conflict, Unprocessable, ValidationErrors
from shared.input_models import InputModel, Problem, validate_input

FORMAT = "dataferry.dashboard-backup"
VERSION = 1
# A restore's body (the backup and its map): a few hundred reports with long SQL and large
# charts fit; a backup that would not is refused when it is made (409 `backup_too_large`).
MAX_RESTORE_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 1000  # of each kind: reports, snippets, datasources (one transaction restores all)
RFC_3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
REFERENCE = Annotated[str, Field(min_length=1, max_length=64)]


def kept_attributes(model: AttributesModel) -> tuple[str, ...]:
    """What a backup keeps of a resource: each attribute it both returns and takes (neither the
    server's own, such as ``created_at``, nor a write-only input, such as a deprecated name)."""
    return tuple(
        name
        for name, info in model.model_fields.items()
        if not any(mark is READ_ONLY or mark is WRITE_ONLY for mark in info.metadata)
    )


def _entry_model(
    name: str, attributes: AttributesModel, required: tuple[str, ...] = (), **own: Any
) -> AttributesModel:
    """The model of one entry: the kept attributes as the resource's model declares them
    (``required``: those its create requires outside the model), and the entry's ``own``
    members."""
    fields: dict[str, Any] = {}
    for attribute in kept_attributes(attributes):
        info = attributes.model_fields[attribute]
        if attribute in required:
            info = FieldInfo.merge_field_infos(info, default=PydanticUndefined)
        fields[attribute] = (info.annotation, info)
    return create_model(name, __base__=Attributes, **own, **fields)


DashboardEntry = _entry_model("DashboardBackupDashboard", DashboardAttributes)
ReportEntry = _entry_model(
    "DashboardBackupReport",
    ReportAttributes,
    required=("sql_query",),
    key=(REFERENCE, Field(description="What the dashboard's `layout` names the report by.")),
    datasource=(REFERENCE, Field(description="The `ref` of its datasource in `datasources`.")),
)
FilterEntry = _entry_model(
    "DashboardBackupFilter",
    FilterAttributes,
    datasource=(
        REFERENCE | None,
        Field(description="The `ref` of its options' datasource in `datasources`, or null."),
    ),
)
SqlSnippetEntry = _entry_model("DashboardBackupSqlSnippet", SqlSnippetAttributes)


class DatasourceEntry(InputModel):
    """A datasource the backup's entries run on: a reference and what identifies it to a person
    mapping it; never a connection attribute."""

    ref: Annotated[REFERENCE, Field(description="The source datasource's id.")]
    name: Annotated[str, Field(min_length=1, max_length=255)]
    database_type: Annotated[str, Field(min_length=1, max_length=32)]


# Entries are objects here, each validated alone by its model (so that its problems carry the
# codes its resource gives them); ``_documented`` gives the model's schema to the documentation.
Entries = Annotated[
    list[dict[str, Any]],
    Field(max_length=MAX_ENTRIES),
    Problem("invalid_type", f"An array of at most {MAX_ENTRIES} objects."),
]


def _documented(model: type[Any], many: bool = True) -> Any:
    """Field metadata: the documented schema of an entry (``many``: of a list of them)."""
    entry = oa.model_schema(model)
    schema = oa.array(entry, maxItems=MAX_ENTRIES) if many else entry
    return Field(json_schema_extra=lambda field: field.update(schema))


def _integer_only(value: Any) -> Any:
    """JSON's ``true`` and ``1.0`` are not version 1, though pydantic's lax Literal takes both."""
    return value if type(value) is int else None


_UNSUPPORTED = Problem(
    "unsupported_backup_version",
    f'This server restores backups of format "{FORMAT}", version {VERSION}.',
)


class DashboardBackup(InputModel):
    """A backup of one dashboard (docs/dashboard-backups.md)."""

    not_an_object = Problem("invalid_type", "backup is a dashboard backup object.")

    format: Annotated[Literal["dataferry.dashboard-backup"], _UNSUPPORTED]
    version: Annotated[Literal[1], BeforeValidator(_integer_only), _UNSUPPORTED]
    created_at: Annotated[
        str | None,
        Field(
            pattern=RFC_3339,
            json_schema_extra={"format": "date-time"},
            description="When it was made (informative: a restore ignores it).",
        ),
        Problem("invalid_type", "created_at is an RFC 3339 time such as 2024-06-01T12:00:00Z."),
    ] = None
    dashboard: Annotated[
        dict[str, Any],
        _documented(DashboardEntry, many=False),
        Problem("invalid_type", "dashboard is an object of the dashboard's attributes."),
    ]
    reports: Annotated[
        Entries,
        _documented(ReportEntry),
        Field(description="The dashboard's reports, oldest first."),
    ] = Field(default_factory=list)
    filters: Annotated[
        Entries,
        _documented(FilterEntry),
        Field(description="The filters of the variables their SQL uses; by variable_name."),
    ] = Field(default_factory=list)
    sql_snippets: Annotated[
        Entries,
        _documented(SqlSnippetEntry),
        Field(description="The snippets their SQL names, and those these name; by name."),
    ] = Field(default_factory=list)
    datasources: Annotated[
        list[DatasourceEntry],
        Field(max_length=MAX_ENTRIES, description="What the entries run on, by first use."),
        AfterValidator(
            distinct("duplicate_datasource_ref", "The datasource", lambda d: d.ref, "ref")
        ),
    ] = Field(default_factory=list)


class RestoreRequest(InputModel):
    not_an_object = Problem("invalid_attribute", "The body must be a JSON object.")

    backup: DashboardBackup
    datasource_map: Annotated[
        dict[REFERENCE, REFERENCE],
        Field(
            max_length=MAX_ENTRIES,
            description="Each `ref` of the backup's `datasources` → the id of a datasource the "
            "key reaches, which its reports (and filters) will run on.",
        ),
        Problem("invalid_type", "datasource_map maps each datasource ref to a datasource id."),
    ] = Field(default_factory=dict)


OPERATIONS = Operations(
    "Dashboard backups",
    "Cluvio's Create Dashboard Backup, in a documented format, and its restore (beyond Cluvio).",
    schemas=oa.model_schemas(
        {"DashboardBackup": DashboardBackup, "DashboardRestoreRequest": RestoreRequest}
    ),
)
MANAGE = (Permission.MANAGE_DASHBOARDS,)


# ---------------------------------------------------------------------------- backing up


def backup_document(rows: BackupRows) -> dict[str, Any]:
    """The backup of ``rows``, every list in the order ``collect_backup`` gives."""
    keys = {report.id: f"report-{number}" for number, report in enumerate(rows.reports, 1)}
    dashboard = _kept(DashboardAttributes, rows.dashboard)
    dashboard["layout"] = [
        {**item, "id": keys[item["id"]]} for item in dashboard["layout"] or [] if item["id"] in keys
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": utcnow(),
        "dashboard": dashboard,
        "reports": [
            {"key": keys[r.id], "datasource": r.datasource_id, **_kept(ReportAttributes, r)}
            for r in rows.reports
        ],
        "filters": [
            {"datasource": f.datasource_id, **filter_definition(_kept(FilterAttributes, f))}
            for f in rows.filters
        ],
        "sql_snippets": [_kept(SqlSnippetAttributes, snippet) for snippet in rows.sql_snippets],
        "datasources": [
            {"ref": ds.id, "name": ds.name, "database_type": ds.database_type}
            for ds in rows.datasources
        ],
    }


def _kept(attributes: AttributesModel, row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in kept_attributes(attributes)}


def _restorable(document: dict[str, Any]) -> bytes:
    """The document as sent, or 409 when a restore could not take it."""
    rendered = jsonapi.render(document)
    crowded = [kind for kind, value in document.items() if isinstance(value, list)]
    if len(rendered) > MAX_RESTORE_BYTES or any(len(document[k]) > MAX_ENTRIES for k in crowded):
        raise Conflict(
            f"This dashboard's backup would exceed what a restore takes ({MAX_RESTORE_BYTES} "
            f"bytes, {MAX_ENTRIES} entries of a kind): split the dashboard.",
            code="backup_too_large",
        )
    return rendered


@OPERATIONS.post(
    "/dashboards/{id}/backup",
    operation_id="backupDashboard",
    summary="Create Dashboard Backup",
    description="A documented, versioned backup of the dashboard (docs/dashboard-backups.md): "
    "its attributes, its reports, the SQL snippets and filters their SQL uses and the datasources "
    "they run on (by reference, name and type, never a connection attribute); never results "
    "(a static filter's options), groups or sharing. `POST /dashboards/restore` restores it. A key restricted to some datasources "
    "backs up only a dashboard whose every report runs on one of them; others answer as "
    "unknown ids do.",
    permissions=MANAGE,
    audit="dashboard.backup",
    subject=DASHBOARDS,
    produces=oa.JSON_MEDIA_TYPE,
    responses={"200": oa.response("The backup.", oa.ref("DashboardBackup"))},
    errors={
        400: doc.BAD_QUERY,
        404: None,
        409: f"A restore could not take the backup (`backup_too_large`: over {MAX_RESTORE_BYTES} "
        f"bytes or {MAX_ENTRIES} entries of a kind; `backup_names_refused`: a name stored "
        "before names were checked holds a control character or bidirectional override, or "
        "shows nothing).",
    },
)
def backup_dashboard(request: Request, principal: Principal) -> Response:
    with request.app.state.sessions() as session:
        rows = dashboard_backups.collect_backup(session, principal, request.path_params["id"])
        _check_names(rows)
        document = backup_document(rows)
    return Response(_restorable(document), media_type=oa.JSON_MEDIA_TYPE)


def _check_names(rows: BackupRows) -> None:
    """409 when a restore would refuse a name of the backup: one stored before the rule of
    shared/display_names.py, which Create refuses now (the backup names what to rename)."""
    named: list[tuple[str, Dashboard | Report | Filter]] = [
        ("dashboard", rows.dashboard),
        *(("report", report) for report in rows.reports),
        *(("filter", filter_) for filter_ in rows.filters),
    ]
    refused = [f"{kind} {row.id}" for kind, row in named if not is_display_name(row.name)]
    if refused:
        raise Conflict(
            f"A restore would refuse the name of {', '.join(refused)}: it holds a control "
            "character or bidirectional override, or shows nothing, which names may no longer "
            "do. Rename it, then back the dashboard up.",
            code="backup_names_refused",
        )


# ---------------------------------------------------------------------------- restoring


def parse_restore(body: Any, context: dict[str, Any]) -> Restore:
    """The request as validated: the envelope, then each entry by its resource's model (every
    problem of every entry in one 422), then the entries' references to each other."""
    request = validate_input(RestoreRequest, body)
    backup = request.backup
    problems: list[AppError] = []

    def entry(model: AttributesModel, value: dict[str, Any], pointer: str) -> Any:
        try:
            return jsonapi.validate_attributes(model, value, (), context, pointer)
        except ValidationErrors as exc:
            problems.extend(exc.errors)
            return None

    def entries(model: AttributesModel, kind: str) -> list[Any]:
        listed = getattr(backup, kind)
        return [entry(model, value, f"/backup/{kind}/{i}") for i, value in enumerate(listed)]

    dashboard = entry(DashboardEntry, backup.dashboard, "/backup/dashboard")
    reports = entries(ReportEntry, "reports")
    filters = entries(FilterEntry, "filters")
    snippets = entries(SqlSnippetEntry, "sql_snippets")
    if problems:
        raise ValidationErrors(problems)
    _check_references(dashboard, reports, filters, snippets, {ds.ref for ds in backup.datasources})
    own = {"key", "datasource"}
    return Restore(
        dashboard=dashboard.model_dump(),
        reports=[RestoredReport(r.key, r.datasource, r.model_dump(exclude=own)) for r in reports],
        filters=[
            RestoredFilter(
                f.datasource, f.model_dump(exclude=own), frozenset(f.model_fields_set - own)
            )
            for f in filters
        ],
        sql_snippets=[snippet.model_dump() for snippet in snippets],
        datasources=[ds.model_dump() for ds in backup.datasources],
        datasource_map=request.datasource_map,
    )


def _check_references(
    dashboard: Any, reports: list[Any], filters: list[Any], snippets: list[Any], refs: set[str]
) -> None:
    """Each report key, filter variable and snippet name once; each reference to a report or a
    datasource names one of the backup's."""
    problems = [
        *_repeated(reports, "reports", "key", "duplicate_report_key"),
        *_repeated(filters, "filters", "variable_name", "duplicate_filter"),
        *_repeated(snippets, "sql_snippets", "name", "duplicate_sql_snippet"),
    ]
    for kind, listed in (("reports", reports), ("filters", filters)):
        problems += [
            Unprocessable(
                f"No datasource {entry.datasource!r} is among the backup's datasources.",
                pointer=f"/backup/{kind}/{index}/datasource",
                code="unknown_datasource_ref",
            )
            for index, entry in enumerate(listed)
            if entry.datasource is not None and entry.datasource not in refs
        ]
    keys = {report.key for report in reports}
    problems += [
        Unprocessable(
            f"No report with key {item.id!r} is in the backup: a layout places the backup's "
            "own reports.",
            pointer=f"/backup/dashboard/layout/{index}/id",
            code="layout_report_unknown",
        )
        for index, item in enumerate(dashboard.layout)
        if item.id not in keys
    ]
    if problems:
        raise ValidationErrors(problems)


def _repeated(entries: list[Any], kind: str, member: str, code: str) -> list[AppError]:
    seen: set[str] = set()
    problems: list[AppError] = []
    for index, entry in enumerate(entries):
        value = getattr(entry, member)
        if value in seen:
            detail = f"The {member} {value!r} is given twice."
            problems.append(
                Unprocessable(detail, pointer=f"/backup/{kind}/{index}/{member}", code=code)
            )
        seen.add(value)
    return problems


@OPERATIONS.post(
    "/dashboards/restore",
    operation_id="restoreDashboard",
    summary="Restore Dashboard Backup",
    description="Beyond Cluvio: a new dashboard from a backup of Create Dashboard Backup, with "
    "new ids, its reports on the datasources `datasource_map` names for the backup's. A snippet "
    "(filter) the organisation has under the same name (variable) is reused when identical and "
    "refused (409) otherwise; the others are created as their create would (a `static_sql` "
    "filter queues its SQL). All or nothing: a refusal creates nothing.",
    permissions=MANAGE,
    audit="dashboard.restore",
    parameters=(doc.fields_parameter(DASHBOARDS),),
    body=Body.BOUNDED,
    max_body_bytes=MAX_RESTORE_BYTES,
    request_body=doc.request_body(
        "DashboardRestoreRequest", "The backup and its datasource map.", oa.JSON_MEDIA_TYPE
    ),
    responses={"201": doc.jsonapi_response("Created.", "DashboardDocument", doc.CREATED_HEADERS)},
    errors={
        400: "A query parameter is unknown or malformed (`invalid_query_parameter`), or the "
        "body is not JSON (`malformed_json`).",
        409: "A snippet or filter of the backup differs from the organisation's of the same name "
        "or variable (`sql_snippet_conflict`, `filter_conflict`), a static filter's datasource "
        "is disabled (`datasource_disabled`), or the restore would create more of a kind than "
        "the organisation may have (`sql_snippet_limit_reached`, `filter_limit_reached`, "
        "`dashboard_limit_reached`, `report_limit_reached`).",
        429: f"The key's rate limit (`rate_limited`), or, for a static filter's SQL, {NO_ROOM_TO_RUN}.",
        413: f"The body exceeds {MAX_RESTORE_BYTES} bytes, or the backup's filters would take "
        "the organisation's filters past their options budget (`filter_options_quota_exceeded`, "
        "at the filter's `values`).",
        422: "The backup is of another format or version (`unsupported_backup_version`), an "
        "entry is invalid as its resource's create would find it, a reference names nothing "
        "in the backup or twice (`unknown_datasource_ref`, `layout_report_unknown`, "
        "`duplicate_report_key`, `duplicate_filter`, `duplicate_sql_snippet`), or a datasource "
        "of the backup is not mapped (`datasource_map_incomplete`) or is mapped to one the key "
        "does not reach (`datasource_not_found`); each problem points at its place.",
    },
)
def restore_dashboard(request: Request, principal: Principal) -> Response:
    query = jsonapi.parse_collection_query(
        request, collection=False, fields_by_type={DASHBOARDS.type: DASHBOARDS.fields}
    )
    body = jsonapi.read_json_body(request, jsonapi.JSON_MEDIA_TYPE)
    context = {"max_sql_length": request.app.state.settings.max_sql_length}
    restore = parse_restore(body, context)
    with request.app.state.sessions.begin() as session:
        view = dashboard_backups.restore_dashboard(
            session, principal, restore, request.app.state.settings
        )
        return one(DASHBOARDS, query, view, status_code=201)
