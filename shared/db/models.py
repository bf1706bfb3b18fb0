"""SQLAlchemy models of the metadata DB. Every tenant row carries its organisation's id."""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    insert,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, validates
from sqlalchemy.sql.schema import ColumnDefault

from shared.display_names import NAME_LENGTH
from shared.ids import new_resource_id
from sql_templating.placeholders import placeholder_variables
from sql_templating.snippets import snippet_names

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """A model's table, for Core statements on a hot path: ORM-enabled statements cost several
    times more to run than the database takes to answer them, and the caller needs no objects."""
    return cast(Table, model.__table__)


ModelT = TypeVar("ModelT", bound=Base)


def read_only(model: type[ModelT], row: Row[Any]) -> ModelT:
    """``row``, of a select of ``model``'s whole table (``table_of``), read as the model: the
    same attributes, with their columns' types, but read-only (assigning to one raises) and of
    no session. For a caller that only reads the object: loading it through a session cost
    nearly three times the statement (130 µs against 47 on SQLite), on the reads every poll,
    grant and run makes."""
    return cast(ModelT, row)


def insert_new(session: Session, model: type[ModelT], **values: Any) -> ModelT:
    """Insert a row of ``model``'s table with one statement, its columns' Python defaults filled
    in first, and return it as stored, read-only (as ``read_only``; a column left to the
    database's own default is not sent, and reads None). Adding and flushing a model object cost
    two to three times as much (590-790 µs against 250 on SQLite), and even building one to
    insert it cost twice the statement (121 µs against 55): for a row its caller only reads
    after, on a path every run takes."""
    plan = _new_rows(model)
    row: dict[str, Any] = {}
    sent: dict[str, Any] = {}
    for key, default, server_default in plan.columns:
        value = values.pop(key, None)
        if value is None and default is not None:
            value = default.arg(None) if default.is_callable else default.arg
        row[key] = value
        if value is not None or not server_default:
            sent[key] = value
    if values:
        raise TypeError(f"{model.__name__} has no column {', '.join(sorted(values))}")
    session.execute(plan.statement, sent)
    return cast(ModelT, plan.record(**row))


class _NewRows:
    """What inserting rows of one table takes, worked out once: the statement, each column's
    Python default and whether the database has one of its own, and the immutable record that
    a new row is read as."""

    def __init__(self, table: Table) -> None:
        self.statement = insert(table)
        self.columns = [
            (
                column.key,
                column.default if isinstance(column.default, ColumnDefault) else None,
                column.server_default is not None,
            )
            for column in table.columns
        ]
        self.record = dataclasses.make_dataclass(
            f"new_{table.name}", [key for key, _, _ in self.columns], frozen=True, slots=True
        )


