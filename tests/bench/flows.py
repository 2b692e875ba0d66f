"""Workflows the benchmarks run (served by the bench's worker subprocesses)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import longline
from tests.flows import five_steps  # noqa: F401  (B4 recovery: counted steps)


@longline.workflow(description="Does nothing: the engine's own cost per run.")
async def noop(ctx: longline.Context, input: Any) -> Any:
    return None


@longline.workflow(description="One status carrying the worker's clock, for delivery latency.")
async def stamp(ctx: longline.Context, input: Any) -> Any:
    await ctx.status(repr(time.time()))
    return None


@longline.workflow(description="Waits `seconds` (a stand-in for a slow model call).")
async def wait(ctx: longline.Context, input: Any) -> Any:
    await asyncio.sleep(float(input["seconds"]))
    return None


@longline.workflow(description="A status with the worker's clock every second, `ticks` times.")
async def ticker(ctx: longline.Context, input: Any) -> Any:
    for _ in range(int(input["ticks"])):
        await ctx.status(repr(time.time()))
        await asyncio.sleep(1.0)
    return None


@longline.workflow(description="Streams `chunks` output chunks as fast as it can.")
async def firehose(ctx: longline.Context, input: Any) -> Any:
    for i in range(int(input["chunks"])):
        await ctx.output(f"{i:08d}\n")
    return None


@longline.workflow(description="Sleeps durably until Unix time input['at'] (parks the run).")
async def nap(ctx: longline.Context, input: Any) -> Any:
    await ctx.sleep_until(datetime.fromtimestamp(float(input["at"]), UTC))
    return None


@longline.component
async def noop_step() -> None:
    """A checkpointed step that does nothing."""
    return None


@longline.workflow(
    description="One durable no-op step: B1 beside Temporal's activity and DBOS's step."
)
async def one_step(ctx: longline.Context, input: Any) -> Any:
    await noop_step()
    return None
