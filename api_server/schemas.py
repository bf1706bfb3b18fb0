"""What a client may send for each resource: types, lengths, enums; unknown attributes refused."""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shared import object_storage
from shared.database_types import DATABASE_TYPES

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
ShortText = Annotated[str, StringConstraints(max_length=255)]
LongText = Annotated[str, StringConstraints(max_length=1024)]

# Datasource types of this release (shared.database_types); Cluvio's others get a clear 422.
CREATABLE_DATABASE_TYPES = tuple(DATABASE_TYPES)
BUILT_IN_DATABASE_TYPES = ("sample",)

# Read-only attributes of Cluvio's datasource resource: sending one is a 422 that says so.
DATASOURCE_READ_ONLY = (
    "created_at",
    "updated_at",
    "schema_updated_at",
    "total_row_count",
    "total_row_count_exact",
    "default_schema_name",
    "server_version",
)


@cache
def known_time_zones() -> frozenset[str]:
    """IANA zone names, read once: no file paths, and not the machine-local 'localtime'."""
    return frozenset((available_timezones() | {"UTC"}) - {"localtime"})


def check_time_zone(value: str) -> str:
    if value not in known_time_zones():
        raise ValueError(f"unknown IANA time zone {value!r}")
    return value


def check_database_type(value: str) -> str:
    if value in BUILT_IN_DATABASE_TYPES:
        raise ValueError("the sample datasource is built in and cannot be created")
    if value not in CREATABLE_DATABASE_TYPES:
        raise ValueError(
            f"database_type {value!r} is not supported; supported: {', '.join(CREATABLE_DATABASE_TYPES)}"
        )
    return value


class _DatasourceFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    host: ShortText | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    username: ShortText | None = None
    password: LongText | None = None
    database: LongText | None = None
    # Stored, but a datasource that sets them cannot run yet (ssh_tunnel_not_supported).
    ssh_tunnel_host: ShortText | None = None
    ssh_tunnel_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    ssh_tunnel_user: ShortText | None = None
    # Not Cluvio's: an s3 datasource's signing region (shared.object_storage).
    s3_region: Annotated[str, StringConstraints(max_length=64)] | None = None
    # Cluvio attributes of database types dataferry does not offer: accepted only as null.
    athena_region: None = None
    athena_workgroup: None = None
    databricks_http_path: None = None
    snowflake_identifier: None = None
    snowflake_region: None = None
    snowflake_warehouse: None = None
    bigquery_service_key: None = None

    @field_validator("s3_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else object_storage.check_region(value)


class DatasourceCreate(_DatasourceFields):
    name: Name
    database_type: str
    connection_mode: str = "direct"
    data_time_zone: str = "UTC"
    require_ssl: bool = True
    verify_ssl: bool = False
    enabled: bool = True
    max_concurrent_executions: Annotated[int, Field(ge=1, le=100)] = 20
    update_schema_nightly: bool = False
    update_schema_row_counts: bool = False

    @field_validator("data_time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("database_type")
    @classmethod
    def _creatable_type(cls, value: str) -> str:
        return check_database_type(value)

    @field_validator("connection_mode")
    @classmethod
    def _direct_only(cls, value: str) -> str:
        if value != "direct":
            raise ValueError(
                "only connection_mode 'direct' is supported (agents are not available yet)"
            )
        return value


class DatasourceUpdate(DatasourceCreate):
    """Every attribute optional; only those sent change. ``null`` is refused where create needs a value."""

    name: Name = None  # type: ignore[assignment]
    database_type: str = None  # type: ignore[assignment]

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


SQL_SNIPPET_READ_ONLY = ("created_at", "updated_at")
SnippetSql = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
Description = Annotated[str, StringConstraints(max_length=2000)]


SNIPPET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED_SNIPPET_PREFIX = "CLUVIO_"  # Cluvio's built-in snippets


def check_snippet_name(name: str) -> str:
    """A name that ``[name]`` can reference, and not one of the built-ins' namespace."""
    if not SNIPPET_NAME.match(name):
        raise ValueError("must start with a letter or _ and hold only letters, digits and _")
    if name.upper().startswith(RESERVED_SNIPPET_PREFIX):
        raise ValueError(f"names starting with {RESERVED_SNIPPET_PREFIX} are reserved")
    return name


SnippetName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class SqlSnippetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: SnippetName
    description: Description | None = None
    sql: SnippetSql

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_snippet_name(value)

    @field_validator("sql")
    @classmethod
    def _sql(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class SqlSnippetUpdate(SqlSnippetCreate):
    """Every attribute optional; only those sent change."""

    name: SnippetName = None  # type: ignore[assignment]
    sql: SnippetSql = None  # type: ignore[assignment]

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


# Attributes of an API key that only the server sets; sending one is a 422 that says so.
API_KEY_READ_ONLY = (
    "prefix",
    "permissions",
    "datasource_ids",
    "organization_id",
    "created_at",
    "last_used_at",
)


class ApiKeyUpdate(BaseModel):
    """What a key with Manage Users may change: the name, and whether the key works."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = None  # type: ignore[assignment]
    enabled: bool = None  # type: ignore[assignment]

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}
