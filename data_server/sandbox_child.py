"""The sandbox child: runs one engine call at a time for the pool, over two pipes.

Started by ``sandbox_pool`` as ``python -m data_server.sandbox_child READ_FD WRITE_FD``. Requests
and replies are length-prefixed JSON frames (never pickle: the parent must not unpickle what a
process running tenant SQL wrote). The child exits when its parent goes away, so a killed data
server leaves no query running behind it. Between calls it tidies its warm instance
(``warm_sandboxes``): closing what is done with happens after the reply, not before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from data_server import engine
from data_server.framing import CANCEL_SIGNAL, READY, read_frame, write_frame
from data_server.object_storage import ObjectStorageSpec
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.warm_sandboxes import WarmSandboxes
from shared.logging import configure_logging

logger = logging.getLogger(__name__)


def _limits(raw: dict[str, Any]) -> engine.Limits:
    return engine.Limits(**raw)


def _spec(raw: dict[str, Any]) -> engine.DatasourceSpec:
    storage = raw.get("object_storage")
    if storage is not None:
        raw = {**raw, "object_storage": ObjectStorageSpec(**storage)}
    remote = raw.get("remote")
    if remote is not None:
        raw = {**raw, "remote": RemoteDatabaseSpec(**remote)}
    return engine.DatasourceSpec(**raw)


def _query(request: dict[str, Any], sandboxes: WarmSandboxes) -> Any:
    job = dict(request["job"])
    job["datasource"] = _spec(job["datasource"])
    job["limits"] = _limits(job["limits"])
    return engine.run_query(engine.QueryJob(**job), sandboxes)  # orjson writes it as is


def _schema(request: dict[str, Any], _sandboxes: WarmSandboxes) -> Any:
    return engine.schema_of(_spec(request["spec"]), _limits(request["limits"]), request["temp_dir"])


def _check(request: dict[str, Any], _sandboxes: WarmSandboxes) -> None:
    engine.check_connection(_spec(request["spec"]), _limits(request["limits"]), request["temp_dir"])


# What a call's ``op`` runs.
OPERATIONS: dict[str, Callable[[dict[str, Any], WarmSandboxes], Any]] = {
    "query": _query,
    "schema": _schema,
    "check": _check,
}


def handle(request: dict[str, Any], sandboxes: WarmSandboxes) -> Any:
    operation = OPERATIONS.get(request["op"])
    if operation is None:
        raise ValueError(f"unknown operation {request['op']!r}")
    return operation(request, sandboxes)


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            engine.end_running_calls()  # a remote query would outlive us
            os._exit(3)


def _end_calls_on_signal() -> None:
    """``CANCEL_SIGNAL`` from the pool ends the running call at once, from a thread of its own:
    Python runs a signal's handler in the main thread, which may be inside DuckDB for as long as
    a query runs. Whichever thread the signal reaches (libraries start some on import), Python's
    own handler takes it and writes its number to the wake-up pipe this thread reads."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    signal.signal(CANCEL_SIGNAL, lambda *_: None)  # taken, not fatal; the thread does the work

    def read_wake_ups() -> None:
        while True:
            if CANCEL_SIGNAL in os.read(reader, 64):
                engine.end_running_calls()

    threading.Thread(target=read_wake_ups, daemon=True).start()


def _without_pandas() -> None:
    """DuckDB's binding imports pandas, if installed, on the first bound parameter, only to ask
    whether the value is a pandas object: half a second and some 60 MB in every child, which
    never hands pandas anything. Marked absent, the check costs nothing.

    pyarrow's compiled import takes the mark for a module, and its first look for pandas (in
    ``pa.scalar`` or ``pa.array`` of Python values: a UHUGEINT's or BIGNUM's texts) failed with an
    AttributeError, the child's first such query with it (found by the outside probe). Made
    here, the look fails once and settles pyarrow on "no pandas"."""
    sys.modules.setdefault("pandas", None)  # type: ignore[arg-type]
    with contextlib.suppress(AttributeError):
        pa.lib._pandas_api.have_pandas  # noqa: B018 - the look is the point


def main(read_fd: int, write_fd: int) -> None:
    configure_logging()  # on the data server's standard error, as its own records
    _without_pandas()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _end_calls_on_signal()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sandboxes = WarmSandboxes()
    write_frame(write_fd, READY)  # imports done: what follows counts against a call's limit
    while True:
        sandboxes.tidy()
        if not _call_arrives(read_fd, sandboxes.seconds_until_idle()):
            continue  # the warm instance idled out: tidy closes it
        request = read_frame(read_fd)
        if request is None:
            break
        call: dict[str, Any] = {}
        try:
            call = orjson.loads(request)
            reply = {"ok": True, "value": handle(call, sandboxes)}
        except engine.QueryFailed as failure:
            reply = {"ok": False, "code": failure.code, "message": failure.message}
        except Exception as exc:  # report, stay alive for the next call
            # Its type only: an unexpected error's text may quote a connection's secret.
            failed = f"The data server failed to run this in its sandbox ({type(exc).__name__})."
            reply = {"ok": False, "code": "execution_error", "message": failed}
            operation = call.get("op")
            _log_where(exc, operation if operation in OPERATIONS else "unknown")
        write_frame(write_fd, orjson.dumps(reply))
    sandboxes.close()


# The innermost frames an unexpected error's log line names (a RecursionError passed a thousand).
LOGGED_FRAMES = 8


def _log_where(exc: Exception, operation: str) -> None:
    """An unexpected error's type and the innermost frames it passed, on the data server's log
    (the child's standard error is the server's): where to look, without the error's text,
    which may quote a connection's secret or the tenant's data."""
    frames = ", ".join(
        f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)[-LOGGED_FRAMES:]
    )
    logger.error("sandbox %s call failed: %s at %s", operation, type(exc).__name__, frames)


def _call_arrives(read_fd: int, within_seconds: float | None) -> bool:
    """Whether the pipe has something to read (a call, or EOF) within the time; None: wait."""
    poller = select.poll()
    poller.register(read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    timeout = None if within_seconds is None else max(1, round(within_seconds * 1000))
    return bool(poller.poll(timeout))


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]))
    except BrokenPipeError:  # the data server closed our pipe (it stops): nothing to say
        sys.exit(0)
