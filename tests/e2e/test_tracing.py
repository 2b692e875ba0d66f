"""One trace across processes, exported over OTLP to a receiver the test runs itself."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import longline
from longline.testing import OfflineModel
from tests.conftest import ROOT, eventually
from tests.procs import Proc, start_control_plane, start_worker

SECRET = "s3cr3t-token-value-42"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.raw: list[bytes] = []

    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.raw.append(request.SerializeToString())
        for resource in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    await server.stop(0)


CLIENT = """
import asyncio, sys
import longline
from longline import _telemetry

async def main():
    async with longline.Client(sys.argv[1]) as client:
        handle = await client.start("traced", {"topic": "tides", "token": sys.argv[2]})
        print(handle.run_id)
        await handle.result()

shutdown = _telemetry.setup("test-client")
asyncio.run(main())
shutdown()
"""


async def test_one_trace_from_the_client_call_to_every_component(
    redis_url: str,
    procs: list[Proc],
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans, endpoint = receiver
    for name, value in {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }.items():
        monkeypatch.setenv(name, value)  # inherited by every process the test starts
    async with OfflineModel() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "offline")
        cp, target = await start_control_plane(redis_url)
        procs.append(cp)
        procs.append(await start_worker(redis_url, target, workflow="traced"))
        # Not subprocess.run: the receiver and the model serve from this event loop.
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            target,
            SECRET,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        out, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, err.decode()
        run_id = out.decode().strip()

        def by_name(name: str) -> list[dict[str, Any]]:
            return [s for s in spans.spans if s["name"] == name]

        async def all_arrived() -> bool:
            wanted = [
                "StartRun traced",
                "run traced",
                "attempt 1: traced",
                "prepare",
                "llm.chat",
                "polish",
            ]
            return all(by_name(n) for n in wanted)

        await eventually(all_arrived, what="every span at the OTLP receiver")
        client_span = by_name("StartRun traced")[0]
        run_span = by_name("run traced")[0]
        attempt = by_name("attempt 1: traced")[0]
        steps = [by_name(n)[0] for n in ("prepare", "llm.chat", "polish")]
        assert client_span["service"] == "test-client"
        assert run_span["service"] == "longline-control-plane"
        assert attempt["service"] == "longline-worker"
        everyone = [client_span, run_span, attempt, *steps]
        assert len({s["trace_id"] for s in everyone}) == 1, "not one trace"

        parents = {s["span_id"]: s["parent"] for s in spans.spans}

        def ancestors(span: dict[str, Any]) -> list[str]:
            out, at = [], span["parent"]
            while at:
                out.append(at)
                at = parents.get(at, "")
            return out

        assert client_span["span_id"] in ancestors(run_span)
        for span in (attempt, *steps):
            assert run_span["span_id"] in ancestors(span)
            assert client_span["span_id"] in ancestors(span)
        for step in steps:
            assert step["parent"] == attempt["span_id"]
        llm_attrs = steps[1]["attributes"]
        assert llm_attrs["gen_ai.usage.input_tokens"] > 0
        assert llm_attrs["gen_ai.usage.output_tokens"] > 0
        assert llm_attrs["gen_ai.request.model"] and llm_attrs["gen_ai.provider.name"]

        # The secret-marked argument left the worker in no span and no event.
        assert not any(SECRET.encode() in raw for raw in spans.raw)
        assert steps[0]["attributes"]["longline.input"].count("[secret]") == 1
        async with longline.Client(target) as sdk:
            events = [e async for e in sdk.get_run(run_id).events()]
        assert events and not any(SECRET in json.dumps([e.message, e.data_json]) for e in events)
        # and the events carry the same span ids as the exported spans
        started = {e.component: e for e in events if e.type is longline.EventType.COMPONENT_STARTED}
        assert started["polish"].span_id == steps[2]["span_id"]
        assert started["polish"].parent_span_id == attempt["span_id"]
