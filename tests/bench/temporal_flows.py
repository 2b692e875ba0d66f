"""Temporal's side of B1, B2 and B4 (tests/bench/engines.py), in a module of its own: the
workflow sandbox imports it again for each workflow, so it holds nothing but the workflows
and their activities. Runs in the peers' virtualenv (.venv/peers) only."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy


# -- B1: one durable no-op step per run ----------------------------------------
@activity.defn
async def noop_step() -> None:
    return None


@workflow.defn
class OneStep:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(noop_step, start_to_close_timeout=timedelta(seconds=30))


# -- B2: a workflow with nothing to do -----------------------------------------
@workflow.defn
class Trivial:
    @workflow.run
    async def run(self) -> None:
        return None


# -- B4: five steps of `delay` seconds, each logged as it starts ----------------
@dataclass
class StepInput:
    log: str  # each attempt of a step appends "workflow_id step attempt time pid"
    step: int
    delay: float


@dataclass
class FiveStepsInput:
    log: str
    delay: float
    # Without a heartbeat timeout, only start_to_close ends an attempt whose worker died.
    start_to_close: float
    heartbeat: float  # 0: none


@activity.defn
async def slow_step(step: StepInput) -> int:
    info = activity.info()
    with open(step.log, "a") as f:
        f.write(f"{info.workflow_id} {step.step} {info.attempt} {time.time()} {os.getpid()}\n")
    deadline = time.monotonic() + step.delay
    while (left := deadline - time.monotonic()) > 0:
        activity.heartbeat()  # sent at most every 0.8 x heartbeat timeout (throttled)
        await asyncio.sleep(min(0.25, left))
    return step.step


@workflow.defn
class FiveSteps:
    @workflow.run
    async def run(self, args: FiveStepsInput) -> int:
        for n in range(1, 6):
            await workflow.execute_activity(
                slow_step,
                StepInput(args.log, n, args.delay),
                start_to_close_timeout=timedelta(seconds=args.start_to_close),
                heartbeat_timeout=timedelta(seconds=args.heartbeat) if args.heartbeat else None,
                retry_policy=RetryPolicy(),  # the default: 1 s first backoff, doubling
            )
        return 5
