"""The file formats dataferry reads from an organisation's area, declared once.

A ``files`` datasource makes a view of each file whose suffix is in ``VIEW_FILE_SUFFIXES`` (the
engine reads it with the named DuckDB table function); a ``duckdb`` or ``sqlite`` datasource is one
database file (``DATABASE_FILE_FORMATS``). Uploads accept exactly these, sent either as
``application/octet-stream`` or as the format's own media types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FileFormat(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"
    DUCKDB = "duckdb"
    SQLITE = "sqlite"


@dataclass(frozen=True)
class FileKind:
    format: FileFormat
    media_types: tuple[str, ...]  # besides GENERIC_MEDIA_TYPE, which every kind takes
    reader: str | None = None  # the DuckDB table function a files datasource's view uses


GENERIC_MEDIA_TYPE = "application/octet-stream"

_PARQUET = FileKind(FileFormat.PARQUET, ("application/vnd.apache.parquet",), "read_parquet")
_NDJSON = FileKind(
    FileFormat.JSON, ("application/x-ndjson", "application/jsonl", "application/json"), "read_json"
)

# Suffix (lower case) → what a files datasource reads it as.
VIEW_FILE_SUFFIXES: dict[str, FileKind] = {
    ".parquet": _PARQUET,
    ".csv": FileKind(FileFormat.CSV, ("text/csv",), "read_csv"),
    ".tsv": FileKind(FileFormat.CSV, ("text/tab-separated-values",), "read_csv"),
    ".json": FileKind(FileFormat.JSON, ("application/json",), "read_json"),
    ".jsonl": _NDJSON,
    ".ndjson": _NDJSON,
}

# database_type → the one file such a datasource attaches.
DATABASE_FILE_FORMATS: dict[str, FileKind] = {
    "duckdb": FileKind(FileFormat.DUCKDB, ()),
    "sqlite": FileKind(FileFormat.SQLITE, ("application/vnd.sqlite3", "application/x-sqlite3")),
}


# DuckDB's readers take a path holding any of these as a glob pattern, which may match other files
# of the folder: a file so named is never uploaded, and never becomes a view.
GLOB_CHARACTERS = frozenset("*?[]{}")


def holds_glob_characters(name: str) -> bool:
    return not GLOB_CHARACTERS.isdisjoint(name)


def view_file_kind(name: str) -> FileKind | None:
    """What a files datasource reads a file of this name as; None: it ignores the file."""
    dot = name.rfind(".")
    return VIEW_FILE_SUFFIXES.get(name[dot:].lower()) if dot > 0 else None


def accepted_media_types(kind: FileKind) -> tuple[str, ...]:
    return (GENERIC_MEDIA_TYPE, *kind.media_types)
