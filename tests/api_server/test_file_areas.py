"""Per-organisation file areas: no path form reaches another organisation's files, at create, at
update or at run time; operator-granted shared folders reach the granted organisation only."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from api_server.__main__ import build_parser
from data_server.app import create_app as create_data_app
from shared import shared_folders
from shared.datapaths import (
    PathEmpty,
    PathInvalidCharacter,
    PathNotRelative,
    PathTraversal,
    ensure_organization_area,
    normalize_datasource_path,
)
from shared.db.engine import create_metadata_engine
from shared.db.migrate import upgrade_to_head
from shared.db.models import AuditEvent, Datasource, Execution, SharedFolder
from shared.errors import AppError
from shared.settings import Settings
from tests.support.factories import Api, Org, dump_tables, resource
from tests.support.processes import clean_environment, run_cli

B_SECRET = "B-secret-row"
SHARED_ROW = "shared-row"
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


def _table(path: Path, owner: str) -> None:
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE t AS SELECT $1 AS owner", [owner])


def _folder(path: Path, owner: str) -> None:
    path.mkdir(parents=True)
    (path / "t.csv").write_text(f"owner\n{owner}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("file-areas")
    settings = Settings(
        state_dir=base / "state",
        sample_scale=0.001,
        max_datasources=100,
        rate_limit_per_minute=1_000_000,
        rate_limit_per_hour=10_000_000,
        max_running_executions=10_000,
        worker_processes=1,
        poll_interval_seconds=0.05,
    )
    engine = create_metadata_engine(settings.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with (
        TestClient(create_data_app(settings, run_workers=True)) as data,
        Api.start(settings) as api,
    ):
        a, b = api.create_org("A"), api.create_org("B")
        a_area, b_area = api.area(a), api.area(b)
        _table(a_area / "a.duckdb", "A")
        _folder(a_area / "afiles", "A")
        _table(b_area / "b.duckdb", B_SECRET)
        _folder(b_area / "bfiles", B_SECRET)
        (a_area / "link-to-b.duckdb").symlink_to(b_area / "b.duckdb")
        (a_area / "link-to-b-area").symlink_to(b_area)
        (a_area / "link-to-b-files").symlink_to(b_area / "bfiles")
        # B alone holds a shared folder named "bonly".
        b_shared = base / "b-shared"
        b_shared.mkdir()
        _table(b_shared / "b.duckdb", B_SECRET)
        with api.app.state.sessions.begin() as session:
            shared_folders.grant_shared_folder(session, settings, b.id, "bonly", str(b_shared))
        a_duckdb = api.create_datasource(a.key, name="A own", database="a.duckdb")["id"]
        a_runtime = api.create_datasource(a.key, name="A runtime", database="a.duckdb")["id"]
        _settle(api)
        yield World(api, data, settings, base, a, b, a_area, b_area, a_duckdb, a_runtime)


def _settle(api: Api) -> None:
    """Wait for the refreshes that creating organisations and datasources queued, so that the
    tables stay still while a test compares them."""
    deadline = time.monotonic() + 60
    while True:
        with api.app.state.sessions() as session:
            busy = session.scalar(
                select(func.count())
                .select_from(Execution)
                .where(Execution.status.in_(("starting", "running")))
            )
        if not busy:
            return
        assert time.monotonic() < deadline, f"{busy} executions still unfinished"
        time.sleep(0.05)


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


def _path(world: World, form: str) -> tuple[str, str, str]:
    database_type, template, code = FORMS[form]
    return database_type, template.format(b=world.b.id, b_area=world.b_area), code


def _refused(answer: Any, code: str) -> None:
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert [(e["code"], e["source"]) for e in errors] == [(code, {"pointer": DATABASE})]
    assert B_SECRET not in answer.text and str(Path.home()) not in answer.text


@pytest.mark.parametrize("form", FORMS)
def test_a_path_into_another_area_is_refused_at_create(world, form):
    database_type, path, code = _path(world, form)
    before = dump_tables(world.api.app)
    body = resource("datasources", name="x", database_type=database_type, database=path)
    _refused(world.api.post("/datasources", world.a.key, body), code)
    assert dump_tables(world.api.app) == before


@pytest.mark.parametrize("form", FORMS)
def test_a_path_into_another_area_is_refused_at_update(world, form):
    database_type, path, code = _path(world, form)
    before = dump_tables(world.api.app)
    body = resource("datasources", world.a_duckdb, database_type=database_type, database=path)
    _refused(world.api.patch(f"/datasources/{world.a_duckdb}", world.a.key, body), code)
    assert dump_tables(world.api.app) == before


def _run(world: World, key: str, datasource_id: str, sql: str = "SELECT owner FROM t") -> Any:
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


def _rows(world: World, key: str, execution_id: str) -> str:
    grant = world.api.get(f"/executions/{execution_id}/data", key).json()
    answer = world.data.get(
        f"/data/{grant['data_key']}",
        headers={"Authorization": f"Data {grant['data_access_token']}"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text


def _unavailable(attributes: dict[str, Any]) -> None:
    assert attributes["execution_status"] == "failed", attributes
    assert attributes["error_code"] == "datasource_unavailable", attributes
    assert B_SECRET not in json.dumps(attributes)


def _set_row(world: World, datasource_id: str, **values: Any) -> None:
    with world.api.app.state.sessions.begin() as session:
        session.execute(update(Datasource).where(Datasource.id == datasource_id).values(**values))


@pytest.mark.parametrize("form", [form for form in FORMS if form != "nul"])
def test_a_stored_path_into_another_area_fails_at_run_time(world, form):
    """The data server checks again, whatever the row holds (an old row, a row changed behind
    the API's back): each form fails the execution and reads nothing of B's."""
    database_type, path, _ = _path(world, form)
    _set_row(world, world.a_runtime, database_type=database_type, database=path)
    _, attributes = _run(world, world.a.key, world.a_runtime)
    _unavailable(attributes)


def test_a_symlink_swapped_after_creation_fails_at_run_time(world):
    link = world.a_area / "swapped.duckdb"
    link.symlink_to(world.a_area / "a.duckdb")
    folder_link = world.a_area / "swapped-files"
    folder_link.symlink_to(world.a_area / "afiles")
    file_ds = world.api.create_datasource(world.a.key, name="swap", database="swapped.duckdb")
    folder_ds = world.api.create_datasource(
        world.a.key, name="swap files", database_type="files", database="swapped-files"
    )
    for datasource in (file_ds, folder_ds):
        execution_id, attributes = _run(world, world.a.key, datasource["id"])
        assert attributes["execution_status"] == "completed", attributes
        assert '"A"' in _rows(world, world.a.key, execution_id)

    link.unlink()
    link.symlink_to(world.b_area / "b.duckdb")
    folder_link.unlink()
    folder_link.symlink_to(world.b_area / "bfiles")
    for datasource in (file_ds, folder_ds):
        _unavailable(_run(world, world.a.key, datasource["id"])[1])


def test_a_link_inside_a_files_folder_into_another_area_is_no_view(world):
    folder = world.a_area / "mixed"
    _folder(folder, "A")
    (folder / "stolen.csv").symlink_to(world.b_area / "bfiles" / "t.csv")
    datasource = world.api.create_datasource(
        world.a.key, name="mixed", database_type="files", database="mixed"
    )["id"]
    execution_id, attributes = _run(world, world.a.key, datasource)
    assert attributes["execution_status"] == "completed", attributes
    assert '"A"' in _rows(world, world.a.key, execution_id)
    # No view at all (DuckDB's allowed_directories would also refuse to read through the link,
    # a failure of another kind: forbidden_operation).
    _, stolen = _run(world, world.a.key, datasource, "SELECT * FROM stolen")
    assert (stolen["execution_status"], stolen["error_code"]) == ("failed", "execution_error")
    assert "stolen does not exist" in stolen["error_message"]
    assert B_SECRET not in json.dumps(stolen)


def test_the_area_is_made_on_demand_with_mode_0700(world):
    c = world.api.create_org("C")
    area = world.settings.data_root / c.id
    assert not area.exists()
    body = resource("datasources", name="x", database_type="duckdb", database="none.duckdb")
    _refused(world.api.post("/datasources", c.key, body), "path_not_found")
    assert stat.S_IMODE(area.stat().st_mode) == 0o700
    area.chmod(0o755)  # made by hand (mkdir -p) too loosely: tightened on the next use
    assert stat.S_IMODE(
        ensure_organization_area(world.settings.data_root, c.id).stat().st_mode
    ) == (0o700)


def _cli_json(world: World, *args: str) -> Any:
    """The command run for real (``python -m api_server``): exactly one JSON object on stdout."""
    result = world.cli(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def _command(world: World, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The same command's code in this process (a second apiece faster than a new interpreter)."""
    capsys.readouterr()
    args = build_parser().parse_args(argv)
    args.run(world.settings, args)
    return json.loads(capsys.readouterr().out)


def test_a_shared_folder_serves_the_granted_organisation_only_until_revoked(world, capsys):
    folder = world.cwd / "common"
    folder.mkdir()
    _table(folder / "c.duckdb", SHARED_ROW)
    granted = _cli_json(
        world,
        *("grant-shared-folder", "--organization", world.a.id),
        *("--name", "common", "--path", str(folder)),
    )
    assert granted["datasource_path"] == "shared/common" and granted["path"] == str(folder)
    listed = _command(world, capsys, "list-shared-folders", "--organization", world.a.id)
    assert [grant["name"] for grant in listed["shared_folders"]] == ["common"]

    datasource = world.api.create_datasource(
        world.a.key, name="shared", database="shared/./common//c.duckdb"
    )
    assert datasource["attributes"]["database"] == "shared/common/c.duckdb"
    execution_id, attributes = _run(world, world.a.key, datasource["id"])
    assert attributes["execution_status"] == "completed", attributes
    assert SHARED_ROW in _rows(world, world.a.key, execution_id)

    # B was not granted it: refused at create and at update, and at run time.
    body = resource(
        "datasources", name="x", database_type="duckdb", database="shared/common/c.duckdb"
    )
    _refused(world.api.post("/datasources", world.b.key, body), "shared_folder_not_granted")
    b_datasource = world.api.create_datasource(world.b.key, name="B own", database="b.duckdb")["id"]
    patch = resource("datasources", b_datasource, database="shared/common/c.duckdb")
    _refused(
        world.api.patch(f"/datasources/{b_datasource}", world.b.key, patch),
        "shared_folder_not_granted",
    )
    _set_row(world, b_datasource, database="shared/common/c.duckdb")
    _unavailable(_run(world, world.b.key, b_datasource)[1])

    revoked = _command(
        world, capsys, "revoke-shared-folder", "--organization", world.a.id, "--name", "common"
    )
    assert revoked["datasources"] == [datasource["id"]]
    _unavailable(_run(world, world.a.key, datasource["id"])[1])
    _refused(world.api.post("/datasources", world.a.key, body), "shared_folder_not_granted")
    with world.api.app.state.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.organization_id == world.a.id, AuditEvent.method == "CLI"
            )
        ).all()
        assert [(e.action, e.resource_id, e.api_key_id) for e in events] == [
            ("shared_folder.grant", "shared/common", None),
            ("shared_folder.revoke", "shared/common", None),
        ]
        assert str(folder) not in repr([(e.path, e.resource_id) for e in events])


