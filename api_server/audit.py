"""The audit log: every successful write and every data grant, recorded as it is answered.

A pure ASGI middleware sees the matched route, the caller (``request.state.principal``) and the
status, so no endpoint can forget to record itself. Each operation declares its action
(``resource_layer.operations``), which its route carries; a test checks that every write route has
one. Reads are not recorded, except those that hand out data. The row holds who (key), what
(action, route, resource id), when and from which address — never a body, a secret or a
parameter value. A plain handler's answer is recorded in the thread the handler ran in, just after
it (``record_answer``, from ``resource_layer.operations``), which spares the request a trip to a
thread; an operation whose change must commit with its record (Run Execution) writes it in its
own transaction (``record_in_transaction``). The middleware then writes nothing more: it records
what neither did.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from sqlalchemy import Connection, Engine, insert
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db.engine import single_write
from shared.db.models import AuditEvent, table_of
from shared.errors import ServiceUnavailable
from shared.logging import request_id_var
from shared.web.routing import handling_method

logger = logging.getLogger("dataferry.audit")

GRANT_ACTIONS = "data_grant."  # the actions that hand out data: a token to fetch it


# Built once (every write and grant records one); the id and time come from the columns'
# defaults, as for an ``AuditEvent`` added to a session.
_INSERT_EVENT = insert(table_of(AuditEvent))


def record_event(
    transaction: Session | Connection,
    *,
    organization_id: str,
    action: str,
    method: str,
    path: str,
    status: int,
    api_key_id: str | None = None,
    resource_id: str | None = None,
    remote_addr: str | None = None,
    request_id: str | None = None,
) -> None:
    """One event, in ``transaction``: the caller's own, with its change, or a statement that
    commits by itself (``single_write``)."""
    transaction.execute(
        _INSERT_EVENT,
        {
            "organization_id": organization_id,
            "api_key_id": api_key_id,
            "action": action,
            "method": method,
            "path": path,
            "resource_id": resource_id,
            "status": status,
            "remote_addr": remote_addr,
            "request_id": request_id,
        },
    )


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_after_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self._record(scope, message)
            await send(message)

        await self.app(scope, receive, send_after_recording)

    async def _record(self, scope: Scope, message: Message) -> None:
        location = _header(message, b"location")
        event = _unrecorded_event(scope, message["status"], _id_in_location(location))
        if event is not None:
            await anyio.to_thread.run_sync(_write, scope, event)


def record_answer(request: Request, response: Response) -> None:
    """The middleware's record of ``response``, written in the thread its handler ran in, before
    it is sent: one trip to a thread fewer for each write and grant (the middleware then writes
    nothing more; it still records the answers no handler returned, an error's). A grant goes
    out only recorded (``_write_grant``)."""
    location = response.headers.get("location")
    event = _unrecorded_event(request.scope, response.status_code, _id_in_location(location))
    if event is None:
        return
    if event["action"].startswith(GRANT_ACTIONS):
        _write_grant(request.app.state.engine, event)
        request.state.audit_recorded = True
    else:
        _write(request.scope, event)


def _unrecorded_event(scope: Scope, status: int, created_id: str | None) -> dict[str, Any] | None:
    if scope.get("state", {}).get("audit_recorded"):
        return None
    return _event(scope, status, created_id)


def _write(scope: Scope, event: dict[str, Any]) -> None:
    """Record ``event`` once: a failure is logged, and the answer goes out all the same (its
    change has committed already, which a failed record cannot undo)."""
    _recorded(scope["app"].state.engine, event)
    scope.setdefault("state", {})["audit_recorded"] = True


def _recorded(engine: Engine, event: dict[str, Any]) -> bool:
    """Whether ``event`` was written, on its own (``single_write``); a failure is logged."""
    try:
        with single_write(engine) as connection:
            record_event(connection, **event)
    except Exception:
        logger.exception("could not record audit event %s", event["action"])
        return False
    return True


def record_in_transaction(session: Session, request: Request, resource_id: str) -> None:
    """Record the request's event in ``session``'s transaction, as the answer it gives when that
    commits (200): the change and its record commit together, and the request writes nothing
    after. Run Execution's: a worker claims the new row as soon as it commits, and a second
    write of the request would wait for that claim's lock, or make the claim wait for its own.
    The middleware then records nothing more for the request."""
    event = _event(request.scope, 200, None, resource_id)
    if event is not None:
        record_event(session, **event)
        request.state.audit_recorded = True


def record_data_grant(request: Request, action: str, resource_id: str) -> None:
    """A grant an operation of another action hands out too (run-and-wait's data grant, beside
    its ``execution.run``), recorded as the grant it is (``_write_grant``)."""
    event = _event(request.scope, 200, None, resource_id)
    if event is not None:
        _write_grant(request.app.state.engine, {**event, "action": action})


def _write_grant(engine: Engine, event: dict[str, Any]) -> None:
    """A data grant's record, without which the grant is not handed out: whoever reviews
    ``data_grant.*`` sees every token handed out."""
    if not _recorded(engine, event):
        raise ServiceUnavailable(
            "The audit log could not record this data grant, so none was handed out; try again.",
            headers={"Retry-After": "1"},
        )


def _event(
    scope: Scope, status: int, created_id: str | None, resource_id: str | None = None
) -> dict[str, Any] | None:
    """The row a request answered with ``status`` is recorded as, or None when it is not."""
    route = scope.get("route")
    action = getattr(route, "audit_actions", {}).get(handling_method(scope["method"]))
    state: dict[str, Any] = scope.get("state", {})
    principal = state.get("principal")
    # 204 from Get Execution Data means "not ready": no data was handed out. A request that
    # changed something whatever it then answered (``audit_any_status``: a dynamic filter's
    # options start or join a run, then may answer 409 or 422) is recorded with that answer.
    answered = status in (200, 201, 204) or state.get("audit_any_status", False)
    if route is None or action is None or principal is None or not answered:
        return None
    if action.startswith(GRANT_ACTIONS) and status != 200:
        return None
    client = scope.get("client")
    return {
        "organization_id": principal.organization_id,
        "api_key_id": principal.api_key_id,
        "action": action,
        "method": scope["method"],
        "path": route.path,
        "status": status,
        "resource_id": resource_id
        or state.get("audit_resource_id")
        or scope.get("path_params", {}).get("id")
        or created_id,
        "remote_addr": client[0] if client else None,
        "request_id": request_id_var.get(),
    }


def _header(message: Message, name: bytes) -> str | None:
    for each, value in message.get("headers", []):
        if each.lower() == name:
            return value.decode("latin-1")
    return None


def _id_in_location(location: str | None) -> str | None:
    """The id of the resource a request created: the last segment of its Location."""
    return None if location is None else location.rstrip("/").rsplit("/", 1)[-1]
