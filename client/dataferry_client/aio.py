"""``AsyncClient``: the asyncio client, driving the same operations as ``Client``.

API calls go through ``httpx.AsyncClient``. A result download reads sockets into Arrow buffers,
which is blocking and CPU-bound work: it runs in a worker thread (``asyncio.to_thread``), and a
new data grant it needs is asked for on the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa

from dataferry_client import operations as ops
from dataferry_client.client import poll_reporter
from dataferry_client.config import Config, resolve_config
from dataferry_client.download import Grants, ProgressCallback, ResultDownload
from dataferry_client.models import (
    ApiKey,
    ConnectionTest,
    Dashboard,
    DashboardGroup,
    DataGrant,
    Datasource,
    Execution,
    Filter,
    FilterOptions,
    Report,
    SqlSnippet,
)
from dataferry_client.result import Result, SaveFormat
from dataferry_client.transport import AsyncTransport, RetryRule

T = TypeVar("T")


class AsyncResult:
    """The asyncio face of :class:`~dataferry_client.result.Result`."""

    def __init__(self, result: Result) -> None:
        self.sync = result
        self.execution = result.execution

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def execution_id(self) -> str:
        return self.sync.execution_id

    @property
    def row_count(self) -> int | None:
        return self.sync.row_count

    async def to_arrow(self) -> pa.Table:
        return await asyncio.to_thread(self.sync.to_arrow)

    async def iter_batches(self) -> AsyncIterator[pa.RecordBatch]:
        """The record batches as they arrive; each is read in a worker thread."""
        batches = self.sync.iter_batches()
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            yield batch

    async def to_polars(self) -> Any:
        return await asyncio.to_thread(self.sync.to_polars)

    async def to_pandas(self, **options: Any) -> Any:
        return await asyncio.to_thread(self.sync.to_pandas, **options)

    async def to_duckdb(self, connection: Any, name: str | None = None) -> Any:
        await self.to_arrow()
        return self.sync.to_duckdb(connection, name)

    async def save(self, path: str | Path, format: str | None = None) -> Path:
        return await asyncio.to_thread(self.sync.save, path, format)

    async def write(self, sink: BinaryIO, format: str = SaveFormat.ARROW) -> None:
        """:meth:`Result.write` in a worker thread (``sink``'s writes happen there)."""
        await asyncio.to_thread(self.sync.write, sink, format)


class AsyncClient:
    """Same arguments as :class:`~dataferry_client.Client`; use ``async with``."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        data_url: str | None = None,
        profile: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        max_retry_wait: float = 60.0,
    ) -> None:
        self.config: Config = resolve_config(api_url, api_key, data_url, profile)
        self._transport = AsyncTransport(
            self.config, timeout=timeout, retry=RetryRule(max_retries, max_retry_wait)
        )
        self.timeout = timeout
        self.datasources = AsyncDatasources(self)
        self.executions = AsyncExecutions(self)
        self.snippets = AsyncSnippets(self)
        self.reports = AsyncReports(self)
        self.dashboards = AsyncDashboards(self)
        self.dashboard_groups = AsyncDashboardGroups(self)
        self.filters = AsyncFilters(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.close()

    async def _drive(self, operation: ops.Operation[T]) -> T:
        return await self._transport.drive(operation)

    async def api_key(self) -> ApiKey:
        return await self._drive(ops.calling_api_key())

    async def query(
        self,
        datasource: str,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> AsyncResult:
        """As ``Client.query``. The task cancelled while it waits (``asyncio.timeout``,
        ``wait_for``, ``task.cancel()``, Ctrl-C under ``asyncio.run``, which then raises a plain
        KeyboardInterrupt) cancels the execution first; the cancellation then goes on as it
        came."""
        execution = await self._drive(
            ops.query(datasource, sql, parameters, timeout, poll_reporter(progress))
        )
        return await self.result(execution, progress)

    async def result(
        self, execution: Execution, progress: ProgressCallback | None = None
    ) -> AsyncResult:
        ops.ensure_completed(execution)
        first = execution.grant or await self._drive(ops.grant_execution_data(execution.id))
        loop = asyncio.get_running_loop()

        def grant() -> DataGrant:  # called from the download's worker thread
            coroutine = self._drive(ops.grant_execution_data(execution.id))
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        grants = Grants(grant, first)

        def download(progress: ProgressCallback | None) -> ResultDownload:
            return ResultDownload(
                self.config.data_url,
                grants,
                expected_rows=execution.result_rows,
                size_hint=execution.result_size or 0,
                timeout=self.timeout,
                progress=progress,
            )

        return AsyncResult(Result(execution, download, progress))


class AsyncDatasources:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[Datasource]:
        return await self._client._drive(ops.list_datasources(sort, **filters))

    async def get(self, datasource_id: str) -> Datasource:
        return await self._client._drive(ops.get_datasource(datasource_id))

    async def create(self, **attributes: Any) -> Datasource:
        return await self._client._drive(ops.create_datasource(attributes))

    async def update(self, datasource_id: str, **attributes: Any) -> Datasource:
        return await self._client._drive(ops.update_datasource(datasource_id, attributes))

    async def delete(self, datasource_id: str) -> None:
        await self._client._drive(ops.delete_datasource(datasource_id))

    async def test_connection(self, datasource_id: str) -> ConnectionTest:
        return await self._client._drive(ops.test_datasource_connection(datasource_id))

    async def refresh(self, datasource_id: str) -> str:
        return await self._client._drive(ops.refresh_datasource(datasource_id))

    async def schema(self, datasource_id: str, name: str | None = None) -> Any:
        return await self._client._drive(ops.datasource_schema(datasource_id, name))


class AsyncExecutions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def run(
        self,
        datasource_id: str,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Execution:
        return await self._client._drive(
            ops.run_execution(datasource_id, sql, parameters, idempotency_key)
        )

    async def get(self, execution_id: str, wait: float = 0) -> Execution:
        return await self._client._drive(ops.get_execution(execution_id, wait))

    async def wait(
        self,
        execution_id: str,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Execution:
        return await self._client._drive(
            ops.wait_for_execution(execution_id, timeout, poll_reporter(progress))
        )

    async def grant(self, execution_id: str) -> DataGrant:
        """Get Execution Data: a data key and a short-lived token for the data server."""
        return await self._client._drive(ops.grant_execution_data(execution_id))

    async def cancel(self, execution_id: str) -> Execution:
        return await self._client._drive(ops.cancel_execution(execution_id))

    async def delete(self, execution_id: str) -> None:
        await self._client._drive(ops.delete_execution(execution_id))

    async def result(self, execution_id: str) -> AsyncResult:
        return await self._client.result(await self.get(execution_id))


class AsyncSnippets:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[SqlSnippet]:
        return await self._client._drive(ops.list_snippets(sort, **filters))

    async def get(self, snippet_id: str) -> SqlSnippet:
        return await self._client._drive(ops.get_snippet(snippet_id))

    async def create(self, name: str, sql: str, description: str | None = None) -> SqlSnippet:
        attributes = {"name": name, "sql": sql}
        if description is not None:
            attributes["description"] = description
        return await self._client._drive(ops.create_snippet(attributes))

    async def update(self, snippet_id: str, **attributes: Any) -> SqlSnippet:
        return await self._client._drive(ops.update_snippet(snippet_id, attributes))

    async def delete(self, snippet_id: str) -> None:
        await self._client._drive(ops.delete_snippet(snippet_id))


class AsyncReports:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[Report]:
        return await self._client._drive(ops.REPORTS.list(sort, **filters))

    async def get(self, report_id: str) -> Report:
        return await self._client._drive(ops.REPORTS.get(report_id))

    async def create(
        self,
        name: str,
        sql_query: str,
        datasource_id: str,
        *,
        dashboard_id: str | None = None,
        **attributes: Any,
    ) -> Report:
        return await self._client._drive(
            ops.create_report(name, sql_query, datasource_id, dashboard_id, attributes)
        )

    async def update(
        self,
        report_id: str,
        *,
        datasource_id: str | None = None,
        dashboard_id: str | ops.Unchanged | None = ops.UNCHANGED,
        **attributes: Any,
    ) -> Report:
        return await self._client._drive(
            ops.update_report(report_id, datasource_id, dashboard_id, attributes)
        )

    async def delete(self, report_id: str) -> None:
        await self._client._drive(ops.REPORTS.delete(report_id))

    async def run(
        self,
        report_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        refresh: bool = False,
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Execution:
        return await self._client._drive(
            ops.run_report(report_id, parameters, refresh, idempotency_key, wait)
        )


class AsyncDashboards:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[Dashboard]:
        return await self._client._drive(ops.DASHBOARDS.list(sort, **filters))

    async def get(self, dashboard_id: str) -> Dashboard:
        return await self._client._drive(ops.DASHBOARDS.get(dashboard_id))

    async def create(self, name: str, **attributes: Any) -> Dashboard:
        return await self._client._drive(ops.DASHBOARDS.create({"name": name, **attributes}))

    async def update(self, dashboard_id: str, **attributes: Any) -> Dashboard:
        return await self._client._drive(ops.DASHBOARDS.update(dashboard_id, attributes))

    async def delete(self, dashboard_id: str) -> None:
        await self._client._drive(ops.DASHBOARDS.delete(dashboard_id))

    async def run(
        self,
        dashboard_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        refresh: bool = False,
    ) -> builtins.list[Execution]:  # ``list`` is the method above
        return await self._client._drive(ops.run_dashboard(dashboard_id, parameters, refresh))

    async def backup(self, dashboard_id: str) -> dict[str, Any]:
        return await self._client._drive(ops.backup_dashboard(dashboard_id))

    async def restore(
        self, backup: Mapping[str, Any], datasource_map: Mapping[str, str] | None = None
    ) -> Dashboard:
        return await self._client._drive(ops.restore_dashboard(backup, datasource_map))


class AsyncDashboardGroups:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[DashboardGroup]:
        return await self._client._drive(ops.DASHBOARD_GROUPS.list(sort, **filters))

    async def get(self, group_id: str) -> DashboardGroup:
        return await self._client._drive(ops.DASHBOARD_GROUPS.get(group_id))

    async def create(
        self, name: str, *, dashboard_ids: Sequence[str] | None = None, **attributes: Any
    ) -> DashboardGroup:
        return await self._client._drive(ops.create_group(name, dashboard_ids, attributes))

    async def update(
        self, group_id: str, *, dashboard_ids: Sequence[str] | None = None, **attributes: Any
    ) -> DashboardGroup:
        return await self._client._drive(ops.update_group(group_id, dashboard_ids, attributes))

    async def delete(self, group_id: str) -> None:
        await self._client._drive(ops.DASHBOARD_GROUPS.delete(group_id))


class AsyncFilters:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, sort: str | None = None, **filters: Any) -> list[Filter]:
        return await self._client._drive(ops.FILTERS.list(sort, **filters))

    async def get(self, filter_id: str) -> Filter:
        return await self._client._drive(ops.FILTERS.get(filter_id))

    async def create(
        self,
        name: str,
        variable_name: str,
        control_type: str,
        value_type: str,
        *,
        datasource_id: str | None = None,
        **attributes: Any,
    ) -> Filter:
        return await self._client._drive(
            ops.create_filter(
                name, variable_name, control_type, value_type, datasource_id, attributes
            )
        )

    async def update(
        self,
        filter_id: str,
        *,
        datasource_id: str | ops.Unchanged | None = ops.UNCHANGED,
        **attributes: Any,
    ) -> Filter:
        return await self._client._drive(ops.update_filter(filter_id, datasource_id, attributes))

    async def delete(self, filter_id: str) -> None:
        await self._client._drive(ops.FILTERS.delete(filter_id))

    async def refresh(self, filter_id: str) -> Filter:
        return await self._client._drive(ops.refresh_filter(filter_id))

    async def options(
        self,
        filter_id: str,
        *,
        page: int | None = None,
        page_size: int | None = None,
        search: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> FilterOptions:
        return await self._client._drive(
            ops.filter_options(filter_id, page, page_size, search, parameters)
        )
