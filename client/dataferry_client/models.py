"""Typed views of the API's resources: the common fields named, every attribute kept.

Each model keeps the resource's whole ``attributes`` and ``relationships`` mappings, so what later
server versions add is readable (``model.attributes["…"]``) before this client names it. Models
with many attributes declare each once, as an :class:`Attribute` (a related resource: as a
:class:`ToOne` or :class:`ToMany` id reader).
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Self, TypeVar, cast, overload

T = TypeVar("T")


class ExecutionStatus(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
        )


@dataclass(frozen=True)
class Resource:
    id: str
    type: str
    attributes: dict[str, Any] = field(repr=False)
    relationships: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Self:
        return cls(
            id=resource["id"],
            type=resource["type"],
            attributes=resource["attributes"],
            relationships=resource.get("relationships") or {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, **self.attributes}


@dataclass(frozen=True)
class Datasource(Resource):
    @property
    def name(self) -> str:
        return str(self.attributes.get("name"))

    @property
    def database_type(self) -> str:
        return str(self.attributes.get("database_type"))


class Attribute(Generic[T]):
    """Reads the member of ``attributes`` named as the model's attribute is (absent: None),
    through ``read`` when given (a timestamp's text into a ``datetime``)."""

    def __init__(self, read: Callable[[Any], T] | None = None) -> None:
        self._read = read
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...
    @overload
    def __get__(self, instance: Resource, owner: type) -> T: ...
    def __get__(self, instance: Resource | None, owner: type) -> Self | T:
        if instance is None:
            return self
        value = instance.attributes.get(self.name)
        if self._read is None or value is None:
            return cast(T, value)  # the declaration states whether it may be null
        return self._read(value)


class ToOne:
    """The id a to-one relationship links to (null, or not in the answer: None)."""

    def __init__(self, relationship: str) -> None:
        self.relationship = relationship

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...
    @overload
    def __get__(self, instance: Resource, owner: type) -> str | None: ...
    def __get__(self, instance: Resource | None, owner: type) -> Self | str | None:
        if instance is None:
            return self
        linkage = (instance.relationships.get(self.relationship) or {}).get("data")
        return None if linkage is None else str(linkage["id"])


class ToMany:
    """The ids a to-many relationship links to, in the server's order."""

    def __init__(self, relationship: str) -> None:
        self.relationship = relationship

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...
    @overload
    def __get__(self, instance: Resource, owner: type) -> list[str]: ...
    def __get__(self, instance: Resource | None, owner: type) -> Self | list[str]:
        if instance is None:
            return self
        linkage = (instance.relationships.get(self.relationship) or {}).get("data") or []
        return [str(identifier["id"]) for identifier in linkage]


@dataclass(frozen=True)
class Execution(Resource):
    # Run-and-wait's grant (the answer's ``meta``) when the run answered a completed execution.
    grant: DataGrant | None = field(default=None, repr=False, compare=False)
    # A report's or dashboard's run: True when an earlier execution was reused (None elsewhere).
    reused: bool | None = field(default=None, compare=False)

    report_id = ToOne("report")

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Self:
        reused = (resource.get("meta") or {}).get("reused")
        return dataclasses.replace(super().from_resource(resource), reused=reused)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Self:
        meta = document.get("meta")
        grant = DataGrant.from_json(meta) if isinstance(meta, dict) and "data_key" in meta else None
        return dataclasses.replace(cls.from_resource(document["data"]), grant=grant)

    @property
    def status(self) -> ExecutionStatus:
        return ExecutionStatus(self.attributes["execution_status"])

    @property
    def result_rows(self) -> int | None:
        return self.attributes.get("result_rows")

    @property
    def result_size(self) -> int | None:
        return self.attributes.get("result_size")

    @property
    def error_code(self) -> str | None:
        return self.attributes.get("error_code")

    @property
    def error_message(self) -> str | None:
        return self.attributes.get("error_message")


@dataclass(frozen=True)
class SqlSnippet(Resource):
    @property
    def name(self) -> str:
        return str(self.attributes.get("name"))

    @property
    def sql(self) -> str:
        return str(self.attributes.get("sql"))


@dataclass(frozen=True)
class ApiKey(Resource):
    @property
    def name(self) -> str | None:
        return self.attributes.get("name")

    @property
    def permissions(self) -> list[str]:
        return list(self.attributes.get("permissions") or [])

    @property
    def organization_id(self) -> str:
        return str(self.attributes.get("organization_id"))


def _timestamp() -> Attribute[datetime]:
    return Attribute(datetime.fromisoformat)


@dataclass(frozen=True)
class Report(Resource):
    """SQL on one datasource, shown on a dashboard (or on none)."""

    name = Attribute[str]()
    description = Attribute[str | None]()
    sql_query = Attribute[str]()
    visualization = Attribute[dict[str, Any] | None]()
    created_at = _timestamp()
    updated_at = _timestamp()
    datasource_id = ToOne("datasource")
    dashboard_id = ToOne("dashboard")
    filter_ids = ToMany("filters")  # the filters whose variables the SQL's placeholders name
    sql_snippet_ids = ToMany("sql_snippets")  # the snippets the SQL names with [name]


@dataclass(frozen=True)
class Dashboard(Resource):
    name = Attribute[str]()
    description = Attribute[str | None]()
    time_zone_config = Attribute[dict[str, Any] | None]()
    automatic_update_enabled = Attribute[bool]()
    thumbnail_enabled = Attribute[bool]()
    thumbnail_created_at = Attribute[datetime | None](datetime.fromisoformat)
    prewarm = Attribute[bool]()
    published = Attribute[bool]()
    data_refresh_rate = Attribute[int | None]()  # minutes within which report runs reuse results
    data_refresh_anchor_time = Attribute[str | None]()
    is_locked = Attribute[bool]()
    default_parameters = Attribute[dict[str, Any]]()
    default_page_width = Attribute[int | None]()
    layout = Attribute[list[dict[str, Any]]]()
    floating_enabled = Attribute[bool]()
    color_scheme = Attribute[str | None]()
    filters_configuration = Attribute[dict[str, Any] | None]()
    created_at = _timestamp()
    updated_at = _timestamp()
    report_ids = ToMany("reports")
    filter_ids = ToMany("filters")
    sql_snippet_ids = ToMany("sql_snippets")
    dashboard_group_ids = ToMany("dashboard_groups")


@dataclass(frozen=True)
class DashboardGroup(Resource):
    name = Attribute[str]()
    description = Attribute[str | None]()
    created_at = _timestamp()
    updated_at = _timestamp()
    dashboard_ids = ToMany("dashboards")  # those the key sees


@dataclass(frozen=True)
class Filter(Resource):
    """A named control for one SQL variable, its options and its rules (docs/filters.md)."""

    name = Attribute[str]()
    variable_name = Attribute[str]()
    description = Attribute[str | None]()
    control_type = Attribute[str]()
    value_type = Attribute[str]()
    multiple = Attribute[bool]()
    default_values = Attribute[list[Any]]()
    options_source = Attribute[str]()  # manual, dynamic_sql or static_sql
    options_sql_query = Attribute[str | None]()
    values = Attribute[list[Any] | None]()
    value_names = Attribute[list[str | None] | None]()
    allow_all_time = Attribute[bool]()
    aggregation_options = Attribute[list[str] | None]()
    restrict_to_options = Attribute[bool]()
    status = Attribute[str | None]()  # static_sql options: pending, ready or failed
    status_message = Attribute[str | None]()
    options_execution_id = Attribute[str | None]()
    options_updated_at = Attribute[datetime | None](datetime.fromisoformat)
    created_at = _timestamp()
    updated_at = _timestamp()
    datasource_id = ToOne("datasource")


@dataclass(frozen=True)
class FilterOptions:
    """A page of Get Drop-Down Filter Options: ``values[i]`` labelled by ``value_names[i]``
    (None: no label); ``total`` counts the options that match the search."""

    values: list[Any]
    value_names: list[str | None]
    total: int
    page: Mapping[str, int]  # {"number", "size"}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> FilterOptions:
        return cls(document["values"], document["value_names"], document["total"], document["page"])


@dataclass(frozen=True)
class DataGrant:
    """What Get Execution Data (or Get Datasource Schema) hands out: a key and a short token."""

    data_key: str
    data_access_token: str = field(repr=False)
    data_timestamp: Any = None
    data_url: str | None = field(default=None, repr=False)  # carries the token: never shown

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> DataGrant:
        return cls(
            document["data_key"],
            document["data_access_token"],
            document.get("data_timestamp"),
            document.get("data_url"),
        )

    @property
    def data_server(self) -> str | None:
        """The region's public data-server address, read off ``data_url`` (servers that hand
        out ``data_url`` say where their data lives, so no configuration is needed)."""
        if not self.data_url:
            return None
        parts = urllib.parse.urlsplit(self.data_url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class ConnectionTest:
    status: str
    error_message: str | None = None
