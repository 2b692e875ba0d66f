"""A client that knows nothing but the server's address: descriptors from reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.procs import Proc, start_control_plane, start_worker


def _reflect_and_call(target: str) -> tuple[list[str], dict[str, Any], str]:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = DescriptorPool(database)  # no proto files, no generated stubs
        method = pool.FindServiceByName("longline.v1.RunService").FindMethodByName("StartRun")
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/longline.v1.RunService/StartRun",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        request = json_format.ParseDict(
            {"workflow": "echo", "inputJson": '{"via": "reflection"}'}, request_type()
        )
        response = call(request, timeout=10)
        as_dict = json_format.MessageToDict(response)
        return services, as_dict, type(response).DESCRIPTOR.full_name


async def test_list_services_and_start_a_run_by_reflection_alone(
    redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(await start_worker(redis_url, target))
    services, response, type_name = await asyncio.to_thread(_reflect_and_call, target)
    assert {"longline.v1.RunService", "longline.v1.WorkerService", "grpc.health.v1.Health"} <= set(
        services
    )
    assert type_name == "longline.v1.StartRunResponse"
    assert response["created"] is True
    assert response["run"]["workflow"] == "echo"
    # a worker may take it between StartRun's write and its answer
    assert response["run"]["status"] in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING")
