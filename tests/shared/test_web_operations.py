"""shared.web.operations: a server's kind of operation decides admission and what it adds to the
document; the route and the path item come from the one declaration."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient

from shared import openapi as oa
from shared.errors import Unauthorized
from shared.web import operations as web
from shared.web.problems import EXCEPTION_HANDLERS


@dataclass(frozen=True, eq=False)
class Guarded(web.Operation):
    """Admitted by ``X-Caller`` unless public; what admission learns is the handler's second
    argument."""

    security: tuple[str, ...] = ("Caller",)

    async def admit(self, request: Request) -> tuple[Any, ...]:
        if self.security == web.PUBLIC:
            return ()
        caller = request.headers.get("x-caller")
        if not caller:
            raise Unauthorized("no caller")
        return (caller,)

    def documented_errors(self) -> dict[int, str | None]:
        return {**({} if self.security == web.PUBLIC else {401: None}), **self.errors}


def declared() -> web.Operations[Guarded]:
    ops = web.Operations("Things", "Things.", Guarded)
    thing = oa.path_parameter("thing", "Which thing.")

    @ops.get(
        "/things/{thing}",
        operation_id="showThing",
        summary="Show",
        description="One thing.",
        path_parameters=(thing,),
        responses={"200": oa.response("The thing.")},
        errors={404: "No such thing (`not_found`)."},
    )
    async def show(request: Request, caller: str) -> Response:
        return JSONResponse({"caller": caller, "thing": request.path_params["thing"]})

    @ops.delete(
        "/things/{thing}",
        operation_id="deleteThing",
        summary="Delete",
        description="Gone.",
        security=web.PUBLIC,
        responses={"204": oa.response("Deleted.")},
    )
    def delete(request: Request) -> Response:  # a plain handler: it may block, so in a thread
        return JSONResponse(
            {"in_thread": threading.current_thread() is not threading.main_thread()}
        )

    return ops


def client(ops: web.Operations[Guarded]) -> TestClient:
    app = Starlette(routes=web.routes(ops.operations), exception_handlers=EXCEPTION_HANDLERS)
    return TestClient(app)


def test_admission_runs_before_the_handler_and_hands_it_what_it_learnt():
    with client(declared()) as http:
        refused = http.get("/things/7")
        admitted = http.get("/things/7", headers={"X-Caller": "ada"})
        public = http.delete("/things/7")
        wrong_method = http.post("/things/7", headers={"X-Caller": "ada"})
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["code"] == "unauthorized"
    assert admitted.json() == {"caller": "ada", "thing": "7"}
    assert public.json() == {"in_thread": True}
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "DELETE, GET, HEAD"


def test_the_path_item_is_derived_from_the_declarations():
    item = web.paths(declared().operations)["/things/{thing}"]
    assert [p["name"] for p in item["parameters"]] == ["thing"]
    show, delete = item["get"], item["delete"]
    assert show["security"] == [{"Caller": []}]
    assert delete["security"] == []
    assert set(show["responses"]) == {"200", "401", "404"}
    assert show["responses"]["404"]["description"] == "No such thing (`not_found`)."
    assert "description" not in show["responses"]["401"]  # the shared response's own words
    assert set(delete["responses"]) == {"204"}


def test_only_the_schemas_a_path_refers_to_are_published_with_what_they_refer_to():
    candidates = {
        "Thing": oa.obj({"part": oa.ref("Part")}),
        "Part": oa.obj({}),
        "Unused": oa.obj({}),
    }
    paths = {"/x": {"get": {"responses": {"200": oa.response("x", oa.ref("Thing"))}}}}
    assert list(web.referenced_schemas(paths.values(), candidates)) == ["Part", "Thing"]
