"""Bad input gets the right status and a message a person can act on; the server lives on."""

from __future__ import annotations

import base64
from collections.abc import Awaitable

import grpc
import pytest

import longline
from longline.v1 import runs_pb2
from tests.integration.conftest import Stack


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def _status(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def _stream_status(stack: Stack, **fields: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stack.stub.StreamRun(runs_pb2.StreamRunRequest(**fields)):
            pass
    return info.value.code(), info.value.details() or ""


async def test_unknown_workflow_is_not_found(stack: Stack) -> None:
    code, message = await _status(
        stack.stub.StartRun(runs_pb2.StartRunRequest(workflow="no_such_flow"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'no_such_flow' is not known" in message and "echo" in message


async def test_missing_workflow_is_invalid(stack: Stack) -> None:
    code, message = await _status(stack.stub.StartRun(runs_pb2.StartRunRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow is required" in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2", "nul", '"unterminated'])
async def test_input_that_is_not_json_is_invalid(stack: Stack, text: str) -> None:
    code, message = await _status(
        stack.stub.StartRun(runs_pb2.StartRunRequest(workflow="echo", input_json=text))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("input_json is not valid JSON")


async def test_input_over_the_limit_is_resource_exhausted(stack: Stack) -> None:
    big = '"' + "x" * (64 * 1024) + '"'  # the stack's limit is 64 KiB
    code, message = await _status(
        stack.stub.StartRun(runs_pb2.StartRunRequest(workflow="echo", input_json=big))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"input_json is {len(big)} bytes, over the limit of 65536 bytes" in message
    # just under the limit is fine
    ok = await stack.stub.StartRun(
        runs_pb2.StartRunRequest(workflow="echo", input_json='"' + "x" * 60_000 + '"')
    )
    assert ok.created


async def test_unknown_run_id_is_not_found_everywhere(stack: Stack) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    code, message = await _status(stack.stub.GetRun(runs_pb2.GetRunRequest(run_id=missing)))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"run '{missing}' not found")
    code, message = await _status(stack.stub.CancelRun(runs_pb2.CancelRunRequest(run_id=missing)))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"run '{missing}' not found")
    code, message = await _stream_status(stack, run_id=missing)
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, f"run '{missing}' not found")


async def test_empty_run_id_is_invalid(stack: Stack) -> None:
    code, message = await _status(stack.stub.GetRun(runs_pb2.GetRunRequest()))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")


async def test_cancelling_a_finished_run_is_failed_precondition(stack: Stack) -> None:
    handle = await stack.client.start("echo", 1)
    await handle.result()
    code, message = await _status(
        stack.stub.CancelRun(runs_pb2.CancelRunRequest(run_id=handle.run_id))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended SUCCEEDED" in message


@pytest.mark.parametrize(
    "cursor", ["abc", "12", "1-2-3", "-1-0", "1.5-0", "99999999999999999999999-0"]
)
async def test_malformed_after_event_id_is_invalid(stack: Stack, cursor: str) -> None:
    handle = await stack.client.start("echo", 1)
    code, message = await _stream_status(stack, run_id=handle.run_id, after_event_id=cursor)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not an event id" in message


@pytest.mark.parametrize("cursor", ["18446744073709551616-0", "1-99999999999999999999"])
async def test_an_event_id_out_of_range_is_invalid(stack: Stack, cursor: str) -> None:
    handle = await stack.client.start("echo", 1)
    code, message = await _stream_status(stack, run_id=handle.run_id, after_event_id=cursor)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is out of range" in message


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (runs_pb2.ListRunsRequest(page_size=-1), "page_size must not be negative"),
        (runs_pb2.ListRunsRequest(page_token="garbage!"), "page_token is not one this server"),
        (runs_pb2.ListRunsRequest(status=99), "status 99 is not a RunStatus"),
        # Tokens that decode, but to no cursor this server makes: digits that are not ASCII
        # ('²'.isdigit() is True), a time too large for a Redis score, no run id.
        (runs_pb2.ListRunsRequest(page_token=_token("²\x1fabc")), "page_token is not one"),
        (runs_pb2.ListRunsRequest(page_token=_token("١٢\x1fabc")), "page_token is not one"),
        (runs_pb2.ListRunsRequest(page_token=_token("9" * 400 + "\x1fa")), "page_token is not"),
        (runs_pb2.ListRunsRequest(page_token=_token("-5\x1fabc")), "page_token is not one"),
        (runs_pb2.ListRunsRequest(page_token=_token("12\x1f")), "page_token is not one"),
    ],
)
async def test_bad_list_requests_are_invalid(
    stack: Stack, request_: runs_pb2.ListRunsRequest, needle: str
) -> None:
    code, message = await _status(stack.stub.ListRuns(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in message


@pytest.mark.parametrize(
    "token",
    ["garbage!", _token("a\x1fb"), base64.urlsafe_b64encode(b"\xff\xfe").decode()],
)
async def test_bad_list_workflows_tokens_are_invalid(stack: Stack, token: str) -> None:
    code, message = await _status(
        stack.stub.ListWorkflows(runs_pb2.ListWorkflowsRequest(page_token=token))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token is not one this server gave out" in message


async def test_server_keeps_serving_after_bad_input(stack: Stack) -> None:
    for text in ["{", "x" * 100_000]:
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.stub.StartRun(runs_pb2.StartRunRequest(workflow="echo", input_json=text))
    assert await stack.client.run("echo", {"fine": True}) == {"fine": True}


async def test_every_error_carries_a_stable_machine_readable_reason(stack: Stack) -> None:
    """google.rpc.ErrorInfo in the status details, for clients in any language to branch on."""
    from longline._errors import error_reason

    async def reason(call: Awaitable[object]) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        return error_reason(info.value)

    s = stack.stub
    done = await stack.client.start("echo", 1)
    await done.result()
    assert await reason(s.StartRun(runs_pb2.StartRunRequest(workflow="nope"))) == (
        "WORKFLOW_NOT_FOUND"
    )
    assert await reason(s.StartRun(runs_pb2.StartRunRequest(workflow="echo", input_json="{"))) == (
        "INPUT_NOT_JSON"
    )
    for constant in ("NaN", '{"x": Infinity}', "[-Infinity]"):  # Python reads them; JSON not
        request = runs_pb2.StartRunRequest(workflow="echo", input_json=constant)
        assert await reason(s.StartRun(request)) == "INPUT_NOT_JSON"
    big = runs_pb2.StartRunRequest(workflow="echo", input_json='"' + "x" * 70_000 + '"')
    assert await reason(s.StartRun(big)) == "INPUT_TOO_LARGE"
    assert await reason(s.GetRun(runs_pb2.GetRunRequest(run_id="nope"))) == "RUN_NOT_FOUND"
    assert await reason(s.CancelRun(runs_pb2.CancelRunRequest(run_id=done.run_id))) == (
        "RUN_ALREADY_ENDED"
    )
    assert await reason(s.ListRuns(runs_pb2.ListRunsRequest(page_token="x"))) == (
        "INVALID_PAGE_TOKEN"
    )
    with pytest.raises(longline.NotFound) as sdk_error:
        await stack.client.get_run("nope").describe()
    assert sdk_error.value.reason == "RUN_NOT_FOUND"


async def test_trace_of_an_unknown_or_unnamed_run(stack: Stack) -> None:
    from longline._errors import error_reason

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GetRunTrace(runs_pb2.GetRunTraceRequest(run_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (info.value.details(), error_reason(info.value)) == (
        "run 'nope' not found",
        "RUN_NOT_FOUND",
    )
    code, message = await _status(stack.stub.GetRunTrace(runs_pb2.GetRunTraceRequest()))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")


async def test_a_cursor_past_the_last_event_of_a_live_run_is_out_of_range(
    stack: Stack, redis_url: str
) -> None:
    """A cursor past the run's last event and ahead of Redis's clock: every later event of
    the run has a smaller id, so waiting for one would wait forever. (Past the last event
    but not ahead of the clock is what a failover that lost events leaves a client with: it
    waits for the events to come, whose ids are larger.)"""
    from longline._errors import error_reason
    from longline._store import ClaimRequest, RunWriter, Store, connect, encode_event

    store = Store(connect(redis_url))
    await store.presence.announce("w9", [("elsewhere", "")], 60_000)
    await store.runs.create("live1", "elsewhere", "null", {})
    assert await store.attempts.claim(
        ClaimRequest("live1", 1, "w9", "cp", lease_ms=60_000, max_attempts=3)
    )
    last = (await store.runs.get("live1")).last_event_id
    ms = int(last.split("-")[0])
    for cursor in ("99999999999999-0", f"{ms + 3_600_000}-0"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stack.stub.StreamRun(
                runs_pb2.StreamRunRequest(run_id="live1", after_event_id=cursor), timeout=5
            ):
                pass
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE, info.value
        assert error_reason(info.value) == "CURSOR_PAST_LAST_EVENT"
        message = info.value.details() or ""
        assert f"after_event_id {cursor} is past the last event of run 'live1', {last}" in message
        assert "its last_event_id" in message
    # At the last event is fine: the stream waits for what comes next.
    writer = RunWriter(store, "live1", 1, "w9")
    stream = stack.stub.StreamRun(runs_pb2.StreamRunRequest(run_id="live1", after_event_id=last))
    await writer.append([encode_event("STATUS", 1, "next")])
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    types = [r.event.type async for r in stream]
    assert types == [runs_pb2.EVENT_TYPE_STATUS, runs_pb2.EVENT_TYPE_RUN_SUCCEEDED]
    # Once the run has ended, a cursor past its end replays nothing, as before.
    after_end = [
        r
        async for r in stack.stub.StreamRun(
            runs_pb2.StreamRunRequest(run_id="live1", after_event_id="99999999999999-0")
        )
    ]
    assert after_end == []
    await store.redis.aclose()
