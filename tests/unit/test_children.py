"""Child runs and ctx.map in a process of their own (longline.testing.run_local)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import longline
from longline.testing import run_local


@longline.workflow
async def double(ctx: longline.Context, input: Any) -> Any:
    if input < 0:
        raise ValueError(f"{input} is negative")
    return 2 * input


@longline.workflow
async def parent(ctx: longline.Context, input: Any) -> Any:
    one = await ctx.run_child(double, 21)
    many = await ctx.map(double, [1, 2, 3], concurrency=2, progress=True)
    try:
        await ctx.run_child("double", -1, key="negative")
    except longline.ChildFailed as exc:
        failed = [exc.status, exc.error_type, exc.error_message]
    return {"one": one, "many": many, "failed": failed}


async def test_children_run_in_process_with_run_local() -> None:
    run = await run_local(parent, None, workflows=[double])
    assert run.error is None, run.error
    assert run.result == {
        "one": 42,
        "many": [2, 4, 6],
        "failed": ["FAILED", "ValueError", "-1 is negative"],
    }
    assert len(run.children) == 5
    types = [e.type for e in run.events]
    assert types.count("CHILD_STARTED") == types.count("CHILD_ENDED") == 5
    progress = [e.data for e in run.events if e.type == "PROGRESS"]
    assert progress[-1] == {"done": 3.0, "total": 3.0}
    # A replay from the checkpoints starts no child again.
    again = await run_local(parent, None, workflows=[double], checkpoints=run.checkpoints)
    assert again.result == run.result and again.children == {}


@longline.component
async def slow_square(n: int) -> int:
    await asyncio.sleep(0.01)
    if n == 3:
        raise ValueError("three")
    return n * n


@longline.workflow
async def squares(ctx: longline.Context, input: Any) -> Any:
    collected = await ctx.map(slow_square, range(5), concurrency=2, failures="collect")
    shown = [repr(r) if isinstance(r, Exception) else r for r in collected]
    try:
        await ctx.map(slow_square, range(5), concurrency=2)
    except ValueError as exc:
        return {"collected": shown, "fast": str(exc)}
    return None


async def test_map_over_a_component_keys_each_item_and_handles_failures() -> None:
    run = await run_local(squares)
    assert run.error is None, run.error
    assert run.result == {
        "collected": [0, 1, 4, "ValueError('three')", 16],
        "fast": "three",
    }
    # Each item is a step of its own, keyed by the map and the item's place.
    assert {"slow_square:@map#1.0", "slow_square:@map#1.4"} <= set(run.checkpoints)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ctx: ctx.map(double, [1], concurrency=0), "concurrency must be an int"),
        (lambda ctx: ctx.map(double, [1], failures="ignore"), "failures must be one of"),
        (lambda ctx: ctx.map(42, [1]), "ctx.map takes a workflow or a component"),
        (lambda ctx: ctx.run_child(print, 1), "a child run takes a @longline.workflow"),
        (lambda ctx: ctx.run_child(double, {1, 2}), "is not JSON"),
        (lambda ctx: ctx.run_child("missing", 1), "child workflow 'missing' is not known"),
        (lambda ctx: ctx.run_child(double, 1, key="a/b"), "without '/'"),
        (lambda ctx: ctx.map(double, range(10_001)), "at most 10000 items"),
    ],
)
async def test_bad_calls_say_what_is_wrong(call: Any, message: str) -> None:
    @longline.workflow(name="calls_badly")
    async def flow(ctx: longline.Context, input: Any) -> Any:
        return await call(ctx)

    run = await run_local(flow, workflows=[double])
    assert run.error is not None and message in str(run.error)


@longline.workflow
async def reports(ctx: longline.Context, input: Any) -> Any:
    return await ctx.map(slow_square, [1, 2, 4], concurrency=2, progress=True)


async def test_a_map_whose_progress_cannot_be_written_fails_rather_than_returning_holes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost lease surfaces in ctx.progress's write: the map must raise it, not return the
    items that finished with None for the rest."""
    from longline._errors import LeaseLost

    calls = 0

    async def progress(self: longline.Context, done: float, total: float | None = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise LeaseLost("local", 1)

    monkeypatch.setattr(longline.Context, "progress", progress)
    run = await run_local(reports)
    assert isinstance(run.error, LeaseLost), run.result


@longline.workflow
async def reads_labels(ctx: longline.Context, input: Any) -> Any:
    return ctx.labels


async def test_run_local_gives_the_workflow_its_labels() -> None:
    run = await run_local(reads_labels, labels={"longline.tick": "2026-12-02T08:00:00.000+00:00"})
    assert run.result == {"longline.tick": "2026-12-02T08:00:00.000+00:00"}
