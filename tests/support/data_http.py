"""What the ``/data/{data_key}`` HTTP tests (tests/data_server/data_http/) share: a published
result of 50,000 rows with its execution's row (a stored representation is counted on it), a data
token for it, a data server client that sends it, and a GET of the result in one format.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import pyarrow as pa
from sqlalchemy import select
from starlette.testclient import TestClient

from data_server import representations
from data_server.app import create_app
from shared.db.engine import create_metadata_engine, create_session_factory
from shared.db.models import Base, Datasource, Execution, Organization
from shared.organization_rows import count_stored_bytes
from shared.results import result_object_key
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key
from tests.support.log_watch import remember

IDENTITY = {"Accept-Encoding": "identity"}
ORGANIZATION_ID = "orga-niza-tion"  # the result's and its tokens' organisation


def publish_result(store, rows: int = 50_000, table: pa.Table | None = None):
    """``table`` (by default ``rows`` rows of three columns) stored as a worker stores a result."""
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    if table is None:
        table = pa.table(
            {
                "id": pa.array(range(rows), pa.int64()),
                "amount": pa.array([i * 0.25 for i in range(rows)], pa.float64()),
                "name": pa.array([f'name "{i}"' for i in range(rows)], pa.string()),
            }
        )
    temp = store.temp_path("upload")
    with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(8192):
            writer.write_batch(batch)
    store.publish(temp, result_object_key(data_key))
    return store, data_key, table


def data_token(settings, data_key, now=None, scope=Scope.EXECUTION_RESULT):
    token = mint_data_token(
        SigningKeyring(settings),
        settings,
        organization_id=ORGANIZATION_ID,
        data_key=data_key,
        scope=scope,
        now=now,
    )
    remember(token)
    return token


def record_result(settings, data_key: str, organization_id: str = ORGANIZATION_ID) -> None:
    """The completed execution whose result ``data_key`` is, in the metadata database."""
    engine = create_metadata_engine(settings.database_url)
    Base.metadata.create_all(engine)  # the tables as the models declare them: no migration run
    with create_session_factory(engine).begin() as session:
        if session.get(Organization, organization_id) is None:
            session.add(Organization(id=organization_id, name=organization_id))
            session.flush()
            session.add(
                Datasource(
                    id="d", organization_id=organization_id, name="d", database_type="duckdb"
                )
            )
        session.add(
            Execution(
                id=data_key[-36:].rjust(36, "0"),
                organization_id=organization_id,
                datasource_id="d",
                execution_type="sql_query",
                status="completed",
                data_key=data_key,
                result_size=1,
            )
        )
        session.flush()
        count_stored_bytes(session, organization_id, 1)
    engine.dispose()


@contextmanager
def data_client(settings, stored):
    store, data_key, table = stored
    record_result(settings, data_key)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        token = data_token(settings, data_key)
        client.headers["Authorization"] = f"Data {token}"
        client.data_key, client.table, client.store, client.token = data_key, table, store, token
        yield client


def get_result(client, fmt="csv", headers=None, **params):
    """The response, once whatever it encoded is stored (``stored_when_read``)."""
    response = client.get(
        f"/data/{client.data_key}",
        params={"format": fmt, **params},
        headers={**IDENTITY, **(headers or {})},
    )
    stored_when_read()
    return response


def stored_when_read(timeout: float = 10.0) -> None:
    """Waits until every encoding in this process whose readers have been let finish is stored
    (or refused) and gone from the registry: the readers end before the fsync that stores it
    (data_server/representations.py), so a test that looks in the store next waits for it.
    Encodings still writing (a test holding one) are not waited for."""
    deadline = time.monotonic() + timeout
    while True:
        with representations._encoding_guard:
            storing = [g for _, g in representations._encoding.values() if g.finished]
        if not storing:
            return
        assert time.monotonic() < deadline, "a finished encoding was never stored"
        time.sleep(0.005)


def variants_size(settings, data_key: str) -> int:
    """What the execution's row counts for the result's stored representations."""
    engine = create_metadata_engine(settings.database_url)
    with engine.connect() as connection:
        size = connection.execute(
            select(Execution.variants_size).where(Execution.data_key == data_key)
        ).scalar_one()
    engine.dispose()
    return size
