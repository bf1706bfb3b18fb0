"""Per-organisation file areas: no path form reaches another organisation's files, at create, at
update or at run time (links swapped after creation included); areas are made on demand with
mode 0700; check-file-datasources names the datasources that cannot read.
"""

from __future__ import annotations

import json
import stat

import pytest

from shared.datapaths import ensure_organization_area
from tests.support.factories import dump_tables, resource
from tests.support.file_areas import (
    B_SECRET,
    FORMS,
    World,
    assert_refused,
    assert_unavailable,
    fetch_result,
    run_and_wait,
    run_command,
    set_datasource_row,
    write_csv_folder,
)


def _path(world: World, form: str) -> tuple[str, str, str]:
    database_type, template, code = FORMS[form]
    return database_type, template.format(b=world.b.id, b_area=world.b_area), code


@pytest.mark.parametrize("form", FORMS)
def test_a_path_into_another_area_is_refused_at_create(world, form):
    database_type, path, code = _path(world, form)
    before = dump_tables(world.api.app)
    body = resource("datasources", name="x", database_type=database_type, database=path)
    assert_refused(world.api.post("/datasources", world.a.key, body), code)
    assert dump_tables(world.api.app) == before


@pytest.mark.parametrize("form", FORMS)
def test_a_path_into_another_area_is_refused_at_update(world, form):
    database_type, path, code = _path(world, form)
    before = dump_tables(world.api.app)
    body = resource("datasources", world.a_duckdb, database_type=database_type, database=path)
    assert_refused(world.api.patch(f"/datasources/{world.a_duckdb}", world.a.key, body), code)
    assert dump_tables(world.api.app) == before


@pytest.mark.parametrize("form", [form for form in FORMS if form != "nul"])
def test_a_stored_path_into_another_area_fails_at_run_time(world, form):
    """The data server checks again, whatever the row holds (an old row, a row changed behind
    the API's back): each form fails the execution and reads nothing of B's."""
    database_type, path, _ = _path(world, form)
    set_datasource_row(world, world.a_runtime, database_type=database_type, database=path)
    _, attributes = run_and_wait(world, world.a.key, world.a_runtime)
    assert_unavailable(attributes)


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
        execution_id, attributes = run_and_wait(world, world.a.key, datasource["id"])
        assert attributes["execution_status"] == "completed", attributes
        assert '"A"' in fetch_result(world, world.a.key, execution_id)

    link.unlink()
    link.symlink_to(world.b_area / "b.duckdb")
    folder_link.unlink()
    folder_link.symlink_to(world.b_area / "bfiles")
    for datasource in (file_ds, folder_ds):
        assert_unavailable(run_and_wait(world, world.a.key, datasource["id"])[1])


def test_a_link_inside_a_files_folder_into_another_area_is_no_view(world):
    folder = world.a_area / "mixed"
    write_csv_folder(folder, "A")
    (folder / "stolen.csv").symlink_to(world.b_area / "bfiles" / "t.csv")
    datasource = world.api.create_datasource(
        world.a.key, name="mixed", database_type="files", database="mixed"
    )["id"]
    execution_id, attributes = run_and_wait(world, world.a.key, datasource)
    assert attributes["execution_status"] == "completed", attributes
    assert '"A"' in fetch_result(world, world.a.key, execution_id)
    # No view at all (DuckDB's allowed_directories would also refuse to read through the link,
    # a failure of another kind: forbidden_operation).
    _, stolen = run_and_wait(world, world.a.key, datasource, "SELECT * FROM stolen")
    assert (stolen["execution_status"], stolen["error_code"]) == ("failed", "execution_error")
    assert "stolen does not exist" in stolen["error_message"]
    assert B_SECRET not in json.dumps(stolen)


def test_the_area_is_made_on_demand_with_mode_0700(world):
    c = world.api.create_org("C")
    area = world.settings.data_root / c.id
    assert not area.exists()
    body = resource("datasources", name="x", database_type="duckdb", database="none.duckdb")
    assert_refused(world.api.post("/datasources", c.key, body), "path_not_found")
    assert stat.S_IMODE(area.stat().st_mode) == 0o700
    area.chmod(0o755)  # made by hand (mkdir -p) too loosely: tightened on the next use
    assert stat.S_IMODE(
        ensure_organization_area(world.settings.data_root, c.id).stat().st_mode
    ) == (0o700)


def test_check_file_datasources_names_what_cannot_read(world, capsys):
    set_datasource_row(
        world, world.a_runtime, database_type="duckdb", database=f"{world.b.id}/b.duckdb"
    )
    listed = run_command(
        world, capsys, "check-file-datasources", "--organization", world.a.id, "--problems-only"
    )
    by_id = {row["id"]: row for row in listed["datasources"]}
    assert by_id[world.a_runtime]["status"] == "path_not_found"
    assert world.a_duckdb not in by_id  # it reads its own a.duckdb: no problem
    everything = run_command(world, capsys, "check-file-datasources", "--organization", world.a.id)
    statuses = {row["id"]: row["status"] for row in everything["datasources"]}
    assert statuses[world.a_duckdb] == "ok"
