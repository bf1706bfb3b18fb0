"""An organisation's finished history, added straight to the executions table: what a test or a
bench of the claim and run paths needs to see whether they read it (running that many executions
through the API would take most of an hour)."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, insert, select

from shared.db.models import Execution
from shared.execution_states import ExecutionStatus

EXECUTIONS = Execution.__table__
_BATCH = 5_000


def add_finished_executions(engine: Engine, datasource_id: str, count: int) -> None:
    """``count`` completed executions of the datasource, copies of one of its own, analysed on
    PostgreSQL as autovacuum would."""
    with engine.begin() as connection:
        template = connection.execute(
            select(EXECUTIONS).where(EXECUTIONS.c.datasource_id == datasource_id).limit(1)
        ).one()
        finished = {**template._asdict(), "status": ExecutionStatus.COMPLETED, "data_key": None}
        for start in range(0, count, _BATCH):
            rows = [
                {**finished, "id": str(uuid.uuid4())} for _ in range(min(_BATCH, count - start))
            ]
            connection.execute(insert(EXECUTIONS), rows)
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("ANALYZE executions")
