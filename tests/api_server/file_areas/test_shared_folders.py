"""Operator-granted shared folders reach the granted organisation only, until revoked: the grant
and revoke commands, what a grant refuses, and a granted folder later swapped for a link.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from shared import shared_folders
from shared.db.models import AuditEvent, SharedFolder
from shared.errors import AppError
from tests.support.factories import resource
from tests.support.file_areas import (
    World,
    assert_refused,
    assert_unavailable,
    fetch_result,
    run_and_wait,
    run_command,
    set_datasource_row,
    write_csv_folder,
    write_duckdb_table,
)

SHARED_ROW = "shared-row"


def _cli_json(world: World, *args: str) -> Any:
    """The command run for real (``python -m api_server``): exactly one JSON object on stdout."""
    result = world.cli(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_a_shared_folder_serves_the_granted_organisation_only_until_revoked(world, capsys):
    folder = world.cwd / "common"
    folder.mkdir()
    write_duckdb_table(folder / "c.duckdb", SHARED_ROW)
    granted = _cli_json(
        world,
        *("grant-shared-folder", "--organization", world.a.id),
        *("--name", "common", "--path", str(folder)),
    )
    assert granted["datasource_path"] == "shared/common" and granted["path"] == str(folder)
    listed = run_command(world, capsys, "list-shared-folders", "--organization", world.a.id)
    assert [grant["name"] for grant in listed["shared_folders"]] == ["common"]

    datasource = world.api.create_datasource(
        world.a.key, name="shared", database="shared/./common//c.duckdb"
    )
    assert datasource["attributes"]["database"] == "shared/common/c.duckdb"
    execution_id, attributes = run_and_wait(world, world.a.key, datasource["id"])
    assert attributes["execution_status"] == "completed", attributes
    assert SHARED_ROW in fetch_result(world, world.a.key, execution_id)

    # B was not granted it: refused at create and at update, and at run time.
    body = resource(
        "datasources", name="x", database_type="duckdb", database="shared/common/c.duckdb"
    )
    assert_refused(world.api.post("/datasources", world.b.key, body), "shared_folder_not_granted")
    b_datasource = world.api.create_datasource(world.b.key, name="B own", database="b.duckdb")["id"]
    patch = resource("datasources", b_datasource, database="shared/common/c.duckdb")
    assert_refused(
        world.api.patch(f"/datasources/{b_datasource}", world.b.key, patch),
        "shared_folder_not_granted",
    )
    set_datasource_row(world, b_datasource, database="shared/common/c.duckdb")
    assert_unavailable(run_and_wait(world, world.b.key, b_datasource)[1])

    revoked = run_command(
        world, capsys, "revoke-shared-folder", "--organization", world.a.id, "--name", "common"
    )
    assert revoked["datasources"] == [datasource["id"]]
    assert_unavailable(run_and_wait(world, world.a.key, datasource["id"])[1])
    assert_refused(world.api.post("/datasources", world.a.key, body), "shared_folder_not_granted")
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
        ("n", "/proc/self", "invalid_shared_folder_path"),  # the servers' environments, memory
        ("n", "/sys/kernel", "invalid_shared_folder_path"),
        ("n", "/dev", "invalid_shared_folder_path"),
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
        run_command(
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
        run_command(
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


def test_a_granted_folder_later_swapped_for_a_link_into_another_area_reaches_nothing(world):
    """The grant is checked again at every use: the folder an operator granted may be replaced
    by a link (by whoever may write where it lies) into the server's own data, B's area say."""
    folder = world.cwd / "swapped"
    write_csv_folder(folder, "A")
    with world.api.app.state.sessions.begin() as session:
        shared_folders.grant_shared_folder(
            session, world.settings, world.a.id, "swapped", str(folder)
        )
    datasource = world.api.create_datasource(
        world.a.key, name="swapped", database_type="files", database="shared/swapped"
    )["id"]
    assert run_and_wait(world, world.a.key, datasource)[1]["execution_status"] == "completed"

    folder.rename(world.cwd / "swapped.orig")
    folder.symlink_to(world.b_area / "bfiles")
    assert_unavailable(run_and_wait(world, world.a.key, datasource)[1])
    patch = resource("datasources", datasource, database="shared/swapped")
    assert_refused(
        world.api.patch(f"/datasources/{datasource}", world.a.key, patch),
        "shared_folder_not_granted",
    )
