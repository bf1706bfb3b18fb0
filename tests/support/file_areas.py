"""What the file area tests (tests/api_server/file_areas/) share: the world of two organisations,
every way A could name B's files, and short ways to run SQL, read a result, set a datasource's
row behind the API's back and run a command, with the checks that nothing of B's leaks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from api_server.__main__ import build_parser
from shared.db.models import Datasource
from shared.settings import Settings
from tests.support.factories import Api, Org
from tests.support.processes import clean_environment, run_cli

B_SECRET = "B-secret-row"

DATABASE = "/data/attributes/database"


@dataclass
class World:
    api: Api
    data: TestClient
    settings: Settings
    cwd: Path
    a: Org
    b: Org
    a_area: Path
    b_area: Path
    a_duckdb: str  # A's datasource over its own a.duckdb, the target of PATCH attempts
    a_runtime: str  # A's datasource whose row the run-time tests set directly

    def cli(self, *args: str) -> Any:
        env = clean_environment({"DATAFERRY_STATE_DIR": str(self.settings.state_dir)})
        return run_cli(env, self.cwd, *args)


def write_duckdb_table(path: Path, owner: str) -> None:
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE t AS SELECT $1 AS owner", [owner])


def write_csv_folder(path: Path, owner: str) -> None:
    path.mkdir(parents=True)
    (path / "t.csv").write_text(f"owner\n{owner}\n")


# Every way A could name B's files: (database_type, path, code at create/update).
FORMS: dict[str, tuple[str, str, str]] = {
    # the four forms that an outside probe found accepted before file areas
    "probe-relative": ("files", "{b}/bfiles", "path_not_found"),
    "probe-absolute": ("files", "{b_area}/bfiles", "path_not_relative"),
    "probe-duckdb-file": ("duckdb", "{b_area}/b.duckdb", "path_not_relative"),
    "probe-dot": ("files", ".", "path_empty"),
    # relative with ..
    "up": ("duckdb", "../{b}/b.duckdb", "path_traversal"),
    "up-folder": ("files", "../{b}/bfiles", "path_traversal"),
    "up-area": ("files", "../{b}", "path_traversal"),
    "nested-up": ("duckdb", "sub/../../{b}/b.duckdb", "path_traversal"),
    "dotdot": ("files", "..", "path_traversal"),
    "dot-duckdb": ("duckdb", ".", "path_empty"),
    "empty": ("duckdb", "", "path_empty"),
    "old-relative-file": ("duckdb", "{b}/b.duckdb", "path_not_found"),
    "absolute-area": ("files", "{b_area}", "path_not_relative"),
    "double-slash": ("duckdb", "/{b_area}/b.duckdb", "path_not_relative"),
    # symlinks inside A's area that lead into B's
    "link-file": ("duckdb", "link-to-b.duckdb", "path_outside_area"),
    "link-dir-file": ("duckdb", "link-to-b-area/b.duckdb", "path_outside_area"),
    "link-folder": ("files", "link-to-b-files", "path_outside_area"),
    # percent-encoding is never decoded: a literal name that does not exist
    "percent-dots": ("duckdb", "%2e%2e/{b}/b.duckdb", "path_not_found"),
    "percent-slashes": ("duckdb", "%2e%2e%2f{b}%2fb.duckdb", "path_not_found"),
    # Unicode look-alikes of . and / and invisible characters
    "one-dot-leader": ("duckdb", "\u2024\u2024/{b}/b.duckdb", "path_invalid_character"),
    "two-dot-leader": ("duckdb", "\u2025/{b}/b.duckdb", "path_invalid_character"),
    "fullwidth-dots": ("duckdb", "\uff0e\uff0e/{b}/b.duckdb", "path_invalid_character"),
    "fullwidth-solidus": ("duckdb", "..\uff0f{b}\uff0fb.duckdb", "path_invalid_character"),
    "division-slash": ("duckdb", "..\u2215{b}\u2215b.duckdb", "path_invalid_character"),
    "fraction-slash": ("duckdb", "..\u2044{b}\u2044b.duckdb", "path_invalid_character"),
    "zero-width": ("duckdb", "\u200b../{b}/b.duckdb", "path_invalid_character"),
    "backslash": ("duckdb", "..\\{b}\\b.duckdb", "path_invalid_character"),
    "nul": ("duckdb", "../{b}\x00/b.duckdb", "nul_character"),  # refused with the body
    # another organisation's shared folder
    "shared-of-b": ("duckdb", "shared/bonly/b.duckdb", "shared_folder_not_granted"),
}


def assert_refused(answer: Any, code: str) -> None:
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert [(e["code"], e["source"]) for e in errors] == [(code, {"pointer": DATABASE})]
    assert B_SECRET not in answer.text and str(Path.home()) not in answer.text


def run_and_wait(
    world: World, key: str, datasource_id: str, sql: str = "SELECT owner FROM t"
) -> Any:
    answer = world.api.client.post(
        f"/datasources/{datasource_id}/executions",
        content=orjson.dumps({"sql_query": sql}),
        headers={"Authorization": f"Api {key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    execution_id = answer.json()["data"]["id"]
    deadline = time.monotonic() + 60
    while True:
        shown = world.api.get(f"/executions/{execution_id}?wait=5", key).json()["data"]
        if shown["attributes"]["execution_status"] not in ("starting", "running"):
            return execution_id, shown["attributes"]
        assert time.monotonic() < deadline, shown


def fetch_result(world: World, key: str, execution_id: str) -> str:
    grant = world.api.get(f"/executions/{execution_id}/data", key).json()
    answer = world.data.get(
        f"/data/{grant['data_key']}",
        headers={"Authorization": f"Data {grant['data_access_token']}"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text


def assert_unavailable(attributes: dict[str, Any]) -> None:
    assert attributes["execution_status"] == "failed", attributes
    assert attributes["error_code"] == "datasource_unavailable", attributes
    assert B_SECRET not in json.dumps(attributes)


def set_datasource_row(world: World, datasource_id: str, **values: Any) -> None:
    with world.api.app.state.sessions.begin() as session:
        session.execute(update(Datasource).where(Datasource.id == datasource_id).values(**values))


def run_command(world: World, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The same command's code in this process (a second apiece faster than a new interpreter)."""
    capsys.readouterr()
    args = build_parser().parse_args(argv)
    args.run(world.settings, args)
    return json.loads(capsys.readouterr().out)
