"""Claim → run → publish: the data server's execution loop, with heartbeats and maintenance.

Each executor thread claims one execution at a time and runs it (data_server.execution_runs)
in a sandboxed DuckDB child process of the pool. A heartbeat thread renews the leases of running
executions and relays cancel requests; a maintenance thread reaps expired leases and runs the
janitor. Listener threads (shared.notifications) wake idle executors when new work is announced,
their poll a safety net, and relay a cancel as soon as it is announced, the heartbeat the safety
net. A scheduler thread queues the dashboard refreshes that are due (data_server.scheduler),
which one data server of the region claims.

A data server has one executor more than ``DATAFERRY_WORKER_PROCESSES``, and one organisation may
fill only that many (shared.lifecycle.claims): alone it keeps every configured worker busy, and
another organisation's execution still starts at once, on the spare one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter

from sqlalchemy.orm import Session, sessionmaker

from data_server import janitor
from data_server.execution_runs import ExecutionRunner, Job
from data_server.sandbox_pool import SandboxPool
from data_server.scheduler import Scheduler
from shared import lifecycle
from shared.db.engine import log_failure
from shared.metrics import Metrics
from shared.notifications import Doorbell, Topic, can_listen, listen, listen_for_new_work
from shared.results import ResultStore
from shared.settings import Settings

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_SECONDS = 5.0
FALLBACK_POLL_SECONDS = 2.0
CONTENDED_RETRY_SECONDS = 0.05
ORPHAN_SWEEP_SECONDS = 3600.0  # lists the whole result store: hourly is enough


def executor_count(settings: Settings) -> int:
    """Executor threads (and sandbox children) of a data server: the configured workers, which
    one organisation may fill, and a spare that only another organisation's execution takes."""
    return settings.worker_processes + 1


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
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self.runner = ExecutionRunner(settings, sessions, store, pool, self._stopping)
        self._running: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._doorbell = Doorbell(limit=executor_count(settings))
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
        targets = [self._execute_loop] * executor_count(self.settings)
        targets += [self._heartbeat_loop, self._maintenance_loop, self._schedule_loop]
        if self._listening:
            targets += [self._listen_loop, self._cancels_loop]
        for index, target in enumerate(targets):
            thread = threading.Thread(target=target, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "worker started id=%s executors=%d scheduler_interval=%.1fs",
            self.worker_id,
            executor_count(self.settings),
            self.settings.scheduler_interval_seconds,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, hand running executions back to the queue, and wait for the threads."""
        self._stopping.set()
        self._doorbell.ring(self._doorbell.limit)
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
        """Claim until nothing may start, then wait for the doorbell (a notification that came
        while claiming, its row perhaps committed too late to be seen, is a ring kept for this
        wait). Having claimed, ring for one more executor if the claim saw more claimable work
        than it took: more may be queued than notifications said (one transaction queued
        several, or they came while every executor was busy). Having run, announce the slot it
        freed to work already queued, and claim again if there was any (without asking again
        whether there is)."""
        queued_known = False
        while not self._stopping.is_set():
            known, queued_known = queued_known, False  # told once, to the claim that follows
            try:
                claim = lifecycle.claim_next(
                    self.sessions,
                    self.worker_id,
                    self.settings,
                    at_their_share=self.organizations_at_their_share(),
                    queued_known=known,
                )
            except lifecycle.ClaimContended:  # the ring that woke us is spent: claim again soon
                self._stopping.wait(CONTENDED_RETRY_SECONDS)
                continue
            except Exception as error:  # the DB may be briefly unavailable: back off, never die
                log_failure(logger, error, "claiming failed")
                self._stopping.wait(self._idle_wait)
                continue  # and claim again: work that rang may still be queued
            if claim is None:
                self._doorbell.wait(self._idle_wait)
                continue
            job = self._track(claim)  # before the ring: the one it wakes counts it
            if claim.more_claimable:
                self._doorbell.ring()
            self._run(job)
            # With nothing queued as the run ended, what is queued from now on rings.
            queued_known = self._announce_freed_slot()
            if not queued_known and not self._stopping.is_set():
                self._doorbell.wait(self._idle_wait)

    def _announce_freed_slot(self) -> bool:
        """Tell the region's workers that a slot is free, if work is queued; whether any may be
        (also when asking failed: the claim that follows finds out)."""
        try:
            return lifecycle.announce_if_work_waits(self.sessions.kw["bind"])
        except Exception as error:
            log_failure(logger, error, "announcing the freed slot failed")
            return True

    def organizations_at_their_share(self) -> frozenset[str]:
        """The organisations whose executions fill their share of this data server
        (``DATAFERRY_WORKER_PROCESSES``), by its own executors' jobs: a claim ranks their queued
        work for nothing. A job counts from just after its claim until its executor is free to
        claim again, which its executor then does, or until its lease is lost (the heartbeat
        then rings: the row was re-queued, and another executor may take it at once)."""
        with self._lock:
            running = Counter(
                job.claim.organization_id for job in self._running.values() if not job.lease_lost
            )
        share = self.settings.worker_processes
        return frozenset(organization for organization, jobs in running.items() if jobs >= share)

    def _listen_loop(self) -> None:
        listen_for_new_work(self.sessions.kw["bind"], self._doorbell, self._stopping)

    def _cancels_loop(self) -> None:
        """A cancel announced for an execution running here renews its lease at once, which
        reads whether the cancel is still requested; (re)started, every running one does, for
        cancels announced while nobody listened."""
        listen(
            self.sessions.kw["bind"],
            Topic.CANCEL_REQUESTED,
            heard=lambda execution_ids: self._renew(self._jobs(execution_ids)),
            started=lambda: self._renew(self._jobs()),
            stopping=self._stopping,
        )

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 3)
        while not self._stopping.wait(interval):
            self._renew(self._jobs())

    def _jobs(self, execution_ids: list[str] | None = None) -> list[Job]:
        """The jobs running here: all of them, or those of ``execution_ids``."""
        with self._lock:
            if execution_ids is None:
                return list(self._running.values())
            return [job for id_ in execution_ids if (job := self._running.get(id_)) is not None]

    def _renew(self, jobs: list[Job]) -> None:
        """Extend their leases; a job whose lease was lost, or whose cancel was requested, is
        told to stop."""
        for job in jobs:
            try:
                state = lifecycle.renew_lease(self.sessions, job.claim, self.settings)
            except Exception as error:
                log_failure(logger, error, "heartbeat failed id=%s", job.claim.execution_id)
                continue
            if not state.held:
                with self._lock:  # its run ended meanwhile (a cancel racing it): nothing lost
                    if self._running.get(job.claim.execution_id) is not job:
                        continue
                logger.warning(
                    "lease lost id=%s attempt=%d", job.claim.execution_id, job.claim.attempt
                )
                job.lease_lost = True
                job.cancel.set()
                self._doorbell.ring()  # its organisation may have room here again
            elif state.cancel_requested:
                job.cancel.set()

    def _maintenance_loop(self) -> None:
        last_janitor = last_orphan_sweep = float("-inf")
        while not self._stopping.wait(MAINTENANCE_INTERVAL_SECONDS):
            try:
                lifecycle.reap_expired_leases(self.sessions, self.settings)
                if time.monotonic() - last_janitor > lifecycle.RETENTION_SWEEP_SECONDS:
                    with_orphans = time.monotonic() - last_orphan_sweep > ORPHAN_SWEEP_SECONDS
                    janitor.sweep(
                        self.sessions, self.store, self.settings, with_orphans=with_orphans
                    )
                    last_janitor = time.monotonic()
                    if with_orphans:
                        last_orphan_sweep = last_janitor
            except Exception as error:
                log_failure(logger, error, "maintenance failed")

    def _schedule_loop(self) -> None:
        scheduler = Scheduler(self.sessions, self.settings, self.worker_id)
        while not self._stopping.wait(self.settings.scheduler_interval_seconds):
            try:
                scheduler.run_pass()
            except Exception as error:
                log_failure(logger, error, "scheduling failed")

    # ------------------------------------------------------------------ one execution

    def _track(self, claim: lifecycle.Claim) -> Job:
        job = Job(claim)
        with self._lock:
            self._running[claim.execution_id] = job
        return job

    def _run(self, job: Job) -> None:
        claim = job.claim
        started = time.monotonic()
        try:
            outcome = self.runner.run(job)
        finally:
            with self._lock:
                self._running.pop(claim.execution_id, None)
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.execution_duration.labels(claim.execution_type, outcome).observe(elapsed)
        logger.info(
            "execution done id=%s type=%s attempt=%d %.0fms",
            claim.execution_id,
            claim.execution_type,
            claim.attempt,
            elapsed * 1000,
        )
