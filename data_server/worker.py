"""Claim → run → publish: the data server's execution loop, with heartbeats and maintenance.

Each executor thread claims one execution at a time and runs it in a sandboxed DuckDB child
process of the pool. A heartbeat thread renews the leases of running executions and relays cancel
requests; a maintenance thread reaps expired leases and runs the janitor. A listener thread wakes
idle executors when new work is announced (shared.notifications); their poll is a safety net.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session, sessionmaker

from data_server import janitor
from data_server.engine import DatasourceSpec, Limits, QueryFailed, QueryJob
from data_server.object_storage import ObjectStorageSpec
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.sample import ensure_sample_database
from data_server.sandbox_pool import SandboxPool
from shared import lifecycle, object_storage
from shared.database_types import DATABASE_TYPES, REMOTE_DATABASE_TYPES
from shared.datapaths import FILE_DATABASE_TYPES, resolve_datasource_path
from shared.db.models import Datasource, utcnow
from shared.egress import check_destination
from shared.errors import AppError
from shared.lifecycle import ErrorCode, ExecutionStatus, ExecutionType
from shared.metrics import Metrics
from shared.notifications import can_listen, listen_for_new_work
from shared.results import ResultStore, delete_stored_data, result_object_key, schema_object_key
from shared.settings import Settings
from shared.shared_folders import granted_folder
from shared.state_secrets import load_fernet
from shared.storage_quota import StorageUsage, storage_usage
from shared.tokens import Scope, new_data_key

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_SECONDS = 5.0
FALLBACK_POLL_SECONDS = 2.0
JANITOR_INTERVAL_SECONDS = 60.0
ORPHAN_SWEEP_SECONDS = 3600.0  # lists the whole result store: hourly is enough


@dataclass
class _Running:
    claim: lifecycle.Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: bool = False


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ResultStore,
        pool: SandboxPool,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sessions = sessions
        self.store = store
        self.pool = pool
        self._fernet: Fernet | None = None  # loaded when a remote datasource first needs it
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._new_work = threading.Event()
        engine = sessions.kw["bind"]
        self._listening = can_listen(engine)
        # With notifications the poll is only a safety net; without them it is the mechanism.
        self._idle_wait = (
            max(settings.poll_interval_seconds, FALLBACK_POLL_SECONDS)
            if self._listening
            else settings.poll_interval_seconds
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        targets = [self._execute_loop] * self.settings.worker_processes
        targets += [self._heartbeat_loop, self._maintenance_loop]
        if self._listening:
            targets.append(self._listen_loop)
        for index, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, hand running executions back to the queue, and wait for the threads."""
        self._stopping.set()
        self._new_work.set()
        with self._lock:
            running = list(self._running.values())
        for job in running:
            job.cancel.set()
            lifecycle.release(self.sessions, job.claim)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ loops

    def _execute_loop(self) -> None:
        """Cleared before each claim, so a notification that arrives while claiming (its row
        perhaps committed too late to be seen) makes the wait below return at once."""
        while not self._stopping.is_set():
            self._new_work.clear()
            try:
                claim = lifecycle.claim_next(self.sessions, self.worker_id, self.settings)
            except Exception:  # the DB may be briefly unavailable: back off, never die
                logger.exception("claiming failed")
                claim = None
            if claim is None:
                self._new_work.wait(self._idle_wait)
                continue
            self._run(claim)

    def _listen_loop(self) -> None:
        listen_for_new_work(self.sessions.kw["bind"], self._new_work, self._stopping)

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._stopping.wait(interval):
            with self._lock:
                running = list(self._running.values())
            for job in running:
                try:
                    state = lifecycle.renew_lease(self.sessions, job.claim, self.settings)
                except Exception:
                    logger.exception("heartbeat failed id=%s", job.claim.execution_id)
                    continue
                if not state.held:
                    logger.warning(
                        "lease lost id=%s attempt=%d", job.claim.execution_id, job.claim.attempt
                    )
                    job.lease_lost = True
                    job.cancel.set()
                elif state.cancel_requested:
                    job.cancel.set()

    def _maintenance_loop(self) -> None:
        last_janitor = last_orphan_sweep = float("-inf")
        while not self._stopping.wait(MAINTENANCE_INTERVAL_SECONDS):
            try:
                lifecycle.reap_expired_leases(self.sessions, self.settings)
                if time.monotonic() - last_janitor > JANITOR_INTERVAL_SECONDS:
                    with_orphans = time.monotonic() - last_orphan_sweep > ORPHAN_SWEEP_SECONDS
                    janitor.sweep(
                        self.sessions, self.store, self.settings, with_orphans=with_orphans
                    )
                    last_janitor = time.monotonic()
                    if with_orphans:
                        last_orphan_sweep = last_janitor
            except Exception:
                logger.exception("maintenance failed")

    # ------------------------------------------------------------------ one execution

    def _run(self, claim: lifecycle.Claim) -> None:
        job = _Running(claim)
        with self._lock:
            self._running[claim.execution_id] = job
        started, outcome = time.monotonic(), str(ExecutionStatus.COMPLETED)
        try:
            spec = self._datasource_spec(claim)
            if claim.execution_type == ExecutionType.SQL_QUERY:
                self._run_query(job, spec)
            elif claim.execution_type == ExecutionType.DATASOURCE_REFRESH:
                self._run_refresh(job, spec)
            else:
                self.pool.check_connection(spec, self._limits(), cancel_event=job.cancel)
                self._complete_without_result(job)
        except QueryFailed as failure:
            outcome = failure.code
            if not job.lease_lost and not self._stopping.is_set():
                message = without_bound_values(failure.message, claim.bound_parameters)
                lifecycle.finish_unsuccessfully(self.sessions, claim, failure.code, message)
            logger.info("execution failed id=%s code=%s", claim.execution_id, failure.code)
        except Exception:
            outcome = ErrorCode.INTERNAL_ERROR
            logger.exception("execution crashed id=%s", claim.execution_id)
            lifecycle.finish_unsuccessfully(
                self.sessions,
                claim,
                ErrorCode.INTERNAL_ERROR,
                "The data server failed to run this execution.",
            )
        finally:
            with self._lock:
                self._running.pop(claim.execution_id, None)
            elapsed = time.monotonic() - started
            if self.metrics is not None:
                self.metrics.execution_duration.labels(claim.execution_type, outcome).observe(
                    elapsed
                )
            logger.info(
                "execution done id=%s type=%s attempt=%d %.0fms",
                claim.execution_id,
                claim.execution_type,
                claim.attempt,
                elapsed * 1000,
            )

    def _limits(self) -> Limits:
        s = self.settings
        return Limits(
            timeout_seconds=s.query_timeout_seconds,
            memory_limit_mb=s.query_memory_limit_mb,
            threads=s.query_threads,
            max_temp_directory_size_mb=s.query_temp_space_mb,
            max_result_rows=s.max_result_rows,
            max_result_bytes=s.max_result_bytes,
        )

    def _datasource_spec(self, claim: lifecycle.Claim) -> DatasourceSpec:
        if claim.database_type in REMOTE_DATABASE_TYPES:
            return DatasourceSpec(
                database_type=claim.database_type,
                path="",
                data_time_zone=claim.data_time_zone,
                remote=self._remote_spec(claim),
            )
        if claim.database_type == object_storage.DATABASE_TYPE:
            storage = self._object_storage_spec(claim)
            return DatasourceSpec(
                database_type=claim.database_type,
                path=storage.url,
                data_time_zone=claim.data_time_zone,
                object_storage=storage,
            )
        if claim.database_type == "sample":
            path = ensure_sample_database(self.settings.state_dir, self.settings.sample_scale)
        else:
            path = self._confined_file_path(claim)
        return DatasourceSpec(
            database_type=claim.database_type, path=str(path), data_time_zone=claim.data_time_zone
        )

    def _remote_spec(self, claim: lifecycle.Claim) -> RemoteDatabaseSpec:
        """The host checked against the egress policy again, now (its answer is the address the
        child connects to), and the password decrypted only to be handed to that child."""
        port = claim.port or DATABASE_TYPES[claim.database_type].default_port or 0
        address = self._checked_address(claim.host or "", port)
        password = self._password(claim)
        return RemoteDatabaseSpec(
            host=claim.host or "",
            address=address,
            port=port,
            database=claim.database or "",
            username=claim.username or "",
            password=password,
            require_ssl=claim.require_ssl,
            verify_ssl=claim.verify_ssl,
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
        )

    def _object_storage_spec(self, claim: lifecycle.Claim) -> ObjectStorageSpec:
        """As for a remote database: the endpoint's host (the bucket's own name, for AWS)
        checked now and the secret key decrypted only for the child."""
        region = claim.s3_region or object_storage.DEFAULT_REGION
        try:
            location = object_storage.parse_location(claim.database or "")
        except ValueError as exc:
            raise QueryFailed("datasource_unavailable", f"database: {exc}.") from None
        endpoint = object_storage.endpoint_for(
            location, claim.host, claim.port, region, claim.require_ssl
        )
        return ObjectStorageSpec.of(
            location,
            endpoint,
            region=region,
            verify_ssl=claim.verify_ssl,
            address=self._checked_address(endpoint.connect_host, endpoint.connect_port),
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
            key_id=claim.username,
            secret=self._password(claim),
        )

    def _checked_address(self, host: str, port: int) -> str:
        try:
            return check_destination(host, port, self.settings)
        except AppError as exc:
            raise QueryFailed(exc.code, exc.detail) from None

    def _password(self, claim: lifecycle.Claim) -> str | None:
        if not claim.password_encrypted:
            return None
        if self._fernet is None:
            self._fernet = load_fernet(self.settings)
        try:
            return self._fernet.decrypt(claim.password_encrypted.encode()).decode()
        except InvalidToken:
            raise QueryFailed(
                "datasource_unavailable",
                "The stored password cannot be decrypted: the data server's "
                "DATAFERRY_ENCRYPTION_KEY differs from the API server's.",
            ) from None

    def _confined_file_path(self, claim: lifecycle.Claim) -> Path:
        """Confine the path again at run time, in the organisation's area or a folder granted to
        it: a symlink may have changed, or the grant been revoked, since the API server checked."""

        def granted(name: str) -> Path | None:
            with self.sessions() as session:
                return granted_folder(session, self.settings, claim.organization_id, name)

        try:
            return resolve_datasource_path(
                self.settings.data_root,
                claim.organization_id,
                claim.database or "",
                want_dir=FILE_DATABASE_TYPES.get(claim.database_type, False),
                granted_folder=granted,
            ).path
        except AppError as exc:
            raise QueryFailed("datasource_unavailable", exc.detail) from exc

    def _run_query(self, job: _Running, spec: DatasourceSpec) -> None:
        claim = job.claim
        scratch = self.store.temp_path(f"{claim.execution_id}-{claim.attempt}")
        result_path = scratch.with_suffix(".arrow")
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            limits, usage = self._limits_within_quota(claim)
            query = QueryJob(
                datasource=spec,
                sql=claim.sql,
                parameters=claim.bound_parameters,
                limits=limits,
                result_path=str(result_path),
                temp_dir=str(scratch),
            )
            outcome = self.pool.run(query, cancel_event=job.cancel)
            if job.lease_lost or self._stopping.is_set():
                return
            cut_by_quota = limits.max_result_bytes < self.settings.max_result_bytes
            if outcome.truncated and cut_by_quota and outcome.rows < limits.max_result_rows:
                raise QueryFailed(ErrorCode.STORAGE_QUOTA_EXCEEDED, usage.exceeded_message())
            data_key = new_data_key(Scope.EXECUTION_RESULT)
            self.store.publish(result_path, result_object_key(data_key))
            with self.sessions.begin() as session:
                published = lifecycle.complete(
                    session,
                    claim,
                    rows=outcome.rows,
                    columns=outcome.columns,
                    size=outcome.size_bytes,
                    truncated=outcome.truncated,
                    data_key=data_key,
                )
            if not published:  # fenced off: cancelled, purged, deleted or owned by a newer attempt
                delete_stored_data(self.store, results=[data_key])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            result_path.unlink(missing_ok=True)

    def _limits_within_quota(self, claim: lifecycle.Claim) -> tuple[Limits, StorageUsage]:
        """A result may take only what the organisation's storage quota leaves; none left fails
        the execution before it runs, and a result cut short by the quota fails it after."""
        with self.sessions() as session:
            usage = storage_usage(session, self.settings, claim.organization_id)
        if usage.remaining_bytes <= 0:
            raise QueryFailed(ErrorCode.STORAGE_QUOTA_EXCEEDED, usage.exceeded_message())
        limits = self._limits()
        cap = min(limits.max_result_bytes, usage.remaining_bytes)
        return replace(limits, max_result_bytes=cap), usage

    def _run_refresh(self, job: _Running, spec: DatasourceSpec) -> None:
        claim = job.claim
        schema = self.pool.schema_of(spec, self._limits(), cancel_event=job.cancel)
        exact = bool(schema.pop("row_counts_exact", True))  # recorded, not part of the schema
        if job.lease_lost or self._stopping.is_set():
            return
        data_key = new_data_key(Scope.DATASOURCE_SCHEMA)
        payload = orjson.dumps(schema)
        self.store.put_bytes(schema_object_key(data_key), payload)
        previous: str | None = None
        with self.sessions.begin() as session:
            published = lifecycle.complete(
                session, claim, rows=0, columns=0, size=len(payload), truncated=False, data_key=None
            )
            datasource = session.get(Datasource, claim.datasource_id)
            if published and datasource is not None:
                previous = datasource.schema_data_key
                datasource.schema_data_key = data_key
                datasource.schema_names = [s["name"] for s in schema.get("schemas", [])]
                datasource.schema_updated_at = utcnow()
                datasource.total_row_count = _total_rows(schema)
                datasource.total_row_count_exact = exact
                datasource.server_version = schema.get("server_version")
        delete_stored_data(self.store, schemas=[previous if published else data_key])

    def _complete_without_result(self, job: _Running) -> None:
        if job.lease_lost or self._stopping.is_set():
            return
        with self.sessions.begin() as session:
            lifecycle.complete(
                session, job.claim, rows=0, columns=0, size=0, truncated=False, data_key=None
            )


def _total_rows(schema: dict) -> int | None:
    counts = [t.get("row_count") for s in schema.get("schemas", []) for t in s.get("tables", [])]
    known = [c for c in counts if isinstance(c, int)]
    return sum(known) if known else None


def without_bound_values(message: str, values: list[Any]) -> str:
    """DuckDB quotes a value it could not convert; only the key that ran it may see values."""
    for position, value in enumerate(values, 1):
        if isinstance(value, str) and value:
            message = message.replace(f"'{value}'", f"(the value of ${position})")
            if len(value) >= 8:
                message = message.replace(value, f"(the value of ${position})")
    return message
