"""A client made from the generated stubs alone resumes a stream with no gap or duplicate."""

from __future__ import annotations

import grpc
import pytest

from longline.testing import Faults, OfflineModel
from longline.v1 import runs_pb2, runs_pb2_grpc
from tests.procs import Proc, start_control_plane, start_worker

TERMINAL = {
    runs_pb2.EVENT_TYPE_RUN_SUCCEEDED,
    runs_pb2.EVENT_TYPE_RUN_FAILED,
    runs_pb2.EVENT_TYPE_RUN_CANCELLED,
}


async def test_stub_client_drops_the_stream_and_resumes_exactly(
    redis_url: str, procs: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = await OfflineModel(faults=Faults(token_delay=0.002)).start()
    monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)  # inherited by the worker
    monkeypatch.setenv("OPENAI_API_KEY", "offline")
    try:
        await _drop_and_resume(redis_url, procs)
    finally:
        await model.aclose()


async def _drop_and_resume(redis_url: str, procs: list[Proc]) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(
        await start_worker(redis_url, target, module="longline.examples", workflow="blog_post")
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)
        started = await stub.StartRun(
            runs_pb2.StartRunRequest(
                workflow="blog_post", input_json='{"topic": "tides", "sections": 2}'
            )
        )
        run_id = started.run.run_id

        seen: list[runs_pb2.RunEvent] = []
        call = stub.StreamRun(runs_pb2.StreamRunRequest(run_id=run_id))
        async for response in call:
            seen.append(response.event)
            if len(seen) == 3:
                break
        call.cancel()  # drop the call after the third event

        resumed = stub.StreamRun(
            runs_pb2.StreamRunRequest(run_id=run_id, after_event_id=seen[-1].event_id)
        )
        async for response in resumed:
            seen.append(response.event)
        assert seen[-1].type == runs_pb2.EVENT_TYPE_RUN_SUCCEEDED
        assert sum(e.type in TERMINAL for e in seen) == 1

        replay = [r.event async for r in stub.StreamRun(runs_pb2.StreamRunRequest(run_id=run_id))]
        assert [e.event_id for e in seen] == [e.event_id for e in replay]
        assert len({e.event_id for e in seen}) == len(seen)
        outputs = [e for e in replay if e.type == runs_pb2.EVENT_TYPE_OUTPUT]
        assert len(outputs) > 20  # the introduction was streamed token by token

        final = await stub.GetRun(runs_pb2.GetRunRequest(run_id=run_id))
        assert final.run.status == runs_pb2.RUN_STATUS_SUCCEEDED
        assert final.run.last_event_id == replay[-1].event_id
