"""The sandbox pool: children are reused, a query goes to the child whose warm instance fits it,
and a killed, cancelled or stuck one is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from data_server.engine import DatasourceSpec, Limits, QueryFailed, QueryJob
from data_server.sandbox_pool import CHILD_START_SECONDS, SandboxPool
from tests.support.factories import SANDBOX_LIMITS

LIMITS = SANDBOX_LIMITS
ENDLESS = "SELECT count(*) FROM range(1000000000000)"


@pytest.fixture
def spec(tmp_path) -> DatasourceSpec:
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(1000)")
    return DatasourceSpec("duckdb", str(path))


@pytest.fixture
def pool(tmp_path):
    pool = SandboxPool(2, scratch_root=str(tmp_path))
    yield pool
    pool.close()


def _job(spec, sql, tmp_path, name="out", limits=LIMITS) -> QueryJob:
    return QueryJob(spec, sql, None, limits, str(tmp_path / f"{name}.arrow"), str(tmp_path / name))


def _busy_child(pool: SandboxPool, warm: set[int]) -> int:
    """The warm child that left the idle list: this process may have other children (a server
    a session fixture started), so only the pool's own count."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = (warm & _children_of_this_process()) - set(pool.child_pids())
        if children:
            return children.pop()
        time.sleep(0.05)
    raise AssertionError("no busy sandbox child appeared")


