"""Workflows the tests run (served by in-process and subprocess workers alike)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis

import longline


def _redis() -> aioredis.Redis:
    return aioredis.Redis.from_url(os.environ["LONGLINE_TEST_REDIS"], decode_responses=True)


@longline.workflow(description="Returns its input.")
async def echo(ctx: longline.Context, input: Any) -> Any:
    await ctx.status("echoing")
    return input


@longline.component
async def count_step(run_id: str, step: int) -> int:
    """A side effect per execution, so a test can tell whether a step ran twice."""
    r = _redis()
    try:
        async with r.pipeline(transaction=False) as pipe:
            pipe.hincrby(f"test:steps:{run_id}", str(step), 1)
            pipe.hincrby("test:by_pid", str(os.getpid()), 1)
            await pipe.execute()
    finally:
        await r.aclose()
    return step


@longline.workflow(description="Three counted steps (input {'delay': s}: a pause before each).")
async def counted(ctx: longline.Context, input: Any) -> Any:
    delay = float(input.get("delay", 0)) if isinstance(input, dict) else 0.0
    for step in range(3):
        await asyncio.sleep(delay)
        await ctx.status(f"step {step}")
        await count_step(ctx.run_id, step)
    return {"steps": 3}


@longline.component
async def tick(n: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return n


@longline.workflow(description="Emits a status every `delay` seconds, `steps` times.")
async def slow(ctx: longline.Context, input: Any) -> Any:
    steps = int(input.get("steps", 100))
    delay = float(input.get("delay", 0.05))
    for n in range(steps):
        await ctx.status(f"tick {n}")
        await tick(n, delay)
    return {"ticks": steps}


@longline.component
async def explode(message: str) -> None:
    raise ValueError(message)


@longline.workflow(description="Fails inside a component.")
async def boom(ctx: longline.Context, input: Any) -> Any:
    await ctx.status("about to fail")
    await explode("the widget broke")
    return None


@longline.workflow(description="Streams `chunks` output chunks.")
async def chatty(ctx: longline.Context, input: Any) -> Any:
    n = int(input.get("chunks", 10))
    delay = float(input.get("delay", 0.0))
    for i in range(n):
        await ctx.output(f"chunk {i}\n")
        if delay:
            await asyncio.sleep(delay)
    return {"chunks": n}


@longline.component
async def chaos_step(run_id: str, n: int, delay: float) -> int:
    """Counts each execution (before its work), then works for `delay` seconds."""
    r = _redis()
    try:
        await r.hincrby(f"test:steps:{run_id}", str(n), 1)
    finally:
        await r.aclose()
    await asyncio.sleep(delay)
    return n


@longline.workflow(description="Five counted steps of `delay` seconds each.")
async def five_steps(ctx: longline.Context, input: Any) -> Any:
    delay = float(input.get("delay", 0.3))
    for n in range(1, 6):
        await ctx.status(f"step {n}")
        await chaos_step(ctx.run_id, n, delay)
    return {"steps": 5}


@longline.component
async def crash_process() -> None:
    """Takes the whole worker process down, as a segfault or OOM kill would."""
    os._exit(17)


@longline.workflow(description="Kills its worker on every attempt.", max_attempts=2)
async def crasher(ctx: longline.Context, input: Any) -> Any:
    await ctx.status("about to take the worker down")
    await crash_process()
    return None


# -- model calls, through longline.llm and the offline model ----------------------------------

from longline import llm  # noqa: E402
from longline.examples import blog_post, learn_page, onboard_site  # noqa: E402,F401  (served too)

cached_chat = llm.chat.with_cache(ttl=600)
limited_chat = llm.chat.with_limits(longline.RateLimit("offline-test", requests_per_minute=60))


@longline.workflow(description="One model call; input: prompt, stream, cached.")
async def ask(ctx: longline.Context, input: Any) -> Any:
    return await llm.complete(
        input["prompt"],
        stream=bool(input.get("stream")),
        using=cached_chat if input.get("cached") else None,
    )


@longline.workflow(description="`calls` model calls at once, under a shared 60/min limit.")
async def ask_many(ctx: longline.Context, input: Any) -> Any:
    prompts = [f'Say something about "{input["tag"]} {i}"' for i in range(int(input["calls"]))]
    answers = await asyncio.gather(*(llm.complete(p, using=limited_chat) for p in prompts))
    return len(answers)


@longline.component(secret=("token",))
async def prepare(topic: str, token: str) -> str:
    """Uses a credential that must never leave the process."""
    assert token
    return f'Write one line about "{topic}".'


@longline.component
async def polish(text: str) -> str:
    return text.strip().upper()


@longline.workflow(description="Three components, one of them an LLM call.")
async def traced(ctx: longline.Context, input: Any) -> Any:
    prompt = await prepare(input["topic"], token=input["token"])
    text = await llm.complete(prompt)
    return await polish(text)


@longline.component
async def gate(run_id: str, n: int) -> int:
    """Counts each execution, then waits until the test opens the gate (sets test:gate)."""
    r = _redis()
    try:
        await r.hincrby(f"test:steps:{run_id}", str(n), 1)
        while not await r.exists("test:gate"):  # noqa: ASYNC110 (set by another process)
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    return n


@longline.workflow(description="A counted step, a step that waits for test:gate, a counted step.")
async def gated(ctx: longline.Context, input: Any) -> Any:
    await chaos_step(ctx.run_id, 1, 0.0)
    await gate(ctx.run_id, 2)
    await chaos_step(ctx.run_id, 3, 0.0)
    return {"steps": 3}


@longline.workflow(description="`n` statuses and, every tenth, an output line, as fast as it can.")
async def many_events(ctx: longline.Context, input: Any) -> Any:
    n = int(input.get("n", 10_000))
    for i in range(n):
        await ctx.status(f"event {i}")
        if i % 10 == 0:
            await ctx.output(f"line {i}\n")
    return {"events": n}


@longline.workflow(description="Bursts of output chunks between statuses, as fast as it can.")
async def bursts(ctx: longline.Context, input: Any) -> Any:
    for burst in range(int(input.get("bursts", 5))):
        for i in range(int(input.get("chunks", 500))):
            await ctx.output(f"{burst}:{i};")
        await ctx.status(f"burst {burst} done")
    return "ok"


@longline.component
async def ticking_step(run_id: str, n: int, ticks: int) -> int:
    """Records where and when it works (pid and time per tick), straight to Redis."""
    import time

    r = _redis()
    try:
        for _ in range(ticks):
            await r.rpush(f"test:ticks:{run_id}", f"{os.getpid()} {n} {time.time():.3f}")
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()
    return n


@longline.workflow(description="`steps` steps of `ticks` ticks of 0.1 s, each tick recorded.")
async def ticking(ctx: longline.Context, input: Any) -> Any:
    steps = int(input.get("steps", 5))
    for n in range(steps):
        await ticking_step(ctx.run_id, n, int(input.get("ticks", 10)))
    return {"steps": steps}


@longline.workflow(description="Tries to end its own run with a forged terminal event.")
async def forger(ctx: longline.Context, input: Any) -> Any:
    refused = []
    for kind in ("RUN_SUCCEEDED", "RUN_CANCELLED", "RUN_STARTED", "NOT_A_TYPE"):
        try:
            await ctx.emit(kind, message="forged")
        except ValueError as exc:
            refused.append(f"{kind}: {exc}")
    await ctx.status("still running")
    return refused


@longline.workflow(description="A counted step, a durable sleep of `seconds`, a counted step.")
async def sleeper(ctx: longline.Context, input: Any) -> Any:
    await count_step(ctx.run_id, 0)
    await ctx.progress(1, 2)
    await ctx.sleep(float(input.get("seconds", 3)))
    await count_step(ctx.run_id, 1)
    await ctx.progress(2, 2)
    return {"slept": input.get("seconds", 3), "attempt": ctx.attempt}


APPROVAL_SCHEMA = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
    "required": ["approved"],
    "additionalProperties": False,
}


@longline.workflow(
    description="A counted step, a wait for input 'approval' (input: timeout, gate), a counted "
    "step."
)
async def approval(ctx: longline.Context, input: Any) -> Any:
    timeout = input.get("timeout") if isinstance(input, dict) else None
    await count_step(ctx.run_id, 0)
    if isinstance(input, dict) and input.get("gate"):
        await gate(ctx.run_id, 5)  # holds the run RUNNING until the test sets test:gate
    try:
        answer = await ctx.wait_for_input(
            "approval", schema=APPROVAL_SCHEMA, prompt="Approve the plan?", timeout=timeout
        )
    except longline.InputTimeout as exc:
        return {"timed_out": exc.name}
    await count_step(ctx.run_id, 1)
    return {"answer": answer}


@longline.workflow(description="A wait for input 'go' beside a counted step of `delay` s.")
async def beside(ctx: longline.Context, input: Any) -> Any:
    delay = float(input.get("delay", 1.0)) if isinstance(input, dict) else 1.0
    if isinstance(input, dict) and input.get("task_group"):
        async with asyncio.TaskGroup() as tasks:
            step = tasks.create_task(chaos_step(ctx.run_id, 7, delay))
            answer = tasks.create_task(ctx.wait_for_input("go"))
        return {"step": step.result(), "answer": answer.result()}
    done, answer = await asyncio.gather(chaos_step(ctx.run_id, 7, delay), ctx.wait_for_input("go"))
    return {"step": done, "answer": answer}


@longline.component
async def approve(team: str) -> Any:
    """A component that waits for its team's input."""
    return await longline.current().wait_for_input(team, prompt=f"{team}: approve?")


