"""Every RunService RPC driven with generated requests against a real control plane and
worker (subprocesses, with tokens): random and huge strings, invalid UTF-8, deeply nested
JSON, negative and huge page sizes, random event ids and tokens.

Every answer must be a proper status a client can act on: never INTERNAL or UNKNOWN, never
a stack trace, never a hang. Afterwards the control plane still runs, and a run started
before the fuzzing has completed. `make test` runs a bounded number of examples (the
"default" Hypothesis profile in tests/conftest.py); `make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import longline
from longline._embedded import EmbeddedRedis
from longline.v1 import runs_pb2, runs_pb2_grpc
from tests.integration.test_auth import secret, tokens_toml
from tests.procs import Proc, start_control_plane, start_worker

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,  # a cursor past a live run's last event
}
AUTH = (("authorization", f"Bearer {secret('alice')}"),)
RPC_TIMEOUT = 20.0  # a call that takes this long is a hang, and fails the test


@dataclass
class Plane:
    target: str
    control_plane: Proc
    workers: list[Proc]
    channel: grpc.Channel
    stub: runs_pb2_grpc.RunServiceStub
    finished_run: str  # a run that ended: StreamRun on it replays and ends
    long_run: str  # started before the fuzzing; must complete after it


@pytest.fixture(scope="module")
def plane(redis_server: EmbeddedRedis) -> Iterator[Plane]:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    os.environ["LONGLINE_TEST_REDIS"] = redis_server.url
    secured = {"LONGLINE_INSECURE_NO_AUTH": "0"}

    async def boot() -> tuple[Proc, str, Proc, str, str]:
        cp, target = await start_control_plane(
            redis_server.url,
            "--max-input-bytes",
            "65536",
            name="fuzzed-cp",
            env={**secured, "LONGLINE_TOKENS": tokens_toml(["alice", "worker"])},
        )
        worker = await start_worker(
            redis_server.url,
            target,
            name="fuzz-worker",
            env={**secured, "LONGLINE_TOKEN": secret("worker")},
            client_token=secret("alice"),
        )
        async with longline.Client(target, token=secret("alice")) as client:
            finished = await client.start("echo", {"a": [1, 2, 3]})
            await finished.result()
            long_run = await client.start("five_steps", {"delay": 1.0})
        return cp, target, worker, finished.run_id, long_run.run_id

    cp, target, worker, finished, long_run = asyncio.run(boot())
    channel = grpc.insecure_channel(target)
    yield Plane(
        target, cp, [worker], channel, runs_pb2_grpc.RunServiceStub(channel), finished, long_run
    )
    channel.close()
    for proc in (worker, cp):
        proc.kill()
        print(f"----- {proc.name} log -----\n{proc.output()[-4000:]}")


def answer(call: Callable[[], Any]) -> grpc.StatusCode:
    """Make the call; assert its status is a proper one with a message free of internals."""
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
        assert code in ALLOWED, f"{code}: {details}"
        assert "Traceback" not in details and 'File "' not in details, details
        assert details, f"{code} with no message"
        return code  # type: ignore[no-any-return]


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300)
huge = st.integers(0, 200_000).map(lambda n: "x" * n)
strings = st.one_of(texts, huge, st.sampled_from(["", "{", "}", "{x}", "\x00", "ll:runs"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)
json_texts = st.one_of(
    json_values.map(json.dumps),
    texts,
    st.integers(1, 60_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 60_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.integers(1, 5_000_000).map(lambda n: '"' + "y" * n + '"'),
)
page_sizes = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 1000, 1001]))
event_ids = st.one_of(
    texts,
    st.from_regex(r"\A-?[0-9]{1,30}-[0-9]{1,30}\Z"),
    st.sampled_from(["0-0", "0", "-", "+", "$", ">", "18446744073709551615-18446744073709551615"]),
)
labels = st.dictionaries(texts, texts, max_size=80)
enums = st.integers(-(2**31), 2**31 - 1)


@FUZZ
@given(workflow=st.one_of(strings, st.just("echo")), input_json=json_texts, key=strings)
def test_start_run(plane: Plane, workflow: str, input_json: str, key: str) -> None:
    request = runs_pb2.StartRunRequest(
        workflow=workflow, input_json=input_json, idempotency_key=key
    )
    answer(lambda: plane.stub.StartRun(request, metadata=AUTH, timeout=RPC_TIMEOUT))


@FUZZ
@given(workflow=st.just("echo"), labels=labels, input_json=json_texts)
def test_run_workflow(plane: Plane, workflow: str, labels: dict[str, str], input_json: str) -> None:
    request = runs_pb2.RunWorkflowRequest(workflow=workflow, input_json=input_json, labels=labels)
    answer(lambda: plane.stub.RunWorkflow(request, metadata=AUTH, timeout=RPC_TIMEOUT))


@FUZZ
@given(raw=st.binary(max_size=200), utf8=st.binary(max_size=50))
def test_invalid_utf8_and_garbage_bytes(plane: Plane, raw: bytes, utf8: bytes) -> None:
    """Requests whose bytes are not a valid message, e.g. input_json that is not UTF-8."""
    not_utf8 = b"\xff\xfe" + utf8
    crafted = b"\x0a\x04echo" + b"\x12" + bytes([len(not_utf8)]) + not_utf8
    for method in ("StartRun", "GetRun", "ListRuns", "CancelRun", "GetRunTrace"):
        call = plane.channel.unary_unary(
            f"/longline.v1.RunService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for payload in (raw, crafted):
            answer(lambda c=call, p=payload: c(p, metadata=AUTH, timeout=RPC_TIMEOUT))
    stream = plane.channel.unary_stream(
        "/longline.v1.RunService/StreamRun",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    answer(lambda: stream(raw, metadata=AUTH, timeout=RPC_TIMEOUT))


@FUZZ
@given(run_id=strings, reason=strings)
def test_get_cancel_and_trace(plane: Plane, run_id: str, reason: str) -> None:
    answer(
        lambda: plane.stub.GetRun(
            runs_pb2.GetRunRequest(run_id=run_id), metadata=AUTH, timeout=RPC_TIMEOUT
        )
    )
    answer(
        lambda: plane.stub.CancelRun(
            runs_pb2.CancelRunRequest(run_id=run_id, reason=reason),
            metadata=AUTH,
            timeout=RPC_TIMEOUT,
        )
    )
    answer(
        lambda: plane.stub.GetRunTrace(
            runs_pb2.GetRunTraceRequest(run_id=run_id), metadata=AUTH, timeout=RPC_TIMEOUT
        )
    )


@FUZZ
@given(
    workflow=strings,
    status=st.one_of(enums, st.sampled_from(list(runs_pb2.RunStatus.values()))),
    size=page_sizes,
    token=strings,
)
def test_list_runs_and_workflows(
    plane: Plane, workflow: str, status: int, size: int, token: str
) -> None:
    request = runs_pb2.ListRunsRequest(
        workflow=workflow,
        status=status,
        page_size=size,
        page_token=token,  # type: ignore[arg-type]
    )
    answer(lambda: plane.stub.ListRuns(request, metadata=AUTH, timeout=RPC_TIMEOUT))
    answer(
        lambda: plane.stub.ListWorkflows(
            runs_pb2.ListWorkflowsRequest(page_size=size, page_token=token),
            metadata=AUTH,
            timeout=RPC_TIMEOUT,
        )
    )


@FUZZ
@given(run=st.one_of(strings, st.just("finished")), after=event_ids)
@example(run="finished", after="18446744073709551615-18446744073709551615")  # the last id
@example(run="finished", after="99999999999999-0")  # past the end of a finished run
def test_stream_run(plane: Plane, run: str, after: str) -> None:
    run_id = plane.finished_run if run == "finished" else run
    request = runs_pb2.StreamRunRequest(run_id=run_id, after_event_id=after)
    answer(lambda: plane.stub.StreamRun(request, metadata=AUTH, timeout=RPC_TIMEOUT))


@FUZZ
@given(value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
def test_random_tokens_are_unauthenticated(plane: Plane, value: str) -> None:
    code = answer(
        lambda: plane.stub.GetRun(
            runs_pb2.GetRunRequest(run_id=plane.finished_run),
            metadata=(("authorization", value),),
            timeout=RPC_TIMEOUT,
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_the_plane_survived_and_the_run_from_before_completed(plane: Plane) -> None:
    assert plane.control_plane.popen.poll() is None, plane.control_plane.output()
    assert all(w.popen.poll() is None for w in plane.workers)

    async def outcome() -> Any:
        async with longline.Client(plane.target, token=secret("alice")) as client:
            return await asyncio.wait_for(client.get_run(plane.long_run).result(), 60)

    assert asyncio.run(outcome()) == {"steps": 5}
    log = plane.control_plane.output()
    assert "internal error" not in log, log[-4000:]
