"""DBOS's side of B1, B2 and B4 (tests/bench/engines.py): the workflows and their steps.
Runs in the peers' virtualenv (.venv/peers) only; importing it registers them with DBOS."""

from __future__ import annotations

import asyncio
import os
import time

from dbos import DBOS


# -- B1: one durable no-op step per run ----------------------------------------
@DBOS.step()
async def noop_step() -> None:
    return None


@DBOS.workflow()
async def one_step() -> None:
    await noop_step()


# -- B2: a workflow with nothing to do -----------------------------------------
@DBOS.workflow()
async def trivial() -> None:
    return None


# -- B4: five steps of `delay` seconds, each logged as it starts ----------------
@DBOS.step()
async def slow_step(log: str, step: int, delay: float) -> int:
    with open(log, "a") as f:
        f.write(f"{DBOS.workflow_id} {step} 0 {time.time()} {os.getpid()}\n")
    await asyncio.sleep(delay)
    return step


@DBOS.workflow()
async def five_steps(log: str, delay: float) -> int:
    for n in range(1, 6):
        await slow_step(log, n, delay)
    return 5