@longline.workflow(description="Two components side by side, each waiting for an input.")
async def two_approvals(ctx: longline.Context, input: Any) -> Any:
    legal, finance = await asyncio.gather(approve("legal"), approve("finance"))
    return {"legal": legal, "finance": finance}


@longline.workflow(description="Two short sleeps side by side.")
async def two_sleeps(ctx: longline.Context, input: Any) -> Any:
    await asyncio.gather(ctx.sleep(0.3), ctx.sleep(0.4))
    return {"attempt": ctx.attempt}


@longline.workflow(description="A child: a counted step (input: i, delay, fail), then 2*i.")
async def child_item(ctx: longline.Context, input: Any) -> Any:
    await chaos_step(ctx.run_id, 0, float(input.get("delay", 0)))
    if input.get("fail"):
        raise ValueError(f"item {input['i']} failed on purpose")
    return {"i": input["i"], "double": 2 * input["i"]}


@longline.workflow(description="Runs child_item as a child run (input: its input).")
async def parent_of_one(ctx: longline.Context, input: Any) -> Any:
    await count_step(ctx.run_id, 0)
    try:
        result = await ctx.run_child(child_item, input)
    except longline.ChildFailed as exc:
        return {"failed": exc.run_id, "status": exc.status, "error": exc.error_message}
    await count_step(ctx.run_id, 1)
    return {"child": result, "attempt": ctx.attempt}


