"""Remote datasources are read-only: writes and escapes fail and leave the tables unchanged, through
the API and, past the SQL check, on the locked instance itself with a login that may write.
"""

from __future__ import annotations

import pytest

from data_server import engine
from tests.support.remote_databases import LIMITS, remote_spec

pytestmark = pytest.mark.e2e


WRITES = [
    ("INSERT INTO {t} VALUES (9, 'XX', 1, NULL)", "not_a_select"),
    ("UPDATE {t} SET amount = 0", "not_a_select"),
    ("DELETE FROM {t}", "not_a_select"),
    ("DROP TABLE {t}", "not_a_select"),
    ("CREATE TABLE {s}.made AS SELECT 1", "not_a_select"),
    ("COPY {t} TO '/tmp/dataferry-copy.csv'", "not_a_select"),
    ("ATTACH 'host=127.0.0.1 dbname=test' AS other (TYPE postgres)", "not_a_select"),
    ("CREATE SECRET s (TYPE postgres, HOST '127.0.0.1')", "not_a_select"),
    ("CALL postgres_execute('ds', 'DELETE FROM {t}')", "not_a_select"),
    ("SELECT * FROM postgres_execute('ds', 'DELETE FROM {t}')", "forbidden_function"),
    ("SELECT * FROM postgres_query('ds', 'DELETE FROM {t} RETURNING id')", "forbidden_function"),
    (
        "SELECT * FROM postgres_scan('host=127.0.0.1 dbname=test', 'public', 'x')",
        "forbidden_function",
    ),
    ("SELECT * FROM postgres_attach('host=127.0.0.1 dbname=test')", "forbidden_function"),
    ("SELECT * FROM mysql_execute('ds', 'DELETE FROM {t}')", "forbidden_function"),
    ("SELECT * FROM mysql_query('ds', 'SELECT 1')", "forbidden_function"),
    ("SELECT * FROM sqlite_scan('/etc/passwd', 't')", "forbidden_function"),
    ("SELECT * FROM duckdb_secrets()", "forbidden_function"),
    ("SELECT * FROM duckdb_databases", "forbidden_catalog"),
    ("SELECT current_setting('pg_pool_health_check_query')", "forbidden_function"),
    ("SELECT 1; DELETE FROM {t}", "multiple_statements"),
]


def test_writes_and_escapes_fail_and_leave_the_tables_unchanged(client, server, datasources):
    before = server.fingerprint()
    queued = {
        sql: client.run(
            datasources[server.kind], sql.format(t=f"{server.schema}.events", s=server.schema)
        )["execution_id"]
        for sql, _ in WRITES
    }  # all at once: the region's workers take them in parallel
    for sql, code in WRITES:
        done = client.wait_until_done(queued[sql], timeout=60)
        assert (done["execution_status"], done["error_code"]) == ("failed", code), (sql, done)
        assert server.password not in done["error_message"]
    assert server.fingerprint() == before


# Run on the locked instance itself, past the SQL check: DuckDB's read-only attach, the remote
# read-only session, or the locked configuration must refuse each one.
UNCHECKED_ESCAPES = {
    "postgres": [
        "INSERT INTO {t} VALUES (9, 'XX', 1, NULL)",
        "DELETE FROM {t}",
        "CALL postgres_execute('ds', 'DELETE FROM {t}')",
        "CALL postgres_execute('ds', 'COMMIT; DELETE FROM {t}')",
        "SELECT * FROM postgres_query('ds', 'DELETE FROM {t} RETURNING id')",
        "ATTACH 'host=127.0.0.1 dbname=test' AS other (TYPE postgres)",
    ],
    "mysql": [
        "INSERT INTO {t} VALUES (9, 'XX', 1, NULL)",
        "DELETE FROM {t}",
        "CALL mysql_execute('ds', 'DELETE FROM {t}')",
        "CALL mysql_execute('ds', 'COMMIT; DELETE FROM {t}')",
        "SELECT * FROM mysql_query('ds', 'DELETE FROM {t}')",
        "ATTACH 'host=127.0.0.1' AS other (TYPE mysql)",
    ],
}


def test_the_locked_instance_and_the_server_refuse_what_the_check_would(server, tmp_path):
    """As the server's admin, a login that may write: what refuses is dataferry's doing."""
    import duckdb

    before = server.fingerprint()
    user, password = server.admin_login
    spec = remote_spec(server, username=user, password=password or None)
    sandbox = engine.Sandbox(spec, LIMITS, str(tmp_path))
    try:
        for sql in UNCHECKED_ESCAPES[server.kind]:
            statement = sql.format(t=f"{server.schema}.events")
            with pytest.raises(duckdb.Error):
                sandbox.connection.execute(statement).fetchall()
            assert server.fingerprint() == before, statement
        assert sandbox.connection.execute(
            "SELECT database_name, path FROM duckdb_databases() WHERE database_name = 'ds'"
        ).fetchall() == [("ds", "")]
        assert sandbox.connection.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (
            0,
        )
    finally:
        sandbox.close()
