"""Operator commands run in this process, and the trips a request takes to worker threads, for
the modules that test them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping

import pytest

from api_server.__main__ import main
from shared.file_modes import PRIVATE_UMASK

OperatorCommand = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def operator_command(
    monkeypatch, capsys
) -> Iterator[Callable[[Mapping[str, str]], OperatorCommand]]:
    """``operator_command(environment)("disable-api-key", "--id", …)``: what
    ``python -m api_server`` does, as ``main`` in this process (a command's start-up is a second
    of CPU), with ``environment`` its only DATAFERRY_* variables and its streams captured. The
    umask that ``main`` sets (shared/file_modes.py) is put back afterwards."""
    for name in list(os.environ):
        if name.startswith("DATAFERRY_"):
            monkeypatch.delenv(name)
    umask = os.umask(PRIVATE_UMASK)
    os.umask(umask)

    def under(environment: Mapping[str, str]) -> OperatorCommand:
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            with monkeypatch.context() as scoped:
                for name, value in environment.items():
                    scoped.setenv(name, value)
                capsys.readouterr()
                try:
                    returncode = main(list(args))
                except SystemExit as exit_:  # argparse refusing an argument, as a process would
                    returncode = exit_.code if isinstance(exit_.code, int) else 1
            captured = capsys.readouterr()
            return subprocess.CompletedProcess(args, returncode, captured.out, captured.err)

        return run

    yield under
    os.umask(umask)


@pytest.fixture
def trips_to_threads(monkeypatch) -> list[object]:
    """The functions requests ran in worker threads, in order (a test clears it before the
    request it counts)."""
    import anyio.to_thread

    trips: list[object] = []
    original = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):
        trips.append(func)
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return trips
