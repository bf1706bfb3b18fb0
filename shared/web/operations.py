"""Operations declared once, next to their handlers; the routes and the OpenAPI paths of both
servers are derived from the declarations.

``@OPERATIONS.get("/things/{id}", ...)`` registers a handler with how it is routed and documented.
What a request must pass before its handler runs is the server's: each declares its own kind of
operation (a subclass) whose ``admit`` does those checks in its fixed order and whose
``documented_*`` methods add what they answer to the document — the API server's (key, rate limit,
permission, body) in ``api_server.resource_layer.operations``, the data server's (a data token)
in ``data_server.endpoints``. Nothing describes an operation by hand.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import openapi as oa
from shared.errors import InvalidQueryParameter
from shared.web.routing import resource_route

Handler = Callable[..., Response | Awaitable[Response]]
PUBLIC: tuple[str, ...] = ()  # no security scheme: no credentials at all


@dataclass(frozen=True, eq=False)
class Operation:
    method: str
    path: str  # as routed: "{name:path}" keeps its converter
    operation_id: str
    tag: str
    summary: str
    description: str
    handler: Handler
    security: tuple[str, ...] = PUBLIC  # the schemes of the document, any one of which admits
    parameters: tuple[dict[str, Any], ...] = ()  # the operation's own (query, header, path)
    path_parameters: tuple[dict[str, Any], ...] = ()  # the path item's, for every method
    request_body: dict[str, Any] | None = None  # its OpenAPI requestBody
    responses: Mapping[str, Any] = field(default_factory=dict)  # success answers
    errors: Mapping[int, str | None] = field(default_factory=dict)  # beyond those of ``admit``
    extensions: Mapping[str, Any] = field(default_factory=dict)  # x-… members of the document
    # A coroutine handler's first blocking step (Run Execution's queueing, before its wait):
    # called with what the handler gets, in the thread of the checks where those run in one; its
    # result is passed to the handler after the rest. One trip to a thread fewer.
    first_in_thread: Callable[..., Any] | None = None

    @property
    def template(self) -> str:
        """The path as the document, the audit log and metrics name it: "/files/{name}"."""
        return re.sub(r"\{(\w+):\w+\}", r"{\1}", self.path)

    @functools.cached_property
    def endpoint(self) -> Callable[[Request], Awaitable[Response]]:
        return _endpoint(self)

    async def admit(self, request: Request) -> tuple[Any, ...]:
        """The checks a request passes before the handler runs, in their order; what they
        establish (the caller) is passed to the handler after the request. None here."""
        return ()

    async def admits_in_thread(self, request: Request) -> bool:
        """Whether ``admit``'s checks may run as ``checks_in_thread``, for a plain handler in its
        thread just before it, so that the request takes one trip to a thread, not two: none of
        them waits on the event loop, or what waits was done here first. False here."""
        return False

    def checks_in_thread(self, request: Request) -> tuple[Any, ...]:
        """``admit``'s checks, run in a thread (where ``admits_in_thread``)."""
        raise NotImplementedError

    def answered_in_thread(self, request: Request, response: Response) -> None:
        """What follows a plain handler's answer in its thread, before the answer is sent (the
        API server's audit record). Nothing here."""

    def documented_errors(self) -> dict[int, str | None]:
        """Each error status the operation can answer, with a note saying when (None: the shared
        description): those ``admit`` gives, then the declared ones, which may reword them."""
        return dict(self.errors)

    def documented_path_parameters(self) -> list[dict[str, Any]]:
        return list(self.path_parameters)

    def documented_parameters(self) -> list[dict[str, Any]]:
        """The operation's own parameters (query, header, path), as its document lists them."""
        return list(self.parameters)

    def documented_extensions(self) -> dict[str, Any]:
        return dict(self.extensions)


OperationT = TypeVar("OperationT", bound=Operation)