def _children_of_this_process() -> set[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    with open(path) as handle:
        return {int(pid) for pid in handle.read().split()}


def _warmed(pool: SandboxPool) -> set[int]:
    """Every child idle: on a loaded machine each start takes seconds, and the warm-up starts
    them one after the other."""
    deadline = time.monotonic() + pool.size * CHILD_START_SECONDS
    while len(pool.child_pids()) < pool.size:
        assert time.monotonic() < deadline, "the pool's children did not start"
        time.sleep(0.05)
    return set(pool.child_pids())


def test_children_are_reused_between_calls(pool, spec, tmp_path):
    warm = _warmed(pool)
    assert len(warm) == 2
    for index in range(3):
        assert pool.run(_job(spec, "SELECT n FROM numbers", tmp_path, f"r{index}")).rows == 1000
    assert set(pool.child_pids()) == warm


def test_a_query_that_fails_leaves_its_child_usable(pool, spec, tmp_path):
    with pytest.raises(QueryFailed) as failure:
        pool.run(_job(spec, "SELECT * FROM missing", tmp_path))
    assert failure.value.code == "execution_error"
    assert pool.run(_job(spec, "SELECT 1", tmp_path)).rows == 1


def test_a_query_goes_to_the_child_that_keeps_its_datasource_warm(pool, spec, tmp_path):
    """Two datasources, two children, alternating: each stays warm in a child of its own."""
    _warmed(pool)
    first, second = replace(spec, owner="org-a/ds-1"), replace(spec, owner="org-a/ds-2")
    reused = [
        pool.run(_job(each, "SELECT n FROM numbers LIMIT 1", tmp_path, f"w{i}")).reused_instance
        for i, each in enumerate([first, second] * 3)
    ]
    assert reused == [False, False, True, True, True, True]


def test_a_warm_instance_never_serves_another_organisation(tmp_path, spec):
    pool = SandboxPool(1, scratch_root=str(tmp_path))
    try:
        ours, theirs = replace(spec, owner="org-a/ds-1"), replace(spec, owner="org-b/ds-1")
        reused = [
            pool.run(_job(each, "SELECT 1", tmp_path, f"o{i}")).reused_instance
            for i, each in enumerate([ours, ours, theirs, ours])
        ]
    finally:
        pool.close()
    assert reused == [False, True, False, False]


def test_a_timed_out_query_takes_its_warm_instance_with_it(pool, spec, tmp_path):
    owned = replace(spec, owner="org-a/ds-1")
    pool.run(_job(owned, "SELECT 1", tmp_path, "before"))
    limits = replace(LIMITS, timeout_seconds=0.5)
    with pytest.raises(QueryFailed):
        pool.run(_job(owned, ENDLESS, tmp_path, "endless", limits=limits))
    reused = [pool.run(_job(owned, "SELECT 1", tmp_path, f"a{i}")).reused_instance for i in (1, 2)]
    assert reused == [False, True]


def test_timeout_interrupts_and_the_next_call_succeeds(pool, spec, tmp_path):
    limits = Limits(**{**LIMITS.__dict__, "timeout_seconds": 0.5})
    with pytest.raises(QueryFailed) as failure:
        pool.run(_job(spec, ENDLESS, tmp_path, limits=limits))
    assert failure.value.code == "timeout"
    assert pool.run(_job(spec, "SELECT 1", tmp_path)).rows == 1


def test_cancel_kills_the_child_and_a_new_one_takes_its_place(pool, spec, tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(QueryFailed) as failure:
        pool.run(_job(spec, ENDLESS, tmp_path), cancel_event=cancel)
    assert failure.value.code == "cancelled"
    assert pool.run(_job(spec, "SELECT 2", tmp_path)).rows == 1


def test_a_cancelled_childs_warm_scratch_directory_goes_with_it(pool, spec, tmp_path):
    """A warm instance has a scratch directory of its own, which its child removes when it
    closes the instance; killed, the child left it for as long as its data server ran (outside
    probe)."""
    owned = replace(spec, owner="org-a/ds-1")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(QueryFailed) as failure:
        pool.run(_job(owned, ENDLESS, tmp_path, "endless"), cancel_event=cancel)
    assert failure.value.code == "cancelled"
    assert list(tmp_path.glob("warm-*")) == []


def test_sigkilled_child_fails_the_call_as_crashed_and_is_replaced(pool, spec, tmp_path):
    idle = _warmed(pool)
    with ThreadPoolExecutor(1) as executor:
        running = executor.submit(pool.run, _job(spec, ENDLESS, tmp_path))
        victim = _busy_child(pool, idle)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(QueryFailed) as failure:
            running.result(timeout=10)
    assert failure.value.code == "worker_crashed"
    assert "signal 9" in failure.value.message
    assert pool.run(_job(spec, "SELECT 3", tmp_path)).rows == 1
    assert victim not in pool.child_pids()


def test_a_child_killed_while_idle_costs_no_execution(pool, spec, tmp_path):
    """An idle child that died (the OOM killer, an operator) is dropped when picked, not handed
    the next query to fail as crashed."""
    idle = _warmed(pool)
    for pid in idle:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not all(_reapable(pid) for pid in idle):
        assert time.monotonic() < deadline, "the killed children did not die"
        time.sleep(0.02)
    assert [pool.run(_job(spec, "SELECT 4", tmp_path, f"k{i}")).rows for i in range(3)] == [1] * 3
    assert not idle & set(pool.child_pids())


def _reapable(pid: int) -> bool:
    """Whether a child has wholly died, without reaping it. Its main thread shows as a zombie
    in /proc while its other threads still exit, and until they have, the pool sees it alive:
    waiting for that state let a CI run hand a query to a child still dying."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


def test_calls_run_concurrently_up_to_the_pool_size(pool, spec, tmp_path):
    with ThreadPoolExecutor(4) as executor:
        outcomes = list(
            executor.map(
                lambda i: pool.run(_job(spec, f"SELECT {i} AS i", tmp_path, f"c{i}")), range(8)
            )
        )
    assert [o.rows for o in outcomes] == [1] * 8
    assert len(pool.child_pids()) <= 2


def test_schema_and_connection_check_run_in_the_sandbox(pool, spec, tmp_path):
    schema = pool.schema_of(spec, LIMITS)
    assert schema["schemas"][0]["tables"][0]["name"] == "numbers"
    pool.check_connection(spec, LIMITS)
    with pytest.raises(QueryFailed) as failure:
        pool.check_connection(DatasourceSpec("duckdb", str(tmp_path / "gone.duckdb")), LIMITS)
    assert failure.value.code == "datasource_unavailable"


def test_close_leaves_no_children(tmp_path, spec):
    pool = SandboxPool(2, scratch_root=str(tmp_path))
    pool.run(_job(spec, "SELECT 1", tmp_path))
    pids = pool.child_pids()
    pool.close()
    time.sleep(0.1)
    assert not (set(pids) & _children_of_this_process())
    with pytest.raises(QueryFailed) as failure:
        pool.run(_job(spec, "SELECT 1", tmp_path))
    assert failure.value.code == "worker_stopping"


def test_a_childs_start_does_not_count_against_its_first_calls_time_limit(
    tmp_path, monkeypatch, spec
):
    """A new child imports DuckDB and pyarrow before it can take a call, seconds on a loaded
    machine: with a three-second limit, a connection test failed as timed out in a CI run. The
    child says when it is ready, and only then does a call's limit start. Here its start is
    slowed by three seconds (a sitecustomize on its path) and the call allows two: room for the
    query itself on a loaded machine (half a second was not, in a CI-like run on two slow
    cores), none for the start."""
    slow = tmp_path / "slow_start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(3.0)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setattr("data_server.sandbox_pool.KILL_GRACE_SECONDS", 0.0)
    pool = SandboxPool(1, scratch_root=str(tmp_path))
    try:
        limits = replace(LIMITS, timeout_seconds=2.0)
        outcome = pool.run(_job(spec, "SELECT count(*) FROM numbers", tmp_path, limits=limits))
        assert outcome.rows == 1
    finally:
        pool.close()


def test_a_child_imports_neither_the_metadata_models_nor_sqlalchemy_nor_pydantic():
    """Every data server starts a child per executor, and a replaced one starts again: SQLAlchemy
    and the models (pulled in once through the name rule's length) were half of a child's start,
    about half a second of CPU, and pydantic (through the name rule's API type) a tenth of the
    rest; nothing a child runs needs them."""
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, data_server.sandbox_child; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'"
            " or m.split('.')[0] == 'pydantic' or m == 'shared.db.models'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert imported.stdout.strip() == "[]"


def test_an_unexpected_error_in_the_child_is_reported_as_the_data_servers_by_its_type_only(
    capfd,
):
    """The child stays up; its answer names the error's type, never its text (which may quote a
    connection's secret), in a sentence a client can read: a bare "RuntimeError" was all an
    execution said (found by the outside probe). The server's log (the child's standard error)
    says where it happened, without the text either: one probe's AttributeError was seen once
    and could not be traced."""
    import dataclasses

    import orjson

    from data_server.framing import read_frame, write_frame
    from data_server.sandbox_pool import _Child
    from tests.support.factories import SANDBOX_LIMITS

    child = _Child(scratch_root=None)  # started, and ready
    try:
        secret = "hunter2-in-an-error"
        for _ in range(2):  # and it answers the next call too
            call = {  # an operation it does not know: its error's text quotes the name
                "op": secret,
                "spec": {"database_type": "duckdb", "path": "x.duckdb"},
                "limits": dataclasses.asdict(SANDBOX_LIMITS),
                "temp_dir": "/nonexistent",
            }
            write_frame(child.to_child, orjson.dumps(call))
            reply = orjson.loads(read_frame(child.from_child) or b"{}")
            assert reply["ok"] is False and reply["code"] == "execution_error"
            assert reply["message"].startswith("The data server failed to run this in its sandbox")
            assert secret not in reply["message"]
    finally:
        child.kill()
    logged = capfd.readouterr().err
    assert logged.count("sandbox unknown call failed: ValueError at sandbox_child.py:") == 2
    assert " handle" in logged
    assert secret not in logged


def test_a_call_cancelled_before_its_deadline_is_armed_never_starts():
    """A cancel that reached the child while its call attached the datasource or checked the
    SQL found no deadline to fire: the query then started (on a MySQL server too) and ran until
    the pool killed the child (the review of the cancel path). Once a process's calls are
    ended, none starts."""
    from data_server import engine

    deadlines = engine._Deadlines()
    fired: list[str] = []

    class Recorded:
        def __init__(self, name: str) -> None:
            self.name = name

        def fire(self) -> None:
            fired.append(self.name)

    running = Recorded("running")
    deadlines.arm(running, time.monotonic() + 60)  # type: ignore[arg-type]
    deadlines.end_all()
    assert fired[:1] == ["running"]
    with pytest.raises(QueryFailed) as refused:
        deadlines.arm(Recorded("later"), time.monotonic() + 60)  # type: ignore[arg-type]
    assert refused.value.code == "cancelled"
    deadlines.disarm(running)  # type: ignore[arg-type]
    assert "later" not in fired


def test_a_fired_deadline_fires_again_until_its_call_ends():
    """Found by the probe of this stop's changes: a cancel that came as the query started
    interrupted a connection that ran nothing yet, and the query ran on until the pool killed
    the child 3 s later."""
    from data_server import engine

    deadlines = engine._Deadlines()
    net_used = threading.Event()

    def safety_net(connection: duckdb.DuckDBPyConnection) -> None:  # the test ends, whatever
        net_used.set()
        connection.interrupt()

    with duckdb.connect() as connection:
        deadline = engine._Deadline(connection, 60)
        deadlines.arm(deadline, time.monotonic())  # fired before its query starts
        time.sleep(0.1)
        assert deadline.fired
        net = threading.Timer(20, safety_net, args=(connection,))
        net.start()
        with pytest.raises(duckdb.InterruptException):
            connection.execute(ENDLESS)
        net.cancel()
        deadlines.disarm(deadline)
    assert not net_used.is_set(), "the deadline fired once, before the query: it ran on"


@pytest.mark.parametrize("value", ["1::UHUGEINT", "1::BIGNUM"])
def test_a_new_childs_first_query_of_a_type_spelled_by_python_values_succeeds(
    spec, tmp_path, value
):
    """pyarrow's first look for pandas, which the child marks absent, failed that query
    (``execution_error``, AttributeError) in every new child (found by the outside probe)."""
    pool = SandboxPool(1, scratch_root=str(tmp_path))
    try:
        assert pool.run(_job(spec, f"SELECT {value} AS v", tmp_path)).rows == 1
    finally:
        pool.close()
