"""The datasource types a client may create, and the connection attributes each one takes.

Declared once here and read by the API's validation (``check_connection_attributes``), its
OpenAPI document and the data server's worker (default ports, which types are remote).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared import object_storage
from shared.errors import Unprocessable

# Cluvio's connection attributes: each type takes some of them and refuses the others.
CONNECTION_ATTRIBUTES = (
    "host",
    "port",
    "username",
    "password",
    "database",
    "ssh_tunnel_host",
    "ssh_tunnel_port",
    "ssh_tunnel_user",
    "s3_region",  # not Cluvio's: the signing region of an s3 datasource (shared.object_storage)
)
SSH_TUNNEL_ATTRIBUTES = ("ssh_tunnel_host", "ssh_tunnel_port", "ssh_tunnel_user")


@dataclass(frozen=True)
class DatabaseType:
    name: str
    description: str
    required: tuple[str, ...]  # connection attributes it needs
    optional: tuple[str, ...] = ()  # connection attributes it also takes
    default_port: int | None = None
    # What the type's attributes must look like together: returns normalised values, or raises
    # a 422 with a pointer (called after the presence checks).
    check: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    # Attributes besides the (write-only) password that are half of a credential: shown only to
    # keys with Manage Datasources, as Cluvio shows credentials.
    credentials: tuple[str, ...] = ()

    def takes(self, attribute: str) -> bool:
        return attribute in self.required or attribute in self.optional


_ASSIGNED = (
    "without it, the datasource gets `datasources/<id>` (a folder, or a file with the type's "
    "suffix) of its own for uploads to fill."
)
_SERVER = ("port", "password", *SSH_TUNNEL_ATTRIBUTES)
DATABASE_TYPES: dict[str, DatabaseType] = {
    kind.name: kind
    for kind in (
        DatabaseType(
            "duckdb",
            f"`database` is a DuckDB file in the organisation's file area; {_ASSIGNED}",
            (),
            ("database",),
        ),
        DatabaseType(
            "files",
            "`database` is a folder in the file area whose Parquet, CSV and JSON files become "
            f"views; {_ASSIGNED}",
            (),
            ("database",),
        ),
        DatabaseType(
            "sqlite",
            f"`database` is a SQLite file in the file area, attached read-only; {_ASSIGNED}",
            (),
            ("database",),
        ),
        DatabaseType(
            "postgres",
            "PostgreSQL at `host`:`port` (default 5432): `database`, `username`, `password`; "
            "attached read-only, queried in DuckDB's SQL dialect.",
            ("host", "database", "username"),
            _SERVER,
            default_port=5432,
        ),
        DatabaseType(
            "mysql",
            "MySQL or MariaDB at `host`:`port` (default 3306): `database`, `username`, "
            "`password`; attached read-only, queried in DuckDB's SQL dialect.",
            ("host", "database", "username"),
            _SERVER,
            default_port=3306,
        ),
        DatabaseType(
            object_storage.DATABASE_TYPE,
            "Parquet, CSV and JSON objects directly under a bucket prefix become views: `database` "
            "is `s3://bucket/prefix/` (or `bucket/prefix`); `host` (+ `port`) an S3-compatible "
            "endpoint, none for AWS; `username`/`password` the access key id and secret access "
            "key, none for a public bucket; `s3_region` the signing region (default us-east-1).",
            ("database",),
            ("host", "port", "username", "password", "s3_region"),
            check=object_storage.check_attributes,
            credentials=("username",),  # the access key id
        ),
    )
}
CREATABLE_DATABASE_TYPES = tuple(DATABASE_TYPES)
REMOTE_DATABASE_TYPES = ("postgres", "mysql")


class SshTunnelNotSupported(Unprocessable):
    code, title = "ssh_tunnel_not_supported", "SSH tunnels are not supported"


def check_connection_attributes(database_type: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The connection attributes but the password, with the type's default port filled in; a
    missing required one or one the type does not take is a 422 pointing at it. ``values`` holds
    the datasource's attributes after the change (a set password as any non-null value)."""
    kind = DATABASE_TYPES[database_type]
    for name in CONNECTION_ATTRIBUTES:
        value = values.get(name)
        present = value is not None and not (isinstance(value, str) and not value.strip())
        if name in kind.required and not present:
            raise Unprocessable(
                f"`{name}` is required for database_type {database_type!r}.",
                pointer=f"/data/attributes/{name}",
                code="missing_attribute",
            )
        if value is not None and not kind.takes(name):
            raise Unprocessable(
                f"database_type {database_type!r} takes no `{name}`; send null or leave it out.",
                pointer=f"/data/attributes/{name}",
            )
    checked = {name: values.get(name) for name in CONNECTION_ATTRIBUTES if name != "password"}
    if kind.default_port is not None and checked["port"] is None:
        checked["port"] = kind.default_port
    if kind.check is not None:
        checked.update(kind.check(values))
    return checked


def refuse_ssh_tunnel(ssh_tunnel_host: str | None) -> None:
    """Tunnel attributes are kept (a configuration carried over from Cluvio keeps them), but no
    tunnel is opened yet: a datasource that sets one cannot run anything."""
    if ssh_tunnel_host:
        raise SshTunnelNotSupported(
            "This datasource sets ssh_tunnel_host, and SSH tunnels are not supported yet: clear "
            "the ssh_tunnel_* attributes to connect directly."
        )