def _grants(world: World) -> list[tuple[str, str, str]]:
    with world.api.app.state.sessions() as session:
        rows = session.scalars(select(SharedFolder)).all()
        return sorted((row.organization_id, row.name, row.path) for row in rows)


@pytest.mark.parametrize(
    ("name", "path", "code"),
    [
        ("n", "elsewhere", "invalid_shared_folder_path"),  # relative
        ("n", "{cwd}/missing", "invalid_shared_folder_path"),
        ("n", "{cwd}/elsewhere/file.txt", "invalid_shared_folder_path"),  # not a directory
        ("n", "{b_area}", "invalid_shared_folder_path"),  # another organisation's area
        ("n", "{data_root}", "invalid_shared_folder_path"),
        ("n", "{state_dir}", "invalid_shared_folder_path"),  # metadata DB, secrets, results
        ("n", "/", "invalid_shared_folder_path"),  # holds all of them
        ("../x", "{cwd}/elsewhere", "invalid_shared_folder_name"),
        ("sh\u2215x", "{cwd}/elsewhere", "invalid_shared_folder_name"),
        ("", "{cwd}/elsewhere", "invalid_shared_folder_name"),
        ("x" * 49, "{cwd}/elsewhere", "invalid_shared_folder_name"),  # shared/<name>: 64 at most
        ("common2", "{cwd}/elsewhere", "shared_folder_exists"),  # granted to A just before
        ("n", "{cwd}/elsewhere", "not_found"),  # the organisation does not exist
    ],
)
def test_grant_refuses_what_must_not_be_shared(world, capsys, name, path, code):
    outside = world.cwd / "elsewhere"
    if not outside.exists():
        outside.mkdir()
        (outside / "file.txt").write_text("x")
        _command(
            world,
            capsys,
            *("grant-shared-folder", "--organization", world.a.id),
            *("--name", "common2", "--path", str(outside)),
        )
    before = _grants(world)
    organization = "zzzz-zzzz-zzzz" if code == "not_found" else world.a.id
    folder = path.format(
        cwd=world.cwd,
        b_area=world.b_area,
        data_root=world.settings.data_root,
        state_dir=world.settings.state_dir,
    )
    with pytest.raises(AppError) as refused:
        _command(
            world,
            capsys,
            *("grant-shared-folder", "--organization", organization),
            *("--name", name, "--path", folder),
        )
    assert refused.value.code == code
    assert _grants(world) == before


