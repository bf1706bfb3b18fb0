"""Typed views of the API's resources: the common fields named, every attribute kept.

Each model keeps the resource's whole ``attributes`` mapping, so attributes that later server
versions add are readable (``model.attributes["…"]``) before this client names them.
"""

from __future__ import annotations

import enum
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Self


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

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Self:
        return cls(id=resource["id"], type=resource["type"], attributes=resource["attributes"])

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


@dataclass(frozen=True)
class Execution(Resource):
    # Run-and-wait's grant (the answer's ``meta``) when the run answered a completed execution.
    grant: DataGrant | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Execution:
        meta = document.get("meta")
        grant = DataGrant.from_json(meta) if isinstance(meta, dict) and "data_key" in meta else None
        data = document["data"]
        return cls(id=data["id"], type=data["type"], attributes=data["attributes"], grant=grant)

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
