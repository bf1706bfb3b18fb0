"""First encodings take turns between organisations: one organisation's many jobs wait behind
each other, not in front of another's, and no thread idles while a job waits."""

from __future__ import annotations

import threading

import pytest

from data_server.fair_jobs import FairJobs


class Recorder:
    """Jobs that record their name when they start; ``gate`` holds the first one."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = threading.Event()
        self.all_done = threading.Event()
        self.expected = 0
        self._lock = threading.Lock()

    def job(self, name: str, *, held: bool = False):
        with self._lock:
            self.expected += 1

        def run() -> None:
            with self._lock:
                self.started.append(name)
            if held:
                assert self.gate.wait(10)
            with self._lock:
                self.expected -= 1
                if not self.expected:
                    self.all_done.set()

        return run


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _started(recorder: Recorder, count: int) -> None:
    for _ in range(1000):
        if len(recorder.started) >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"only {recorder.started} started")


def test_on_one_thread_organisations_take_turns(recorder):
    jobs = FairJobs(1, name="test")
    try:
        jobs.submit("a", recorder.job("a1", held=True))
        _started(recorder, 1)
        for name in ("a2", "a3", "a4"):
            jobs.submit("a", recorder.job(name))
        jobs.submit("b", recorder.job("b1"))
        jobs.submit("b", recorder.job("b2"))
        recorder.gate.set()
        assert recorder.all_done.wait(10)
    finally:
        jobs.shutdown()
    # A plain pool would run a1, a2, a3, a4, b1, b2.
    assert recorder.started == ["a1", "b1", "a2", "b2", "a3", "a4"]


def test_one_organisation_never_runs_on_every_thread_so_another_starts_at_once(recorder):
    jobs = FairJobs(3, name="test")
    try:
        for name in ("a1", "a2", "a3", "a4"):
            jobs.submit("a", recorder.job(name, held=True))
        _started(recorder, 2)
        threading.Event().wait(0.05)
        assert recorder.started == ["a1", "a2"]  # the third thread is kept for the others
        jobs.submit("b", recorder.job("b1", held=True))
        _started(recorder, 3)
        assert recorder.started[2] == "b1"  # without waiting for a's long jobs to end
        recorder.gate.set()
        assert recorder.all_done.wait(10)
    finally:
        jobs.shutdown()
    assert sorted(recorder.started) == ["a1", "a2", "a3", "a4", "b1"]


def test_a_job_that_raises_leaves_its_thread_working(recorder):
    jobs = FairJobs(1, name="test")

    def raising() -> None:
        raise OSError("a job that did not handle its own error")

    try:
        jobs.submit("a", raising)
        jobs.submit("a", recorder.job("after"))
        assert recorder.all_done.wait(10)
    finally:
        jobs.shutdown()
    assert recorder.started == ["after"]


def test_after_shutdown_waiting_jobs_never_run_and_new_ones_are_refused(recorder):
    jobs = FairJobs(1, name="test")
    jobs.submit("a", recorder.job("a1", held=True))
    _started(recorder, 1)
    jobs.submit("a", recorder.job("a2"))
    jobs.shutdown()
    recorder.gate.set()
    with pytest.raises(RuntimeError):
        jobs.submit("a", recorder.job("a3"))
    for thread in jobs._threads:
        thread.join(10)
        assert not thread.is_alive()
    assert recorder.started == ["a1"]


def test_threads_start_as_jobs_need_them_and_every_job_runs(recorder):
    jobs = FairJobs(4, name="test")
    try:
        assert jobs._threads == []  # an idle data server holds no encoding thread
        for n in range(60):
            jobs.submit(f"org-{n % 3}", recorder.job(f"job-{n}"))
        _started(recorder, 60)  # (all_done may be set between two submissions, as all ran)
        assert 1 <= len(jobs._threads) <= 4
    finally:
        jobs.shutdown()
    assert sorted(recorder.started) == sorted(f"job-{n}" for n in range(60))