def test_cli_refusals_exit_2_with_the_reason_and_change_nothing(world):
    before = _grants(world)
    result = world.cli(
        *("grant-shared-folder", "--organization", world.a.id),
        *("--name", "n", "--path", str(world.b_area)),
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "overlaps the server's own data" in result.stderr
    assert _grants(world) == before


def test_check_file_datasources_names_what_cannot_read(world, capsys):
    _set_row(world, world.a_runtime, database_type="duckdb", database=f"{world.b.id}/b.duckdb")
    listed = _command(
        world, capsys, "check-file-datasources", "--organization", world.a.id, "--problems-only"
    )
    by_id = {row["id"]: row for row in listed["datasources"]}
    assert by_id[world.a_runtime]["status"] == "path_not_found"
    assert world.a_duckdb not in by_id  # it reads its own a.duckdb: no problem
    everything = _command(world, capsys, "check-file-datasources", "--organization", world.a.id)
    statuses = {row["id"]: row["status"] for row in everything["datasources"]}
    assert statuses[world.a_duckdb] == "ok"


# ------------------------------------------------------------------------- the rules as text


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("a.duckdb", "a.duckdb"),
        ("./sub//a.duckdb/", "sub/a.duckdb"),
        ("%2e%2e", "%2e%2e"),  # never percent-decoded
        ("e\u0301t\u00e9.csv", "\u00e9t\u00e9.csv"),  # NFC: decomposed é is stored composed
        ("日本/データ (1).csv", "日本/データ (1).csv"),
        ("...", "..."),  # three dots are a name, not a parent
    ],
)
def test_paths_are_stored_normalised(value, stored):
    assert normalize_datasource_path(value) == stored


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", PathEmpty),
        ("./.", PathEmpty),
        ("/a", PathNotRelative),
        ("a/..", PathTraversal),
        ("a\\b", PathInvalidCharacter),
        ("a\x00b", PathInvalidCharacter),
        ("a\nb", PathInvalidCharacter),
        ("a\u202eb", PathInvalidCharacter),  # right-to-left override
        ("a\u00a0b", PathInvalidCharacter),  # no-break space
        ("a\u3002b", PathInvalidCharacter),  # ideographic full stop: NFKC keeps it
        ("a\u29f8b", PathInvalidCharacter),  # big solidus
        ("\ufb01le.csv", PathInvalidCharacter),  # the ligature fi: NFKC changes it
        ("\uff41.csv", PathInvalidCharacter),  # fullwidth a
    ],
)
def test_paths_that_could_be_read_another_way_are_refused(value, error):
    with pytest.raises(error):
        normalize_datasource_path(value)


