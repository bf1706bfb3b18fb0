"""The API server's operations: a shared declaration (``shared.web.operations``) plus what this
server checks before a handler runs.

``@OPERATIONS.get("/things/{id}", ...)`` registers a handler with everything the rest of the server
needs to know about it. The request steps every operation shares run here, in one order: the
``Accept`` header (406), the caller (401), its rate limits (429), the declared permission (403),
then the body (bounded: 413, 408) — so no handler can forget one, and a reader of a handler sees
only its own work. ``routes`` builds the URL map from the declarations; the OpenAPI document
(``shared.web.operations.paths``) and the audit log read the same objects.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api_server.audit import GRANT_ACTIONS, record_answer
from api_server.auth import authenticate, limit_rate
from api_server.jsonapi import MAX_BODY_BYTES, read_bounded_body, require_acceptable
from api_server.permissions import Permission, require
from api_server.principals import Principal
from api_server.resource_layer.documentation import fields_parameter, id_parameter
from api_server.resource_layer.resource_types import ResourceType, declared_type
from shared.digits import natural_number
from shared.errors import PreconditionFailed
from shared.problems import JSONAPI_MEDIA_TYPE
from shared.web import operations as web
from shared.web.http_limits import REQUEST_HEAD_TIMEOUT_SECONDS
from shared.web.request_headers import list_value, names_any

API_KEY = "ApiKey"  # the security scheme of every operation that is not public
# What ``admit`` answers: Accept (406), the key (401), its rate limits (429); then the body's.
ADMISSION_ERRORS = (401, 406, 429)
BODY_ERRORS: dict[int, str | None] = {408: None, 413: None, 415: None}


class Body(Enum):
    """How an operation reads its request body."""

    NONE = "none"  # none expected; any sent is not read
    BOUNDED = "bounded"  # read whole before the handler runs, at most max_body_bytes (1 MiB)
    STREAM = "stream"  # the handler streams it (an upload), after every check above


# A body declared at most this long is read before the checks (``Operation.admits_in_thread``):
# uvicorn buffers as much of a request (its flow control's high-water mark) before the app
# reads any of it, so reading it first makes no client's request cost the server more.
EARLY_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, eq=False)
class Operation(web.Operation):
    security: tuple[str, ...] = (API_KEY,)  # web.PUBLIC: no credentials at all
    permissions: tuple[Permission, ...] = ()  # any one admits; none: any valid key
    audit: str | None = None  # the audit log's action; None: not recorded
    subject: ResourceType | None = None  # the type whose id is ``{id}``
    body: Body = Body.NONE
    # Body.BOUNDED: the most bytes read (a restored backup may exceed the usual bound).
    max_body_bytes: int = MAX_BODY_BYTES
    produces: str = JSONAPI_MEDIA_TYPE

    @property
    def public(self) -> bool:
        return not self.security

    async def admit(self, request: Request) -> tuple[Any, ...]:
        """The checks (``checks_in_thread``), then the body; the handler gets the principal."""
        arguments = () if self.public else await run_in_threadpool(self.checks_in_thread, request)
        if self.body is Body.BOUNDED:
            request.state.body = await read_bounded_body(request, self.max_body_bytes)
        return arguments

    async def admits_in_thread(self, request: Request) -> bool:
        """Unless a body must be read between the checks and the handler (reading waits on the
        event loop): a small one, of a length declared up to ``EARLY_BODY_BYTES`` and without a
        content coding, is read first: reading it gives no error the checks would have given
        first but the transport's own (a client gone; 408 past the request head's deadline, so
        that no client holds its connection longer, unauthenticated, than a slow head would).
        Any other body is read after the checks, so that an unauthenticated client cannot make
        the server take a large one."""
        if self.body is not Body.BOUNDED:
            return True
        limit = min(EARLY_BODY_BYTES, self.max_body_bytes)
        declared = natural_number(request.headers.get("content-length", ""), limit)
        if declared is None or declared > limit or "content-encoding" in request.headers:
            return False
        request.state.body = await read_bounded_body(
            request, self.max_body_bytes, REQUEST_HEAD_TIMEOUT_SECONDS
        )
        return True

    def checks_in_thread(self, request: Request) -> tuple[Any, ...]:
        """406 → 401 → 429 → 403, then the query's parameter names (400 for one not declared or
        repeated) and entity-tag conditions. A public document (the JWKS) is served whatever the
        client accepts."""
        if self.public:
            return ()
        require_acceptable(request, self.produces)
        principal = _admit(request, self.permissions)
        web.reject_undeclared_query(request, self.declared_query)
        _refuse_entity_tag_conditions(request)
        return (principal,)

    def answered_in_thread(self, request: Request, response: Response) -> None:
        if self.audit is not None:
            record_answer(request, response)

    @functools.cached_property
    def declared_query(self) -> frozenset[str]:
        """The query parameters the operation takes: those its document declares."""
        return frozenset(p["name"] for p in self.documented_parameters() if p.get("in") == "query")

    def documented_parameters(self) -> list[dict[str, Any]]:
        """The declared ones, and with ``include`` the sparse fieldset of each type it may add
        (JSON:API's ``fields[type]`` names any type of the answer), derived when first asked
        for, once every type is declared."""
        own = list(self.parameters)
        names = {parameter["name"] for parameter in own}
        if "include" not in names:
            return own
        served = filter(
            None,
            (
                declared_type(name.removeprefix("fields[").removesuffix("]"))
                for name in names
                if name.startswith("fields[")
            ),
        )
        included = {
            f"fields[{included.type}]": fields_parameter(included)
            for resource in served
            for included in resource.included_types()
        }
        return own + [parameter for name, parameter in included.items() if name not in names]

    def documented_errors(self) -> dict[int, str | None]:
        statuses: dict[int, str | None] = {}
        if not self.public:
            statuses.update(dict.fromkeys(ADMISSION_ERRORS))
            statuses[400] = None  # an undeclared or repeated query parameter
            statuses[412] = None  # If-Match naming an entity tag: no resource here has one
            if self.permissions:
                statuses[403] = None
        if self.body is Body.BOUNDED:
            statuses.update(BODY_ERRORS)
        if self.audit is not None and self.audit.startswith(GRANT_ACTIONS):
            statuses[503] = (
                "The audit log could not record the grant, so none was handed out "
                "(`service_unavailable`, `Retry-After: 1`)."
            )
        return {**statuses, **self.errors}

    def documented_path_parameters(self) -> list[dict[str, Any]]:
        """``{id}`` from the subject type, then the others declared."""
        own = [id_parameter(self.subject)] if self.subject is not None else []
        return [*own, *self.path_parameters]

    def documented_extensions(self) -> dict[str, Any]:
        if self.public:
            return dict(self.extensions)
        return {**self.extensions, "permissions": [str(p) for p in self.permissions]}


class Operations(web.Operations[Operation]):
    """The operations of one module, with the resource types whose schemas they may name."""

    def __init__(
        self,
        tag: str,
        description: str,
        resource_types: Sequence[ResourceType] = (),
        schemas: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(tag, description, Operation, schemas)
        self.resource_types = tuple(resource_types)


def _refuse_entity_tag_conditions(request: Request) -> None:
    """The API's resources carry no ETag, so an If-Match naming entity tags names none of them:
    the method must not run (RFC 9110 §13.1.1), whatever the client believed it was changing.
    ``*`` (any current representation) is the operation's to decide: uploads do. A PATCH or a
    DELETE changes what exists, so ``If-None-Match: *`` (only where nothing exists) never lets
    one run (§13.1.2)."""
    if_match = list_value(request, "if-match")
    if if_match is not None and if_match.strip() != "*":
        raise PreconditionFailed(
            "If-Match names an entity tag, and this API's resources carry none; send the "
            "request without it (uploads take If-Match: * and If-None-Match: *)."
        )
    if request.method in ("PATCH", "DELETE") and names_any(request, "if-none-match"):
        raise PreconditionFailed(
            f"If-None-Match: * lets a request run only where nothing exists, and {request.method} "
            "changes what exists; send the request without it."
        )


def _admit(request: Request, permissions: Sequence[Permission]) -> Principal:
    """Who calls (401), whether it may call now (429), whether it may do this (403): in this
    order, in a thread (each may wait on the database or Redis)."""
    principal = authenticate(request)
    limit_rate(request, principal)
    if permissions:
        require(principal, *permissions)
    return principal


def routes(operations: Iterable[web.Operation]) -> list[Route]:
    """One route per path, a handler per method; each route knows its methods' audit actions
    (the operations both servers have record none). Paths without parameters come first, so
    that ``/dashboards/restore`` is not taken for the dashboard ``{id}`` "restore"."""
    built = []
    grouped = web.by_path(operations).values()
    for ops in sorted(grouped, key=lambda ops: "{" in ops[0].path):
        route = web.route(ops)
        route.audit_actions = {  # type: ignore[attr-defined]
            op.method: op.audit for op in ops if isinstance(op, Operation) and op.audit
        }
        built.append(route)
    return built
