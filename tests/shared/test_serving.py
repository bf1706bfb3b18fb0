"""Both servers serve through shared.web.serving: uvicorn with the shared options, after the heap
they start with is set aside from the garbage collector."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import api_server.__main__ as api_main
import data_server.__main__ as data_main
from shared.settings import Settings
from shared.web import serving
from shared.web.http_limits import uvicorn_options


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What each uvicorn.run was given, and how many objects the collector had set aside then;
    the test process's own heap is handed back to the collector afterwards."""
    runs: list[dict[str, Any]] = []

    def run(app: Any, **options: Any) -> None:
        runs.append({"app": app, "frozen": gc.get_freeze_count(), **options})

    gc.unfreeze()
    monkeypatch.setattr(serving.uvicorn, "run", run)
    yield runs
    gc.unfreeze()


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], None]] = {
    "api_server": api_main.cmd_serve,
    "data_server": data_main.cmd_serve,
}


@pytest.mark.parametrize("server", sorted(COMMANDS))
def test_serve_sets_the_startup_heap_aside_then_runs_uvicorn_with_the_shared_options(
    server: str, tmp_path: Path, uvicorn_runs: list[dict[str, Any]]
) -> None:
    settings = Settings(state_dir=tmp_path, sample_scale=0.001)
    arguments = argparse.Namespace(host="127.0.0.1", port=18080, no_workers=True)
    COMMANDS[server](settings, arguments)
    [run] = uvicorn_runs
    # the modules and the app at least: a full collection would walk every one of them
    assert run["frozen"] > 10_000
    assert (run["host"], run["port"]) == ("127.0.0.1", 18080)
    shared = uvicorn_options(settings)
    assert {name: run[name] for name in shared} == shared
