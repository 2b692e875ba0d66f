"""An in-process stack: a real control plane on port 0 and a real worker, on real Redis
(the dev stack of `longline dev`, with the test's Redis and no offline model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

import longline
from longline._devstack import DevStack
from longline.compute_plane import Worker
from longline.control_plane import ControlPlane
from longline.v1 import runs_pb2_grpc
from tests.conftest import FLOWS


@dataclass
class Stack:
    cp: ControlPlane
    worker: Worker
    target: str
    client: longline.Client
    stub: runs_pb2_grpc.RunServiceStub
    http: str  # the HTTP face, http://HOST:PORT


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    """What `longline dev` runs, on the test's Redis, serving tests/flows.py."""
    async with DevStack(
        str(FLOWS),
        redis_url=redis_url,
        offline_model=False,
        control_plane={
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "max_input_bytes": 64 * 1024,
        },
        worker={"slots": 4, "drain_timeout": 1},
        connect_timeout=10,
    ) as dev:
        assert isinstance(dev.control_plane, ControlPlane) and isinstance(dev.worker, Worker)
        channel = grpc.aio.insecure_channel(dev.target)
        async with longline.Client(dev.target) as client:
            yield Stack(
                dev.control_plane,
                dev.worker,
                dev.target,
                client,
                runs_pb2_grpc.RunServiceStub(channel),
                dev.http_url,
            )
        await channel.close()
