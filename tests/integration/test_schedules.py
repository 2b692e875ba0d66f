"""Schedules on a real control plane, worker and Redis: ticks, overlap, catch-up, bad input."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

import longline
from longline._store import Store, Tick, connect, keys
from longline.v1 import schedules_pb2
from tests.conftest import eventually
from tests.integration.conftest import Stack


async def _runs_of(client: longline.Client, schedule_id: str) -> list[longline.Run]:
    runs, token = [], ""
    while True:
        page, token = await client.list_runs(page_size=200, page_token=token)
        runs += [r for r in page if r.labels.get("longline.schedule") == schedule_id]
        if not token:
            return sorted(runs, key=lambda r: r.labels["longline.tick"])


async def _code(call: object) -> tuple[str, str]:
    with pytest.raises(longline.RpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code, caught.value.reason


async def test_a_schedule_ticks_each_second_once_and_can_be_paused_resumed_and_triggered(
    stack: Stack,
) -> None:
    client = stack.client
    made = await client.create_schedule(
        "every-second", "echo", cron="* * * * * *", input={"hello": "tick"}, labels={"team": "a"}
    )
    assert made.next_tick_time is not None and made.overlap == "SKIP"
    assert made.catchup_window == 3600.0

    async def ran(n: int) -> list[longline.Run] | None:
        runs = await _runs_of(client, "every-second")
        return runs if len(runs) >= n else None

    runs = await eventually(lambda: ran(3), what="three ticks")
    paused = await client.pause_schedule("every-second", note="maintenance")
    assert paused.paused and paused.note == "maintenance" and paused.next_tick_time is None
    runs = await _runs_of(client, "every-second")
    ticks = [r.labels["longline.tick"] for r in runs]
    assert len(set(ticks)) == len(ticks)  # one run per tick
    assert all(r.labels["team"] == "a" for r in runs)
    assert all(t.endswith(".000+00:00") for t in ticks)  # on the second
    for r in runs:
        assert (await client.get_run(r.run_id).result()) == {"hello": "tick"}
    now = await client.get_schedule("every-second")
    assert now.started_runs == len(runs) and now.last_run_id == runs[-1].run_id
    # Paused: no tick while it is (nothing to wait for but time: a tick would show).
    before = len(await _runs_of(client, "every-second"))
    await asyncio.sleep(1.5)
    assert len(await _runs_of(client, "every-second")) == before
    handle = await client.trigger_schedule("every-second")
    assert await handle.result() == {"hello": "tick"}
    triggered = await handle.describe()
    assert triggered.labels["longline.trigger"] == "manual"
    resumed = await client.resume_schedule("every-second")
    assert not resumed.paused and resumed.next_tick_time is not None
    await eventually(lambda: ran(before + 2), what="ticks after resuming")
    await client.delete_schedule("every-second")
    assert [s.schedule_id for s in await client.list_schedules()] == []


@pytest.mark.parametrize(
    ("overlap", "check"),
    [
        # Runs of 1.6 s on a tick a second: SKIP never overlaps, and skips ticks.
        ("SKIP", lambda s, most: most == 1 and s.skipped_ticks >= 1),
        # BUFFER_ONE never overlaps either, and runs a buffered tick when the run ends.
        ("BUFFER_ONE", lambda s, most: most == 1 and s.started_runs >= 2),
        # ALLOW_ALL starts every tick: runs overlap.
        ("ALLOW_ALL", lambda s, most: most >= 2 and s.skipped_ticks == 0),
    ],
)
async def test_overlap_policies(stack: Stack, overlap: str, check: object) -> None:
    client = stack.client
    await client.create_schedule(
        f"slow-{overlap}",
        "slow",
        cron="* * * * * *",
        input={"steps": 8, "delay": 0.2},
        overlap=overlap,
    )

    async def ran(n: int) -> bool:
        return len(await _runs_of(client, f"slow-{overlap}")) >= n

    await eventually(lambda: ran(2), what="two runs", timeout=30)
    schedule = await client.pause_schedule(f"slow-{overlap}")
    runs = await _runs_of(client, f"slow-{overlap}")
    for r in runs:
        await client.get_run(r.run_id).result()
    # How many ran at once, from their own events.
    edges = []
    for r in runs:
        events = [e async for e in client.get_run(r.run_id).events()]
        edges.append((next(e.time for e in events if e.type == "RUN_STARTED"), 1))
        edges.append((next(e.time for e in events if e.type.terminal), -1))
    running = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        most = max(most, running)
    schedule = await client.get_schedule(f"slow-{overlap}")
    assert check(schedule, most), (schedule, most)  # type: ignore[operator]
    if overlap == "BUFFER_ONE":  # a buffered tick ran late, when the run before it ended
        late = [(await client.get_run(r.run_id).describe()) for r in runs[1:]]
        assert any((r.create_time.timestamp() - _tick(r)) > 0.3 for r in late if r.create_time)


def _tick(run: longline.Run) -> float:
    from datetime import datetime

    return datetime.fromisoformat(run.labels["longline.tick"]).timestamp()


async def test_ticks_missed_while_nothing_ran_are_run_within_the_catchup_window(
    stack: Stack, redis: aioredis.Redis
) -> None:
    client = stack.client
    await client.create_schedule(
        "catchup",
        "echo",
        cron="* * * * * *",
        overlap="ALLOW_ALL",
        catchup_window=5,
        paused=True,
    )
    # As if every replica had been down for 30 s: the next tick is 30 s back.
    now_ms = int(time.time() * 1000) // 1000 * 1000
    key = keys.schedule_key("", "catchup")
    await redis.hset(key, mapping={"paused": "0", "next_ms": now_ms - 30_000})
    await redis.zadd(keys.SCHEDULES_DUE, {"\tcatchup": now_ms - 30_000})

    async def caught_up() -> longline.Schedule | None:
        s = await client.get_schedule("catchup")
        return s if s.missed_ticks and s.last_tick_time and s.started_runs >= 15 else None

    s = await eventually(caught_up, what="the schedule to catch up")
    await client.pause_schedule("catchup")
    # Ticks older than 5 s (+10 s of slack) were missed; those since were run, late.
    assert 12 <= s.missed_ticks <= 17, s
    runs = await _runs_of(client, "catchup")
    ticks = sorted(_tick(r) for r in runs)
    assert ticks[0] >= (now_ms - 30_000) / 1000 + 12
    assert all(b - a == 1 for a, b in zip(ticks, ticks[1:], strict=False))  # none skipped


@pytest.mark.parametrize(
    ("spec", "code", "reason"),
    [
        ({"cron": "61 * * * *"}, "INVALID_ARGUMENT", "INVALID_CRON"),
        ({"cron": "* * *"}, "INVALID_ARGUMENT", "INVALID_CRON"),
        ({"cron": "0 0 30 2 *"}, "INVALID_ARGUMENT", "INVALID_CRON"),
        ({"cron": ""}, "INVALID_ARGUMENT", "CRON_REQUIRED"),
        ({"time_zone": "Mars/Olympus"}, "INVALID_ARGUMENT", "UNKNOWN_TIME_ZONE"),
        ({"workflow": "nobody_serves_this"}, "NOT_FOUND", "WORKFLOW_NOT_FOUND"),
        ({"workflow": ""}, "INVALID_ARGUMENT", "WORKFLOW_REQUIRED"),
        ({"input_json": "{nope"}, "INVALID_ARGUMENT", "INPUT_NOT_JSON"),
        ({"overlap_policy": 42}, "INVALID_ARGUMENT", "INVALID_OVERLAP_POLICY"),
        ({"catchup_ms": -1000}, "INVALID_ARGUMENT", "INVALID_CATCHUP_WINDOW"),
        ({"schedule_id": "no spaces"}, "INVALID_ARGUMENT", "INVALID_SCHEDULE_ID"),
        ({"schedule_id": ""}, "INVALID_ARGUMENT", "SCHEDULE_ID_REQUIRED"),
    ],
)
async def test_bad_schedules_are_refused_with_a_reason(
    stack: Stack, spec: dict[str, object], code: str, reason: str
) -> None:
    fields: dict[str, object] = {"cron": "0 8 * * *", "workflow": "echo", **spec}
    schedule_id = str(fields.pop("schedule_id", "bad"))
    catchup = fields.pop("catchup_ms", None)
    message = schedules_pb2.ScheduleSpec(**fields)  # type: ignore[arg-type]
    if catchup is not None:
        message.catchup_window.FromMilliseconds(int(catchup))  # type: ignore[call-overload]
    request = schedules_pb2.CreateScheduleRequest(schedule_id=schedule_id, spec=message)
    with pytest.raises(longline.RpcError) as caught:
        await stack.client._call("CreateSchedule", request)
    assert (caught.value.code, caught.value.reason) == (code, reason)
    assert caught.value.details  # a message a person can act on


async def test_names_taken_unknown_schedules_and_updates(stack: Stack) -> None:
    client = stack.client
    await client.create_schedule("daily", "echo", cron="0 8 * * *", time_zone="Europe/Berlin")
    assert await _code(client.create_schedule("daily", "echo", cron="0 9 * * *")) == (
        "ALREADY_EXISTS",
        "SCHEDULE_EXISTS",
    )
    for call in (
        client.get_schedule("nope"),
        client.pause_schedule("nope"),
        client.resume_schedule("nope"),
        client.trigger_schedule("nope"),
        client.delete_schedule("nope"),
        client.update_schedule("nope", "echo", cron="0 8 * * *"),
    ):
        assert await _code(call) == ("NOT_FOUND", "SCHEDULE_NOT_FOUND")
    updated = await client.update_schedule(
        "daily", "echo", cron="30 7 * * 1-5", time_zone="America/New_York", overlap="ALLOW_ALL"
    )
    assert (updated.cron, updated.time_zone, updated.overlap) == (
        "30 7 * * 1-5",
        "America/New_York",
        "ALLOW_ALL",
    )
    assert updated.next_tick_time is not None
    # Resuming a schedule that is not paused changes nothing.
    assert (await client.resume_schedule("daily")).next_tick_time == updated.next_tick_time
    local = updated.next_tick_time.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (7, 30) and local.weekday() < 5
    # The workflow reads its labels: the schedule's id and the tick (or the trigger).
    await client.create_schedule("lab", "labelled", cron="@daily", labels={"team": "x"})
    labels = await (await client.trigger_schedule("lab")).result()
    assert labels["longline.schedule"] == "lab" and labels["team"] == "x"
    assert labels["longline.trigger"] == "manual" and "longline.tick" in labels
    await client.delete_schedule("lab")
    for n in range(7):
        await client.create_schedule(f"s{n}", "echo", cron="@daily")
    listed = await client.list_schedules()
    assert [s.schedule_id for s in listed] == ["daily", *[f"s{n}" for n in range(7)]]


async def test_a_record_this_version_cannot_read_is_put_off_and_the_rest_tick(
    stack: Stack, redis: aioredis.Redis
) -> None:
    client = stack.client
    await client.create_schedule("good", "echo", cron="* * * * * *", overlap="ALLOW_ALL")
    now_ms = int(time.time() * 1000)
    await redis.hset(keys.schedule_key("", "broken"), mapping={"spec": "{not json", "version": "1"})
    await redis.zadd(keys.SCHEDULES_DUE, {"\tbroken": now_ms, "no tab": now_ms})

    async def ticked() -> bool:
        return (await client.get_schedule("good")).started_runs >= 2

    await eventually(ticked, what="the good schedule to tick on")
    await client.pause_schedule("good")
    # The broken one is looked at again in a minute, not every round; the entry no version
    # wrote is dropped; the replica serves on.
    score = await redis.zscore(keys.SCHEDULES_DUE, "\tbroken")
    assert score is not None and score > now_ms + 50_000
    assert await redis.zscore(keys.SCHEDULES_DUE, "no tab") is None
    assert await client.run("echo", {"still": "serving"}) == {"still": "serving"}


async def test_a_pass_over_a_schedule_deleted_and_made_again_is_not_applied(redis_url: str) -> None:
    store = Store(connect(redis_url))
    try:
        first = await store.schedules.create("t", "s", {"cron": "@daily"}, 1_000)
        await store.schedules.delete("t", "s")
        again = await store.schedules.create("t", "s", {"cron": "@hourly"}, 5_000)
        assert again.version != first.version
        # A scheduler pass that read the first one is refused over the second.
        assert not await store.schedules.advance(first, Tick(last_tick_ms=1_000, next_ms=2_000))
        assert (await store.schedules.get("t", "s")).next_ms == 5_000
    finally:
        await store.redis.aclose()
