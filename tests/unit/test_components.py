"""Components and workflows run in process with longline.testing: no server needed."""

from __future__ import annotations

import asyncio
import json

import pytest

import longline
from longline.testing import run_local


async def test_component_outside_a_workflow_is_an_ordinary_function() -> None:
    @longline.component
    async def add(a: int, b: int) -> int:
        return a + b

    assert await add(2, 3) == 5


async def test_component_events_nest_and_name_steps() -> None:
    @longline.component
    async def inner(x: int) -> int:
        return x * 2

    @longline.component
    async def outer(x: int) -> int:
        return await inner(x) + await inner(x)

    @longline.workflow
    async def flow(ctx: longline.Context, input: int) -> int:
        return await outer(input)

    run = await run_local(flow, 3)
    assert run.result == 12
    started = [e for e in run.events if e.type == "COMPONENT_STARTED"]
    assert [e.component for e in started] == ["outer", "inner", "inner"]
    assert started[1].parent_span_id == started[0].span_id == started[2].parent_span_id
    steps = [json.loads(e.data_json)["step"] for e in started]
    assert steps == ["outer#1", "outer#1/inner#1", "outer#1/inner#2"]


async def test_retry_retries_until_success_and_records_tries() -> None:
    calls = 0

    @longline.component(retry=longline.Retry(max_attempts=4, initial=0, maximum=0))
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return "ok"

    @longline.workflow
    async def flow(ctx: longline.Context, input: None) -> str:
        return await flaky()

    run = await run_local(flow)
    assert run.result == "ok" and calls == 3
    finished = [e for e in run.events if e.type == "COMPONENT_FINISHED"]
    data = json.loads(finished[0].data_json)
    assert data["tries"] == 3
    assert [r["error"] for r in data["retries"]] == ["ConnectionError: try again"] * 2


async def test_non_retryable_is_not_retried_and_names_the_component() -> None:
    calls = 0

    @longline.component(retry=longline.Retry(max_attempts=5, initial=0))
    async def picky() -> None:
        nonlocal calls
        calls += 1
        raise longline.NonRetryable("bad request")

    @longline.workflow
    async def flow(ctx: longline.Context, input: None) -> None:
        await picky()

    run = await run_local(flow)
    assert calls == 1
    assert isinstance(run.error, longline.NonRetryable)
    assert run.error_component == "picky"


async def test_timeout_fails_with_the_component_and_limit() -> None:
    @longline.component
    async def sleepy() -> None:
        await asyncio.sleep(10)

    with pytest.raises(
        longline.ComponentTimeout, match=r"'sleepy' did not finish within its 0.05 s"
    ):
        await sleepy.with_timeout(0.05)()


def test_fluent_configuration_returns_a_new_component() -> None:
    @longline.component
    async def step() -> None: ...

    retried = step.with_retry(max_attempts=8)
    assert step.retry is None and retried.retry is not None and retried.retry.max_attempts == 8
    assert retried.with_timeout(3).timeout == 3 and retried.timeout is None


async def test_cache_hit_skips_the_call_and_is_recorded_on_the_step() -> None:
    from longline.testing import MemoryServices

    calls = 0

    @longline.component(cache=longline.Cache(ttl=60))
    async def lookup(word: str) -> str:
        nonlocal calls
        calls += 1
        return word.upper()

    @longline.workflow
    async def flow(ctx: longline.Context, input: str) -> str:
        return await lookup(input)

    services = MemoryServices()
    first = await run_local(flow, "tide", services=services)
    second = await run_local(flow, "tide", services=services)
    other = await run_local(flow, "moon", services=services)
    assert (first.result, second.result, other.result) == ("TIDE", "TIDE", "MOON")
    assert calls == 2
    finished = [json.loads(e.data_json) for e in second.events if e.type == "COMPONENT_FINISHED"]
    assert finished[0]["cache"] == "hit"
    bumped = await run_local(
        longline.workflow(name="flow2")(_uses(lookup.with_cache(60, version="2"))),
        "tide",
        services=services,
    )
    assert bumped.result == "TIDE" and calls == 3  # a new version misses


def _uses(c: longline.Component[[str], str]):  # type: ignore[no-untyped-def]
    async def flow(ctx: longline.Context, input: str) -> str:
        return await c(input)

    return flow


async def test_plain_def_component_runs_in_a_thread() -> None:
    import threading

    @longline.component
    def blocking() -> str:
        return threading.current_thread().name

    assert await blocking() != threading.current_thread().name


async def test_current_outside_a_run_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside a running workflow"):
        longline.current()


