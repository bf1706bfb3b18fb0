"""The client's run-and-wait, driven by hand (no server): the generator's requests and how it
reads the answers, a server without run-and-wait included."""

from __future__ import annotations

import json

import httpx
import pytest
from dataferry_client import operations as ops
from dataferry_client import transport
from dataferry_client.config import Config
from dataferry_client.errors import BadRequest, DataferryError
from dataferry_client.operations import Call, Reply

EXECUTION = {"id": "e1", "type": "executions", "attributes": {"execution_status": "completed"}}
GRANT = {"data_key": "r_k", "data_access_token": "t", "data_timestamp": 1, "data_url": "http://d"}


def _reply(status: int, document: dict) -> Reply:
    return Reply(status, json.dumps(document).encode(), {})


def _refused(parameter: str) -> Reply:
    error = {"status": "400", "code": "invalid_parameter", "source": {"parameter": parameter}}
    return _reply(400, {"errors": [error]})


def test_run_and_wait_sends_wait_and_keeps_the_grant_of_the_answer():
    operation = ops.run_execution("ds", "SELECT 1", wait=30)
    call: Call = next(operation)
    assert call.params == {"wait": "30"} and call.read_timeout == 60
    with pytest.raises(StopIteration) as done:
        operation.send(_reply(200, {"data": EXECUTION, "meta": GRANT}))
    execution = done.value.value
    assert execution.status.ended and execution.grant.data_key == "r_k"


def test_a_server_without_run_and_wait_gets_the_same_run_without_wait():
    operation = ops.run_execution("ds", "SELECT 1", wait=30)
    first: Call = next(operation)
    again: Call = operation.send(_refused("wait"))
    assert again.params is None
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    with pytest.raises(StopIteration) as done:
        operation.send(_reply(200, {"data": EXECUTION}))
    assert done.value.value.grant is None


def test_another_bad_request_is_raised_not_retried():
    operation = ops.run_execution("ds", "SELECT 1", wait=30)
    next(operation)
    with pytest.raises(BadRequest):
        operation.send(_refused("sort"))


def test_a_503_without_retry_after_resends_a_read_but_not_a_change():
    """The server's 503 ``database_unavailable`` carries no Retry-After: a connection lost while
    committing may have kept the change, and a run sent again would run twice. A 503 that did
    nothing (``too_many_connections``, before any route) says when to come back."""
    rule = transport.RetryRule()
    unavailable = Reply(503, b"{}", {})
    assert rule.delay(Call("GET", "/datasources"), unavailable, 0) is not None
    assert rule.delay(Call("POST", "/datasources"), unavailable, 0) is None
    keyed = Call("POST", "/datasources/x/executions", headers={"Idempotency-Key": "k"})
    assert rule.delay(keyed, unavailable, 0) is not None
    refused_at_the_door = Reply(503, b"{}", {"retry-after": "1"})
    assert rule.delay(Call("POST", "/datasources"), refused_at_the_door, 0) == 1.0


def test_an_interrupt_between_two_calls_is_thrown_into_the_operation(monkeypatch):
    """Ctrl-C may come while the transport is between two calls of an operation (it came right
    after the progress line was written, once in four runs of the command line's test): it is
    thrown into the operation, which may end what it started, as during a call."""
    sent: list[str] = []

    class Answering(transport.SyncTransport):
        def __init__(self) -> None:  # no configuration: nothing is sent over a network
            pass

        def send(self, call: Call) -> Reply:
            sent.append(call.path)
            return Reply(200, b"{}", {})

    advance = transport._advance

    def advanced_then_interrupted(operation, reply):
        following = advance(operation, reply)
        if len(sent) == 1:  # the operation waits for its second call to be sent
            raise KeyboardInterrupt
        return following

    monkeypatch.setattr(transport, "_advance", advanced_then_interrupted)

    def operation():
        yield Call("GET", "/first")
        try:
            yield Call("GET", "/second")
        except KeyboardInterrupt:
            yield Call("POST", "/cleanup")
            raise

    with pytest.raises(KeyboardInterrupt):
        Answering().drive(operation())
    assert sent == ["/first", "/cleanup"]


def test_what_an_interrupted_query_sends_to_end_its_execution_is_sent_once_and_soon():
    """The review: a task cancelled by a timeout around ``query`` waited for the cancel's
    retries (each up to a minute) before its cancellation went on."""
    datasource = {"id": "ds", "type": "datasources", "attributes": {"name": "x"}}
    running = {"id": "e1", "type": "executions", "attributes": {"execution_status": "running"}}
    operation = ops.query("ds", "SELECT 1")
    assert next(operation).path == "/datasources/ds"
    run = operation.send(_reply(200, {"data": datasource}))
    assert run.params == {"wait": "30"} and not run.soon
    sent_again = operation.throw(KeyboardInterrupt())  # Ctrl-C while the run waits
    assert (
        sent_again.soon and sent_again.headers["Idempotency-Key"] == run.headers["Idempotency-Key"]
    )
    cancel = operation.send(_reply(200, {"data": running}))
    assert cancel.soon and cancel.path == "/executions/e1/cancel"
    assert transport.SOON_SECONDS <= 5


def test_a_soon_call_is_sent_once_within_its_bound():
    timeouts: list[dict] = []

    def down(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        raise httpx.ConnectError("down")

    config = Config(api_url="http://127.0.0.1:9", api_key="k")
    sender = transport.SyncTransport(config, timeout=60, retry=transport.RetryRule())
    sender.http = httpx.Client(transport=httpx.MockTransport(down))
    with pytest.raises(DataferryError):
        sender.send(Call("GET", "/executions/e1", soon=True))
    assert [timeout["read"] for timeout in timeouts] == [transport.SOON_SECONDS]
    timeouts.clear()
    with pytest.raises(DataferryError):
        sender.send(Call("GET", "/executions/e1"))  # an ordinary read is sent again
    assert len(timeouts) > 1 and timeouts[0]["read"] == 60
