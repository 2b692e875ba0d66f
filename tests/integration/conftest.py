"""An in-process stack: a real control plane on port 0 and a real worker, on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

import longline
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import runs_pb2_grpc
from tests.conftest import FLOWS


@dataclass
class Stack:
    cp: ControlPlane
    worker: Worker
    target: str
    client: longline.Client
    stub: runs_pb2_grpc.RunServiceStub


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    cp = ControlPlane(
        ControlPlaneSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            listen="127.0.0.1:0",
            max_input_bytes=64 * 1024,
        )
    )
    await cp.start()
    target = f"127.0.0.1:{cp.port}"
    worker = Worker(
        WorkerSettings(
            insecure_no_auth=True,
            redis_url=redis_url,
            control_plane=target,
            slots=4,
            drain_timeout=1,
        ),
        load_workflows(str(FLOWS)),
    )
    worker_task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.connected.wait(), 10)
    channel = grpc.aio.insecure_channel(target)
    async with longline.Client(target) as client:
        yield Stack(cp, worker, target, client, runs_pb2_grpc.RunServiceStub(channel))
    await channel.close()
    worker.request_stop()
    await worker_task
    await cp.shutdown()