class Operations(Generic[OperationT]):
    """The operations of one module, under one tag of the document, all of one ``kind``."""

    def __init__(
        self,
        tag: str,
        description: str,
        kind: type[OperationT],
        schemas: Mapping[str, Any] | None = None,
    ) -> None:
        self.tag = tag
        self.description = description
        self.kind = kind
        self.schemas = dict(schemas or {})  # named schemas its operations refer to
        self.operations: list[OperationT] = []

    def operation(self, method: str, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                self.kind(method=method, path=path, tag=self.tag, handler=handler, **declared)
            )
            return handler

        return register

    def get(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.operation("GET", path, **declared)

    def post(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.operation("POST", path, **declared)

    def put(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.operation("PUT", path, **declared)

    def patch(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.operation("PATCH", path, **declared)

    def delete(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.operation("DELETE", path, **declared)


def reject_undeclared_query(request: Request, allowed: Collection[str]) -> None:
    """Known query parameters, each at most once (400 naming the first that is not): an unknown
    one is a typo the client should hear about, and a second ``format`` or ``page[size]`` a
    mistake, not a silent choice of one of them."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            raise InvalidQueryParameter(f"Unsupported query parameter '{name}'.", parameter=name)
        if name in seen:
            raise InvalidQueryParameter(f"'{name}' is given more than once.", parameter=name)
        seen.add(name)


# ---------------------------------------------------------------- routes


def _endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of a declared operation: ``admit``, then the handler. A plain
    handler runs in a thread (it may block on the database), after its checks in the same one
    where none of them waits on the event loop (each trip to a thread costs about 0.1 ms of
    CPU); a coroutine handler is one that waits (for an execution to end, for a file's bytes)
    and holds no thread: it runs its blocking steps with ``run_in_threadpool``, its first one
    (``first_in_thread``) after its checks in their thread where it declares one."""
    waits = inspect.iscoroutinefunction(op.handler)
    first = op.first_in_thread

    def handled(request: Request, *arguments: Any) -> Response:
        response = cast(Response, op.handler(request, *arguments))
        op.answered_in_thread(request, response)
        return response

    def admitted_then_handled(request: Request) -> Response:
        return handled(request, *op.checks_in_thread(request))

    def admitted_then_first(request: Request) -> tuple[Any, ...]:
        arguments = op.checks_in_thread(request)
        return (*arguments, cast(Callable[..., Any], first)(request, *arguments))

    async def waited(*arguments: Any) -> Response:
        return await cast(Awaitable[Response], op.handler(*arguments))

    async def endpoint(request: Request) -> Response:
        if not waits:
            if await op.admits_in_thread(request):
                return await run_in_threadpool(admitted_then_handled, request)
            return await run_in_threadpool(handled, request, *await op.admit(request))
        if first is None:
            return await waited(request, *await op.admit(request))
        if await op.admits_in_thread(request):
            return await waited(request, *await run_in_threadpool(admitted_then_first, request))
        arguments = (request, *await op.admit(request))
        return await waited(*arguments, await run_in_threadpool(first, *arguments))

    return endpoint


def by_path(operations: Iterable[OperationT]) -> dict[str, list[OperationT]]:
    grouped: dict[str, list[OperationT]] = {}
    for op in operations:
        grouped.setdefault(op.path, []).append(op)
    return grouped


def route(operations: Sequence[Operation]) -> Route:
    """The route of one path: a handler per method of its operations."""
    return resource_route(operations[0].path, **{op.method: op.endpoint for op in operations})


def routes(operations: Iterable[Operation]) -> list[Route]:
    return [route(ops) for ops in by_path(operations).values()]


# ---------------------------------------------------------------- the document


def operation_object(op: Operation) -> dict[str, Any]:
    statuses = op.documented_errors()
    notes = {status: note for status, note in statuses.items() if note}
    return oa.operation(
        op.operation_id,
        op.tag,
        op.summary,
        op.description,
        {**op.responses, **oa.error_responses(statuses, notes)},
        security=op.security,
        parameters=op.documented_parameters(),
        body=op.request_body,
        **op.documented_extensions(),
    )


def paths(operations: Iterable[Operation]) -> dict[str, dict[str, Any]]:
    """Path items: the path's own parameters (those of its first operation), then one operation
    object per method."""
    items: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = items.setdefault(op.template, {})
        if "parameters" not in item and "{" in op.template:
            item["parameters"] = op.documented_path_parameters()
        item[op.method.lower()] = operation_object(op)
    return items


def referenced_schemas(
    document_parts: Iterable[Any], candidates: Mapping[str, oa.Schema]
) -> dict[str, oa.Schema]:
    """The schemas of ``candidates`` that the parts refer to, directly or through each other."""
    wanted: dict[str, oa.Schema] = {}
    pending = [_refs(part) for part in document_parts]
    names = [name for refs in pending for name in refs]
    while names:
        name = names.pop()
        if name in wanted or name not in candidates:
            continue
        wanted[name] = candidates[name]
        names.extend(_refs(candidates[name]))
    return dict(sorted(wanted.items()))


_REF = re.compile(r'"\$ref":\s*"#/components/schemas/([^"]+)"')


def _refs(part: Any) -> list[str]:
    return _REF.findall(json.dumps(part))