@functools.cache
def _new_rows(model: type[Base]) -> _NewRows:
    return _NewRows(table_of(model))


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    # Per-organisation limits; None means the deployment's default (DATAFERRY_RATE_LIMIT_*).
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_limit_per_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running_executions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The bytes of its stored results, kept by every transition that stores or forgets one
    # (shared.organization_rows): the storage quota reads this instead of a sum.
    stored_results_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The bytes of text its executions keep (their ``kept_bytes``), added by the run
    # that stores one and taken off by the deletion that forgets it (shared.organization_rows):
    # the budget (DATAFERRY_MAX_EXECUTION_TEXT_MB) reads this instead of a sum.
    execution_text_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Raised by every change the API makes to its file area (uploads, deletions): a walk of the
    # area that saw the same generation still counts its files (shared.storage_quota).
    area_generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """A secret held by a client; only its HMAC is stored (``secret_hash``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_prefix: Mapped[str] = mapped_column(String(16))
    permissions: Mapped[list[str]] = mapped_column(JSON)
    restricted_to_datasources: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set by the operator's disable-api-key: only enable-api-key (CLI) lifts it, never the API.
    disabled_by_operator: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    datasource_grants: Mapped[list[ApiKeyDatasource]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def datasource_ids(self) -> list[str] | None:
        """None when the key reaches every datasource of its organisation."""
        if not self.restricted_to_datasources:
            return None
        return sorted(grant.datasource_id for grant in self.datasource_grants)


class ApiKeyDatasource(Base):
    """One datasource a restricted key may reach. Deleting the datasource drops the grant."""

    __tablename__ = "api_key_datasources"

    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    datasource_id: Mapped[str] = mapped_column(
        ForeignKey("datasources.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Datasource(Base):
    __tablename__ = "datasources"
    __table_args__ = (Index("ix_datasources_organization_id_name", "organization_id", "name"),)

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    database_type: Mapped[str] = mapped_column(String(32))
    connection_mode: Mapped[str] = mapped_column(String(16), default="direct")
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    password_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    database: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Cluvio's tunnel attributes: stored, but no tunnel is opened yet (ssh_tunnel_not_supported).
    ssh_tunnel_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ssh_tunnel_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ssh_tunnel_user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # s3 only (not a Cluvio attribute): the region requests are signed for; null: us-east-1.
    s3_region: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data_time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    require_ssl: Mapped[bool] = mapped_column(Boolean, default=True)
    verify_ssl: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    max_concurrent_executions: Mapped[int] = mapped_column(Integer, default=20)
    update_schema_nightly: Mapped[bool] = mapped_column(Boolean, default=False)
    update_schema_row_counts: Mapped[bool] = mapped_column(Boolean, default=False)
    default_schema_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    server_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total_row_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_row_count_exact: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    schema_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The newest recorded schema: its key in the result store and the schema names it holds.
    schema_data_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    schema_names: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class Execution(Base):
    """One run of SQL (or a schema refresh) on a datasource; the rows of this table are the queue.

    ``attempt`` is the fencing token: a worker may only write back under the attempt it claimed.
    """

    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_status_created_at", "status", "created_at"),
        Index("ix_executions_datasource_id_status", "datasource_id", "status"),
        Index(
            "uq_executions_idempotency",
            "organization_id",
            "api_key_id",
            "idempotency_key",
            unique=True,
        ),
        Index("ix_executions_organization_id_reuse_key", "organization_id", "reuse_key"),
        # Its organisation's oldest executions: when its text budget frees room.
        Index("ix_executions_organization_id_created_at", "organization_id", "created_at"),
        # Its organisation's unfinished executions, oldest first: what a claim and a run count
        # and start, without reading the organisation's finished history.
        Index(
            "ix_executions_organization_id_status_created_at",
            "organization_id",
            "status",
            "created_at",
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    datasource_id: Mapped[str] = mapped_column(ForeignKey("datasources.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True
    )
    execution_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="starting")
    sql_query: Mapped[str] = mapped_column(Text, default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expanded_sql: Mapped[str | None] = mapped_column(Text, nullable=True)
    bound_parameters: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    result_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The bytes of the text it keeps (SQL as sent and as run, parameters as sent and as bound:
    # ``text_bytes``), set once as it is queued: what its organisation's text counter holds for
    # it.
    kept_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The result's other stored representations (formats, codings), counted in the quota too,
    # each once, by its name (``Representation.variant``) in ``counted_variants``.
    variants_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    counted_variants: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    result_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    data_key: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    data_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The report this execution ran, if it ran one (kept, and then null, if the report goes).
    report_id: Mapped[str | None] = mapped_column(
        ForeignKey("reports.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # Result reuse: a hash of the datasource, the SQL that runs and its bound values; a report's
    # run inside its dashboard's refresh window answers with a completed execution of the same key.
    reuse_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SqlSnippet(Base):
    """Reusable SQL text, expanded where ``[name]`` appears in a query of the same organisation."""

    __tablename__ = "sql_snippets"
    __table_args__ = (
        Index("uq_sql_snippets_organization_id_name", "organization_id", "name", unique=True),
    )

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    sql: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Dashboard(Base):
    """A page of reports sharing filters and default parameters (Cluvio's Dashboard). Nested
    settings are stored as the JSON the API validated; the scheduler's fields are columns."""

    __tablename__ = "dashboards"

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    time_zone_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    automatic_update_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    thumbnail_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    thumbnail_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    prewarm: Mapped[bool] = mapped_column(Boolean, default=False)
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    data_refresh_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)  # minutes
    data_refresh_anchor_time: Mapped[str | None] = mapped_column(String(5), nullable=True)
    is_locked: Mapped[bool] = mapped_column(Boolean, default=False)
    default_parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_page_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    layout: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    floating_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    color_scheme: Mapped[str | None] = mapped_column(String(32), nullable=True)
    filters_configuration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Report(Base):
    """SQL on one datasource with how to show its result; it lives on a dashboard, if any.

    A datasource with reports cannot be deleted (the FK restricts it: the service answers 409
    first); a dashboard takes its reports with it."""

    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    datasource_id: Mapped[str] = mapped_column(
        ForeignKey("datasources.id", ondelete="RESTRICT"), index=True
    )
    dashboard_id: Mapped[str | None] = mapped_column(
        ForeignKey("dashboards.id", ondelete="CASCADE"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    sql_query: Mapped[str] = mapped_column(Text)
    visualization: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The snippets (``[name]``) and filter variables its SQL names, as written, kept as the SQL
    # is set: a dashboard's answer lists its reports' snippets and filters from these, not by
    # reading every report's SQL (up to DATAFERRY_MAX_SQL_LENGTH characters each). None only
    # for a row no version has scanned (migration 0014 scans them all).
    sql_snippet_names: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    sql_variables: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @validates("sql_query")
    def _scanned(self, _name: str, sql: str) -> str:
        self.sql_snippet_names, self.sql_variables = names_in_sql(sql)
        return sql


def names_in_sql(sql: str) -> tuple[list[str], list[str]]:
    """The snippets and the filter variables a report's SQL names, sorted (``Report`` keeps
    them)."""
    return sorted(snippet_names(sql)), sorted(placeholder_variables(sql))


class DashboardGroup(Base):
    """A named set of dashboards (Cluvio's dashboard groups, as its sidebar folders)."""

    __tablename__ = "dashboard_groups"

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DashboardGroupMember(Base):
    """One dashboard in one group; either one's deletion removes the membership."""

    __tablename__ = "dashboard_group_members"

    dashboard_group_id: Mapped[str] = mapped_column(
        ForeignKey("dashboard_groups.id", ondelete="CASCADE"), primary_key=True
    )
    dashboard_id: Mapped[str] = mapped_column(
        ForeignKey("dashboards.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Filter(Base):
    """A named control for the SQL variable ``variable_name`` (Cluvio's Filter): its options
    (manual, or the first two columns of SQL run on ``datasource``), its defaults, and the rules an
    execution's value for the variable must keep (``allow_all_time``, ``restrict_to_options``).

    ``values``/``value_names`` are the manual options, or a static-SQL filter's options as of
    ``options_updated_at`` (copied from ``options_execution_id``'s result once it completes)."""

    __tablename__ = "filters"
    __table_args__ = (
        Index(
            "uq_filters_organization_id_variable_name",
            "organization_id",
            "variable_name",
            unique=True,
        ),
    )

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    datasource_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasources.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    variable_name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    control_type: Mapped[str] = mapped_column(String(32))
    value_type: Mapped[str] = mapped_column(String(32))
    multiple: Mapped[bool] = mapped_column(Boolean, default=True)
    default_values: Mapped[list[Any]] = mapped_column(JSON, default=list)
    options_source: Mapped[str] = mapped_column(String(16), default="manual")
    options_sql_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    values: Mapped[list[Any] | None] = mapped_column("option_values", JSON, nullable=True)
    value_names: Mapped[list[Any] | None] = mapped_column("option_names", JSON, nullable=True)
    # What ``values`` and ``value_names`` weigh (their JSON's characters), kept as they are set:
    # the organisation's budget for them and the batches of a listing read these, not the
    # options themselves (up to a megabyte a filter).
    values_characters: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    value_names_characters: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    allow_all_time: Mapped[bool] = mapped_column(Boolean, default=False)
    aggregation_options: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    restrict_to_options: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    options_execution_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    options_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @validates("values", "value_names")
    def _weighed(self, name: str, options: list[Any] | None) -> list[Any] | None:
        setattr(self, f"{name}_characters", json_characters(options))
        return options


def json_characters(value: Any) -> int:
    """The characters of a JSON value's text (0 for none), all ASCII but a string's (its bytes
    in UTF-8 as orjson writes them): what a filter's options or an execution's parameters weigh
    where they are kept."""
    if value is None:
        return 0
    try:
        return len(orjson.dumps(value, default=str))
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, which orjson does not write
        return len(json.dumps(value, default=str))


def text_bytes(
    sql_query: str, expanded_sql: str | None, parameters: Any, bound_parameters: Any
) -> int:
    """What an execution's text weighs, as its ``kept_bytes``: its SQL as sent and as run
    (UTF-8), its parameters as sent and as bound (their JSON)."""
    return (
        len(sql_query.encode())
        + len((expanded_sql or "").encode())
        + json_characters(parameters)
        + json_characters(bound_parameters)
    )


class DashboardRefresh(Base):
    """One due refresh of a prewarmed or automatically updated dashboard: the primary key makes
    the claim, so exactly one server of the region runs each (the others' inserts conflict)."""

    __tablename__ = "dashboard_refreshes"

    dashboard_id: Mapped[str] = mapped_column(
        ForeignKey("dashboards.id", ondelete="CASCADE"), primary_key=True
    )
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    executions: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    """One write or data grant: who (key), what (method, route, resource), when, from where.

    No foreign key to the API key: deleting a key must not erase what it did.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_organization_id_created_at", "organization_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(String(14), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    remote_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SharedFolder(Base):
    """A folder outside the data root that an operator let one organisation read (CLI only).

    Its datasources reach it as ``shared/<name>/…``; deleting the row (revoking) makes them fail.
    """

    __tablename__ = "shared_folders"
    __table_args__ = (
        Index("uq_shared_folders_organization_id_name", "organization_id", "name", unique=True),
    )

    id: Mapped[str] = mapped_column(String(14), primary_key=True, default=new_resource_id)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