@longline.workflow(
    description="ctx.map over child_item (input: n, concurrency, delay, fail: items, collect, "
    "hold: a step beside it that waits for test:gate)."
)
async def fan_out(ctx: longline.Context, input: Any) -> Any:
    n = int(input.get("n", 10))
    fail = set(input.get("fail", []))
    items = [{"i": i, "delay": input.get("delay", 0), "fail": i in fail} for i in range(n)]
    mapped = ctx.map(
        child_item,
        items,
        concurrency=int(input.get("concurrency", 4)),
        failures="collect" if input.get("collect") else "fail_fast",
    )
    if input.get("hold"):
        # A step beside the map holds the run RUNNING (it cannot park) until test:gate.
        results, _ = await asyncio.gather(mapped, gate(ctx.run_id, 99))
    else:
        results = await mapped
    return [
        {"error": str(r), "child": r.run_id} if isinstance(r, longline.ChildFailed) else r
        for r in results
    ]


@longline.component
async def item_step(item: dict[str, Any]) -> int:
    """One counted item of map_steps: counted before its work of `delay` s."""
    return await chaos_step.fn(item["run"], item["i"], item["delay"])


@longline.workflow(description="ctx.map over a counted component (input: n, concurrency, delay).")
async def map_steps(ctx: longline.Context, input: Any) -> Any:
    delay = float(input.get("delay", 0))
    items = [{"run": ctx.run_id, "i": i, "delay": delay} for i in range(int(input.get("n", 8)))]
    return await ctx.map(item_step, items, concurrency=int(input.get("concurrency", 3)))


@longline.workflow(description="Starts two children of `delay` s, one detached, and ends.")
async def starter(ctx: longline.Context, input: Any) -> Any:
    delay = float(input.get("delay", 5))
    kept = await ctx.start_child(child_item, {"i": 1, "delay": delay})
    loose = await ctx.start_child(child_item, {"i": 2, "delay": delay}, detach=True)
    return {"kept": kept.run_id, "detached": loose.run_id}


@longline.workflow(description="Runs a child of a workflow nobody serves, or of bad input.")
async def bad_child(ctx: longline.Context, input: Any) -> Any:
    if input.get("what") == "unknown":
        return await ctx.run_child("no_such_workflow", {})
    return await ctx.run_child(child_item, {"i": float("nan")})


@longline.workflow(description="Returns the run's labels (ctx.labels).")
async def labelled(ctx: longline.Context, input: Any) -> Any:
    return ctx.labels