def test_workflow_must_be_async() -> None:
    with pytest.raises(TypeError, match="must be an `async def"):
        longline.workflow(lambda ctx, input: None)  # type: ignore[arg-type]


async def test_a_later_attempt_replays_finished_steps_without_running_them() -> None:
    calls: list[str] = []

    @longline.component
    async def step(name: str) -> dict[str, str]:
        calls.append(name)
        return {"done": name}

    @longline.component
    async def fragile(fail: bool) -> str:
        calls.append("fragile")
        if fail:
            raise ConnectionError("worker died here")
        return "ok"

    @longline.workflow
    async def flow(ctx: longline.Context, input: dict[str, bool]) -> list[object]:
        return [await step("a"), await step("b"), await fragile(input["fail"])]

    first = await run_local(flow, {"fail": True})
    assert isinstance(first.error, ConnectionError)
    assert set(first.checkpoints) == {"step#1", "step#2"}
    calls.clear()
    second = await run_local(flow, {"fail": False}, checkpoints=first.checkpoints)
    assert second.result == [{"done": "a"}, {"done": "b"}, "ok"]
    assert calls == ["fragile"]  # the finished steps did not run again
    assert second.replayed == ["step#1", "step#2"]
    started = [e.component for e in second.events if e.type == "COMPONENT_STARTED"]
    assert started == ["fragile"]  # and wrote no events again


async def test_replaying_a_parent_step_keeps_the_numbering_of_later_steps() -> None:
    @longline.component
    async def inner(x: int) -> int:
        return x

    @longline.component
    async def outer() -> int:
        return await inner(1) + await inner(2)

    @longline.workflow
    async def flow(ctx: longline.Context, input: None) -> list[int]:
        return [await outer(), await inner(10)]

    first = await run_local(flow)
    only_outer = {k: v for k, v in first.checkpoints.items() if k == "outer#1"}
    second = await run_local(flow, checkpoints=only_outer)
    assert second.result == [3, 10]
    assert "inner#1" in second.checkpoints  # the top-level inner is still call #1


async def test_user_keys_name_steps_independently_of_call_order() -> None:
    @longline.component(key=lambda city: city)
    async def forecast(city: str) -> str:
        return f"sunny in {city}"

    @longline.workflow
    async def flow(ctx: longline.Context, cities: list[str]) -> list[str]:
        return [await forecast(c) for c in cities]

    first = await run_local(flow, ["oslo", "lima"])
    assert set(first.checkpoints) == {"forecast:oslo", "forecast:lima"}
    reordered = await run_local(flow, ["lima", "oslo"], checkpoints=first.checkpoints)
    assert reordered.replayed == ["forecast:lima", "forecast:oslo"]
    assert reordered.result == ["sunny in lima", "sunny in oslo"]


class _HttpError(Exception):
    """Shaped like an openai.APIStatusError: a status code and a response with headers."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.response = type("R", (), {"headers": headers or {}})()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (_HttpError(429), True),
        (_HttpError(503), True),
        (_HttpError(400), False),
        (_HttpError(404), False),
        (TimeoutError("slow"), True),
        (ConnectionResetError("reset"), True),
        (ValueError("a bug"), False),
        (longline.NonRetryable("no"), False),
    ],
)
async def test_the_default_policy_retries_only_transient_errors(
    error: Exception, retried: bool
) -> None:
    calls = 0

    @longline.component(retry=longline.Retry(max_attempts=2, initial=0, maximum=0))
    async def call() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await call()
    assert calls == (2 if retried else 1)


async def test_retry_after_is_honoured() -> None:
    import time

    seen: list[float] = []

    @longline.component(retry=longline.Retry(max_attempts=2, initial=0, maximum=0))
    async def limited() -> str:
        seen.append(time.monotonic())
        if len(seen) == 1:
            raise _HttpError(429, {"retry-after-ms": "300"})
        return "ok"

    assert await limited() == "ok"
    assert seen[1] - seen[0] >= 0.3  # the wait came from the provider, not the 0 s backoff


async def test_a_result_over_the_cache_size_limit_is_not_cached() -> None:
    from longline.testing import MemoryServices

    @longline.component(cache=longline.Cache(ttl=60, max_bytes=10))
    async def big() -> str:
        return "x" * 100

    @longline.workflow
    async def flow(ctx: longline.Context, input: None) -> str:
        return await big()

    services = MemoryServices()
    run = await run_local(flow, services=services)
    assert run.result == "x" * 100 and services.cache == {}
    (finished,) = [json.loads(e.data_json) for e in run.events if e.type == "COMPONENT_FINISHED"]
    assert finished["cache"] == "too large"