def test_the_nul_form_is_checked_by_the_path_rules_too():
    """The body check catches NUL first over HTTP; the rule does not depend on it."""
    assert FORMS["nul"][2] == "nul_character"
    with pytest.raises(PathInvalidCharacter):
        normalize_datasource_path("../b\x00/b.duckdb")


def test_area_names_only_resource_ids():
    for bad in ("..", "", "a/b", "aaaa-aaaa-aaa\u0430", "AAAA-AAAA-AAAA"):
        with pytest.raises(ValueError):
            ensure_organization_area(Path("/nonexistent"), bad)


def test_a_granted_folder_later_swapped_for_a_link_into_another_area_reaches_nothing(world):
    """The grant is checked again at every use: the folder an operator granted may be replaced
    by a link (by whoever may write where it lies) into the server's own data, B's area say."""
    folder = world.cwd / "swapped"
    _folder(folder, "A")
    with world.api.app.state.sessions.begin() as session:
        shared_folders.grant_shared_folder(
            session, world.settings, world.a.id, "swapped", str(folder)
        )
    datasource = world.api.create_datasource(
        world.a.key, name="swapped", database_type="files", database="shared/swapped"
    )["id"]
    assert _run(world, world.a.key, datasource)[1]["execution_status"] == "completed"

    folder.rename(world.cwd / "swapped.orig")
    folder.symlink_to(world.b_area / "bfiles")
    _unavailable(_run(world, world.a.key, datasource)[1])
    patch = resource("datasources", datasource, database="shared/swapped")
    _refused(
        world.api.patch(f"/datasources/{datasource}", world.a.key, patch),
        "shared_folder_not_granted",
    )
