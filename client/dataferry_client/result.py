"""A completed execution's result: Arrow first, then polars, pandas, DuckDB or a file.

Nothing is downloaded until asked for. ``to_arrow()`` keeps the table, so the other conversions
after it cost no second transfer; ``iter_batches()`` and ``save()`` stream instead.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from dataferry_client.download import ProgressCallback, ResultDownload
from dataferry_client.models import Execution


class SaveFormat(enum.StrEnum):
    """File formats of :meth:`Result.save`; everything but Arrow is rendered by the data server
    (its lossless mappings, docs/result-formats.md)."""

    ARROW = "arrow"
    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"
    NDJSON = "ndjson"

    @classmethod
    def for_path(cls, path: Path) -> SaveFormat:
        suffix = path.suffix.lower().lstrip(".")
        aliases = {"arrows": "arrow", "ipc": "arrow", "feather": "arrow", "jsonl": "ndjson"}
        try:
            return cls(aliases.get(suffix, suffix))
        except ValueError:
            raise ValueError(
                f"cannot tell the format from {path.name!r}: give format= (--format) as one of "
                f"{', '.join(f.value for f in cls)}"
            ) from None


DownloadFactory = Callable[[ProgressCallback | None], ResultDownload]


class Result:
    def __init__(
        self,
        execution: Execution,
        download: DownloadFactory,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.execution = execution
        self._download = download
        self._progress = progress
        self._table: pa.Table | None = None

    def __repr__(self) -> str:
        return f"Result(execution_id={self.execution.id!r}, rows={self.row_count})"

    @property
    def execution_id(self) -> str:
        return self.execution.id

    @property
    def row_count(self) -> int | None:
        return self.execution.result_rows

    def to_arrow(self) -> pa.Table:
        if self._table is None:
            download = self._download(self._progress)
            batches = list(download.batches(buffered=True))
            self._table = pa.Table.from_batches(batches, schema=download.schema)
        return self._table

    def iter_batches(self) -> Iterator[pa.RecordBatch]:
        """The record batches as they arrive (memory near one batch), resumed if cut."""
        if self._table is not None:
            yield from self._table.to_batches()
            return
        yield from self._download(self._progress).batches(buffered=False)

    def to_polars(self) -> Any:
        import polars  # an extra: dataferry-client[polars]

        return polars.from_arrow(self.to_arrow())

    def to_pandas(self, **options: Any) -> Any:
        return self.to_arrow().to_pandas(**options)  # needs the pandas extra

    def to_duckdb(self, connection: Any, name: str | None = None) -> Any:
        """A DuckDB relation over the table; with ``name`` also a view of that name."""
        table = self.to_arrow()
        if name is not None:
            connection.register(name, table)
        return connection.from_arrow(table)

    def save(self, path: str | Path, format: str | None = None) -> Path:
        """Write the result to ``path``; the format comes from ``format`` or the suffix."""
        path = Path(path)
        fmt = SaveFormat(format) if format else SaveFormat.for_path(path)
        with path.open("wb") as file:
            self.write(file, fmt)
        return path

    def write(self, sink: BinaryIO, format: str = SaveFormat.ARROW) -> None:
        """Write the result to a binary file object (stdout included) in ``format``."""
        fmt = SaveFormat(format)
        if fmt is not SaveFormat.ARROW:
            self._download(self._progress).copy_to(sink, fmt.value)
            return
        if self._table is not None:
            with pa.ipc.new_stream(sink, self._table.schema) as writer:
                writer.write_table(self._table)
            return
        download = self._download(self._progress)
        writer = None
        for batch in download.batches(buffered=False):
            writer = writer or pa.ipc.new_stream(sink, download.schema)
            writer.write_batch(batch)
        writer = writer or pa.ipc.new_stream(sink, download.schema)
        writer.close()
