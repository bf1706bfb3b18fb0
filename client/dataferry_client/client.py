"""``Client``: the synchronous client. Every operation is written once in ``operations.py``."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dataferry_client import operations as ops
from dataferry_client.config import Config, resolve_config
from dataferry_client.download import Grants, Progress, ProgressCallback, ResultDownload
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
from dataferry_client.result import Result
from dataferry_client.transport import RetryRule, SyncTransport


def poll_reporter(progress: ProgressCallback | None) -> ops.PollCallback | None:
    """Turns execution polls into ``Progress`` events (phase ``waiting``)."""
    if progress is None:
        return None
    return lambda execution, elapsed: progress(
        Progress("waiting", execution.result_rows or 0, 0, elapsed, str(execution.status))
    )


T = TypeVar("T")


class Client:
    """``Client(api_url, api_key)``, or from ``DATAFERRY_API_URL``/``DATAFERRY_API_KEY``/a profile.

    ``timeout`` is per HTTP request; ``max_retries`` and ``max_retry_wait`` bound the waiting
    out of 429 answers and the resending of requests that are safe to resend.
    """

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
        self._transport = SyncTransport(
            self.config, timeout=timeout, retry=RetryRule(max_retries, max_retry_wait)
        )
        self.timeout = timeout
        self.datasources = Datasources(self)
        self.executions = Executions(self)
        self.snippets = Snippets(self)
        self.reports = Reports(self)
        self.dashboards = Dashboards(self)
        self.dashboard_groups = DashboardGroups(self)
        self.filters = Filters(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def _drive(self, operation: ops.Operation[T]) -> T:
        return self._transport.drive(operation)

    def api_key(self) -> ApiKey:
        """The calling key: its permissions, datasource scope and organisation."""
        return self._drive(ops.calling_api_key())

    def query(
        self,
        datasource: str,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Result:
        """Run ``sql`` on a datasource (id or name), wait for it, and return its result.

        Raises ExecutionFailed if it failed or was cancelled, QueryTimeout after ``timeout``
        seconds (the execution goes on; cancel it with ``executions.cancel``). Ctrl-C while it
        waits cancels the execution and raises QueryInterrupted (a KeyboardInterrupt).
        """
        execution = self._drive(
            ops.query(datasource, sql, parameters, timeout, poll_reporter(progress))
        )
        return self.result(execution, progress)

    def result(self, execution: Execution, progress: ProgressCallback | None = None) -> Result:
        """The result of a completed execution; its data is fetched when asked for, with the
        grant asked for now."""
        ops.ensure_completed(execution)

        def grant() -> DataGrant:
            return self._drive(ops.grant_execution_data(execution.id))

        grants = Grants(grant, execution.grant or grant())  # run-and-wait brought one

        def download(progress: ProgressCallback | None) -> ResultDownload:
            return ResultDownload(
                self.config.data_url,
                grants,
                expected_rows=execution.result_rows,
                size_hint=execution.result_size or 0,
                timeout=self.timeout,
                progress=progress,
            )

        return Result(execution, download, progress)


class Datasources:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[Datasource]:
        """Every datasource the key sees; ``filters`` are ``filter[...]`` (name, database_type)."""
        return self._client._drive(ops.list_datasources(sort, **filters))

    def get(self, datasource_id: str) -> Datasource:
        return self._client._drive(ops.get_datasource(datasource_id))

    def create(self, **attributes: Any) -> Datasource:
        return self._client._drive(ops.create_datasource(attributes))

    def update(self, datasource_id: str, **attributes: Any) -> Datasource:
        return self._client._drive(ops.update_datasource(datasource_id, attributes))

    def delete(self, datasource_id: str) -> None:
        self._client._drive(ops.delete_datasource(datasource_id))

    def test_connection(self, datasource_id: str) -> ConnectionTest:
        return self._client._drive(ops.test_datasource_connection(datasource_id))

    def refresh(self, datasource_id: str) -> str:
        """Starts a schema refresh; returns its execution id."""
        return self._client._drive(ops.refresh_datasource(datasource_id))

    def schema(self, datasource_id: str, name: str | None = None) -> Any:
        return self._client._drive(ops.datasource_schema(datasource_id, name))


class Executions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def run(
        self,
        datasource_id: str,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Queue an execution and return at once (``wait`` or ``client.query`` to wait)."""
        return self._client._drive(
            ops.run_execution(datasource_id, sql, parameters, idempotency_key)
        )

    def get(self, execution_id: str, wait: float = 0) -> Execution:
        return self._client._drive(ops.get_execution(execution_id, wait))

    def wait(
        self,
        execution_id: str,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Execution:
        return self._client._drive(
            ops.wait_for_execution(execution_id, timeout, poll_reporter(progress))
        )

    def grant(self, execution_id: str) -> DataGrant:
        """Get Execution Data: a data key and a short-lived token for the data server."""
        return self._client._drive(ops.grant_execution_data(execution_id))

    def cancel(self, execution_id: str) -> Execution:
        return self._client._drive(ops.cancel_execution(execution_id))

    def delete(self, execution_id: str) -> None:
        """Purge the stored result now."""
        self._client._drive(ops.delete_execution(execution_id))

    def result(self, execution_id: str, progress: ProgressCallback | None = None) -> Result:
        return self._client.result(self.get(execution_id), progress)


class Snippets:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[SqlSnippet]:
        return self._client._drive(ops.list_snippets(sort, **filters))

    def get(self, snippet_id: str) -> SqlSnippet:
        return self._client._drive(ops.get_snippet(snippet_id))

    def create(self, name: str, sql: str, description: str | None = None) -> SqlSnippet:
        attributes = {"name": name, "sql": sql}
        if description is not None:
            attributes["description"] = description
        return self._client._drive(ops.create_snippet(attributes))

    def update(self, snippet_id: str, **attributes: Any) -> SqlSnippet:
        return self._client._drive(ops.update_snippet(snippet_id, attributes))

    def delete(self, snippet_id: str) -> None:
        self._client._drive(ops.delete_snippet(snippet_id))


class Reports:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[Report]:
        """``filters`` are ``filter[...]``: name, datasource (an id), dashboard (an id)."""
        return self._client._drive(ops.REPORTS.list(sort, **filters))

    def get(self, report_id: str) -> Report:
        return self._client._drive(ops.REPORTS.get(report_id))

    def create(
        self,
        name: str,
        sql_query: str,
        datasource_id: str,
        *,
        dashboard_id: str | None = None,
        **attributes: Any,
    ) -> Report:
        return self._client._drive(
            ops.create_report(name, sql_query, datasource_id, dashboard_id, attributes)
        )

    def update(
        self,
        report_id: str,
        *,
        datasource_id: str | None = None,
        dashboard_id: str | ops.Unchanged | None = ops.UNCHANGED,
        **attributes: Any,
    ) -> Report:
        """Only what is given changes; ``dashboard_id=None`` takes the report off its dashboard."""
        return self._client._drive(
            ops.update_report(report_id, datasource_id, dashboard_id, attributes)
        )

    def delete(self, report_id: str) -> None:
        self._client._drive(ops.REPORTS.delete(report_id))

    def run(
        self,
        report_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        refresh: bool = False,
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Execution:
        """Queue the report's SQL (or reuse a recent execution: ``refresh`` refuses that);
        ``wait`` seconds (at most 30) to answer once it ended, with its data grant."""
        return self._client._drive(
            ops.run_report(report_id, parameters, refresh, idempotency_key, wait)
        )


class Dashboards:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[Dashboard]:
        """``filters`` are ``filter[...]``: name."""
        return self._client._drive(ops.DASHBOARDS.list(sort, **filters))

    def get(self, dashboard_id: str) -> Dashboard:
        return self._client._drive(ops.DASHBOARDS.get(dashboard_id))

    def create(self, name: str, **attributes: Any) -> Dashboard:
        return self._client._drive(ops.DASHBOARDS.create({"name": name, **attributes}))

    def update(self, dashboard_id: str, **attributes: Any) -> Dashboard:
        return self._client._drive(ops.DASHBOARDS.update(dashboard_id, attributes))

    def delete(self, dashboard_id: str) -> None:
        """Its reports go with it."""
        self._client._drive(ops.DASHBOARDS.delete(dashboard_id))

    def run(
        self,
        dashboard_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        refresh: bool = False,
    ) -> builtins.list[Execution]:  # ``list`` is the method above
        """Run every report of the dashboard: one execution each, oldest report first."""
        return self._client._drive(ops.run_dashboard(dashboard_id, parameters, refresh))

    def backup(self, dashboard_id: str) -> dict[str, Any]:
        """The backup document (docs/dashboard-backups.md)."""
        return self._client._drive(ops.backup_dashboard(dashboard_id))

    def restore(
        self, backup: Mapping[str, Any], datasource_map: Mapping[str, str] | None = None
    ) -> Dashboard:
        """A new dashboard from ``backup``; ``datasource_map`` maps each of its datasources'
        ``ref`` to a datasource id (None: each onto itself)."""
        return self._client._drive(ops.restore_dashboard(backup, datasource_map))


class DashboardGroups:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[DashboardGroup]:
        """``filters`` are ``filter[...]``: name."""
        return self._client._drive(ops.DASHBOARD_GROUPS.list(sort, **filters))

    def get(self, group_id: str) -> DashboardGroup:
        return self._client._drive(ops.DASHBOARD_GROUPS.get(group_id))

    def create(
        self, name: str, *, dashboard_ids: Sequence[str] | None = None, **attributes: Any
    ) -> DashboardGroup:
        return self._client._drive(ops.create_group(name, dashboard_ids, attributes))

    def update(
        self, group_id: str, *, dashboard_ids: Sequence[str] | None = None, **attributes: Any
    ) -> DashboardGroup:
        """``dashboard_ids``, when given, replaces the group's dashboards."""
        return self._client._drive(ops.update_group(group_id, dashboard_ids, attributes))

    def delete(self, group_id: str) -> None:
        """Its dashboards stay."""
        self._client._drive(ops.DASHBOARD_GROUPS.delete(group_id))


class Filters:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, sort: str | None = None, **filters: Any) -> list[Filter]:
        """``filters`` are ``filter[...]``: name, variable_name, control_type, options_source,
        datasource (an id)."""
        return self._client._drive(ops.FILTERS.list(sort, **filters))

    def get(self, filter_id: str) -> Filter:
        return self._client._drive(ops.FILTERS.get(filter_id))

    def create(
        self,
        name: str,
        variable_name: str,
        control_type: str,
        value_type: str,
        *,
        datasource_id: str | None = None,
        **attributes: Any,
    ) -> Filter:
        """``datasource_id``: where ``options_sql_query`` runs (SQL options need one)."""
        return self._client._drive(
            ops.create_filter(
                name, variable_name, control_type, value_type, datasource_id, attributes
            )
        )

    def update(
        self,
        filter_id: str,
        *,
        datasource_id: str | ops.Unchanged | None = ops.UNCHANGED,
        **attributes: Any,
    ) -> Filter:
        """Only what is given changes; ``datasource_id=None`` leaves it without a datasource."""
        return self._client._drive(ops.update_filter(filter_id, datasource_id, attributes))

    def delete(self, filter_id: str) -> None:
        self._client._drive(ops.FILTERS.delete(filter_id))

    def refresh(self, filter_id: str) -> Filter:
        """Run a ``static_sql`` filter's SQL again (``status`` ``pending`` until copied)."""
        return self._client._drive(ops.refresh_filter(filter_id))

    def options(
        self,
        filter_id: str,
        *,
        page: int | None = None,
        page_size: int | None = None,
        search: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> FilterOptions:
        """A page of the drop-down's options; ``parameters`` (Run Execution's, the other
        filters' values) feed ``dynamic_sql`` options. Options not there yet: ``Conflict``
        with code ``filter_options_pending`` (ask again in a second)."""
        return self._client._drive(
            ops.filter_options(filter_id, page, page_size, search, parameters)
        )
