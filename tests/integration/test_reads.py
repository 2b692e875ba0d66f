"""Reads of a run's events are bounded in bytes as well as in count, against a real Redis."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

import longline
from longline._events import EventBody
from longline._store import (
    ClaimRequest,
    RunWriter,
    Store,
    StoredEvent,
    connect,
    encode_event,
    keys,
)
from longline.v1 import runs_pb2
from tests.integration.conftest import Stack

MIB = 1024 * 1024


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store(connect(redis_url))
    yield s
    await s.redis.aclose()


async def _run(store: Store, run_id: str = "r1") -> RunWriter:
    await store.presence.announce("w1", [("flow", "")], 60_000)
    await store.runs.create(run_id, "flow", "null", {})
    assert await store.attempts.claim(
        ClaimRequest(run_id, 1, "w1", "cp", lease_ms=60_000, max_attempts=3)
    )
    return RunWriter(store, run_id, 1, "w1")


def _bytes(events: list[StoredEvent]) -> int:
    return sum(len(e.message) + len(e.data_json) for e in events)


async def _write(writer: RunWriter, n: int, size: int) -> None:
    for i in range(n):
        await writer.append([encode_event("OUTPUT", 1, f"{i:04d}" + "x" * (size - 4))])


async def test_a_page_of_large_events_stops_at_the_byte_budget(store: Store) -> None:
    await _write(await _run(store), 40, 64 * 1024)  # 2.5 MiB after RUN_QUEUED
    first = await store.events.read_events("r1", "", 500)
    assert 1 < len(first) < 41
    assert _bytes(first) <= MIB, f"a page of {_bytes(first)} bytes"


async def test_pages_of_any_size_read_every_event_once_in_order(store: Store) -> None:
    writer = await _run(store)
    await _write(writer, 30, 100)  # small: the stream fits in one page
    await _write(writer, 12, 300 * 1024)  # large: a few to a page
    await _write(writer, 30, 100)
    await writer.append([encode_event("OUTPUT", 1, "big" + "y" * (3 * MIB))])  # over a page
    seen: list[StoredEvent] = []
    pages = 0
    cursor = ""
    while True:
        page = await store.events.read_page("r1", cursor)
        pages += 1
        assert page.events or not page.more
        assert len(page.events) == 1 or page.bytes <= MIB
        seen += page.events
        if not page.more:
            break
        cursor = page.events[-1].event_id
    assert [e.type for e in seen] == ["RUN_QUEUED", *["OUTPUT"] * 73]
    assert [e.message[:4] for e in seen[1:-1]] == [
        f"{i:04d}" for i in (*range(30), *range(12), *range(30))
    ]
    assert seen[-1].message.startswith("big") and len(seen[-1].message) == 3 * MIB + 3
    assert 4 < pages < 20


async def test_small_streams_are_read_in_one_page_of_up_to_the_count(store: Store) -> None:
    await _write(await _run(store), 20, 10)
    page = await store.events.read_page("r1", "", count=8)
    assert (len(page.events), page.more) == (8, True)
    page = await store.events.read_page("r1", page.events[-1].event_id, count=100)
    assert (len(page.events), page.more) == (13, False)


@pytest.mark.single_redis  # the ACL is set on one server
async def test_without_memory_usage_pages_are_still_bounded(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Where MEMORY USAGE is not allowed (an ACL, a managed Redis), every page is measured
    event by event."""
    await redis.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-memory"],
    )
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    limited = Store(connect(f"redis://reader:pw@{host}:{port}/0"))
    try:
        await _write(await _run(limited), 40, 64 * 1024)
        for _ in range(2):
            page = await limited.events.read_page("r1", "")
            assert page.more and 1 < len(page.events) < 41 and page.bytes <= MIB
        fresh = Store(limited.redis)  # has not met the refusal yet
        page = (await fresh.events.open("r1", "", "")).page
        assert page.more and 1 < len(page.events) < 41 and page.bytes <= MIB
    finally:
        await limited.redis.aclose()


async def test_stream_run_reads_every_page_of_large_events_live_and_after_the_end(
    stack: Stack, redis_url: str
) -> None:
    store = Store(connect(redis_url))
    writer = await _run(store, "big")
    await _write(writer, 24, 200 * 1024)  # about five pages

    async def stream(after: str = "") -> list[str]:
        request = runs_pb2.StreamRunRequest(run_id="big", after_event_id=after)
        return [r.event.message[:4] async for r in stack.stub.StreamRun(request)]

    live = asyncio.create_task(stream())
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    expected = ["queu", *[f"{i:04d}" for i in range(24)], ""]
    assert await asyncio.wait_for(live, 20) == expected
    assert await stream() == expected  # the run has ended: a replay
    events = await store.events.read_events("big", "", 3)
    assert await stream(events[1].event_id) == expected[2:]
    await store.redis.aclose()


async def _components(writer: RunWriter, n: int, size: int = 0) -> None:
    for i in range(n):
        await writer.append(
            [
                encode_event(
                    "COMPONENT_STARTED",
                    1,
                    EventBody(
                        data_json=json.dumps({"step": f"c#{i}"}), component="c", span_id=f"s{i}"
                    ),
                ),
                encode_event(
                    "COMPONENT_FINISHED",
                    1,
                    EventBody(message="x" * size, data_json="{}", component="c", span_id=f"s{i}"),
                ),
            ]
        )


@pytest.mark.parametrize("limit", ["events", "bytes"])
async def test_a_trace_reads_a_bounded_part_of_a_long_run_and_says_so(
    stack: Stack, redis_url: str, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    from longline._cli import print_trace
    from longline.control_plane import _runs

    if limit == "events":
        monkeypatch.setattr(_runs, "_TRACE_MOST_EVENTS", 30)
    else:
        monkeypatch.setattr(_runs, "_TRACE_MOST_BYTES", 256 * 1024)
    store = Store(connect(redis_url))
    writer = await _run(store, "long")
    await _components(writer, 40, 0 if limit == "events" else 32 * 1024)
    response = await stack.stub.GetRunTrace(runs_pb2.GetRunTraceRequest(run_id="long"))
    assert response.truncated
    assert 0 < len(response.spans) < 20
    trace = await stack.client.get_run("long").trace()
    assert trace.truncated and len(trace.spans) == len(response.spans)
    out = io.StringIO()
    print_trace(trace, out)
    assert "truncated" in out.getvalue()

    writer = await _run(store, "short")
    await _components(writer, 5)
    short = await stack.client.get_run("short").trace()
    assert not short.truncated and len(short.spans) == 5
    out = io.StringIO()
    print_trace(short, out)
    assert "truncated" not in out.getvalue()
    await store.redis.aclose()


async def _big_runs(stack: Stack, n: int, size: int) -> list[str]:
    handles = [await stack.client.start("echo", f"{i:03d}" + "x" * size) for i in range(n)]
    for h in handles:
        await h.result()
    return [h.run_id for h in reversed(handles)]  # newest first


async def test_list_runs_basic_reads_no_input_or_result(
    stack: Stack, redis: aioredis.Redis
) -> None:
    newest_first = await _big_runs(stack, 20, 30_000)  # 1.2 MB of input and result
    before = (await redis.info("stats"))["total_net_output_bytes"]
    response = await stack.stub.ListRuns(runs_pb2.ListRunsRequest(page_size=100))
    sent = (await redis.info("stats"))["total_net_output_bytes"] - before
    assert [r.run_id for r in response.runs] == newest_first
    assert all(r.input_json == r.result_json == "" for r in response.runs)
    assert all(r.status == runs_pb2.RUN_STATUS_SUCCEEDED and r.attempt == 1 for r in response.runs)
    assert sent < 200_000, f"Redis sent {sent} bytes for a page of 20 runs without their data"
    runs, token = await stack.client.list_runs(page_size=100)  # the SDK: basic by default
    assert [r.run_id for r in runs] == newest_first and not token
    assert runs[0].input_json == "" and runs[0].create_time is not None


async def test_list_runs_full_pages_end_early_by_bytes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from longline.control_plane import _runs

    monkeypatch.setattr(_runs, "_LIST_MOST_BYTES", 256 * 1024)
    newest_first = await _big_runs(stack, 20, 30_000)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await stack.stub.ListRuns(
            runs_pb2.ListRunsRequest(page_size=100, page_token=token, view=runs_pb2.RUN_VIEW_FULL)
        )
        pages += 1
        assert 0 < len(response.runs) < 20
        assert sum(len(r.input_json) + len(r.result_json) for r in response.runs) <= 256 * 1024
        for r in response.runs:
            assert json.loads(r.input_json) == json.loads(r.result_json)
            assert json.loads(r.input_json).endswith("x" * 30_000)
        seen += [r.run_id for r in response.runs]
        token = response.next_page_token
        if not token:
            break
    assert seen == newest_first and pages >= 4
    runs, _ = await stack.client.list_runs(page_size=2, full=True)
    assert runs[0].result == json.loads(runs[0].input_json)


async def test_list_runs_with_a_view_that_is_not_one_is_invalid(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.ListRuns(runs_pb2.ListRunsRequest(view=7))  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "view 7 is not a RunView" in (info.value.details() or "")


_FOREIGN_EMIT = """
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV))
redis.call('PUBLISH', KEYS[2], id .. ' ' .. cjson.encode(ARGV))
redis.call('HSET', KEYS[1], 'last_event_id', id)
return id
"""


async def test_an_event_of_a_type_the_server_does_not_know_streams_as_unspecified(
    stack: Stack, redis_url: str
) -> None:
    """Written by an older or newer version (today's scripts refuse a type a worker may not
    write): every reader gets it, as EVENT_TYPE_UNSPECIFIED with its message and data, and
    goes on to the end."""
    store = Store(connect(redis_url))
    writer = await _run(store, "odd")

    async def stream() -> list[runs_pb2.RunEvent]:
        request = runs_pb2.StreamRunRequest(run_id="odd")
        return [r.event async for r in stack.stub.StreamRun(request, timeout=10)][1:]

    watching = asyncio.create_task(stream())  # live, and after the end too
    # As another version's script would write it: appended, published, recorded as the last.
    await store.redis.eval(
        _FOREIGN_EMIT,
        2,
        keys.run_key("odd"),
        keys.events_key("odd"),
        *encode_event(
            "SOMETHING_NEW",
            1,
            EventBody(
                message="from the future", data_json='{"k": [1, 2]}', component="c", span_id="s1"
            ),
        ),
    )
    finished = EventBody(data_json='{"tries": "many"}', component="c", span_id="s1")
    await writer.append([encode_event("COMPONENT_FINISHED", 1, finished)])
    await writer.finish("SUCCEEDED", result_json="1", event=encode_event("RUN_SUCCEEDED", 1))
    live = await watching
    assert live == await stream()
    assert [e.type for e in live] == [
        runs_pb2.EVENT_TYPE_UNSPECIFIED,
        runs_pb2.EVENT_TYPE_COMPONENT_FINISHED,
        runs_pb2.EVENT_TYPE_RUN_SUCCEEDED,
    ]
    assert (live[0].message, live[0].data_json, live[0].span_id) == (
        "from the future",
        '{"k": [1, 2]}',
        "s1",
    )
    events = [e async for e in stack.client.get_run("odd").events()]
    assert [e.type for e in events] == [
        longline.EventType.RUN_QUEUED,
        longline.EventType.UNSPECIFIED,
        longline.EventType.COMPONENT_FINISHED,
        longline.EventType.RUN_SUCCEEDED,
    ]
    assert events[1].data == {"k": [1, 2]}
    trace = await stack.client.get_run("odd").trace()
    assert trace.run.status is longline.RunStatus.SUCCEEDED
    await store.redis.aclose()


async def test_a_rare_status_is_listed_a_bounded_scan_at_a_time(
    stack: Stack, redis_url: str
) -> None:
    """One cancelled run behind 1,050 queued ones: each ListRuns call reads at most 1,000
    index entries; a page may come back empty with a token, and paging finds the run."""
    store = Store(connect(redis_url))
    try:
        await store.runs.create("rare", "echo", "1", {})
        await store.runs.cancel("rare", "the one to find")
        for i in range(1050):
            await store.runs.create(f"q{i:04d}", "echo", "1", {})
    finally:
        await store.redis.aclose()
    found, pages, token = [], 0, ""
    while True:
        runs, token = await stack.client.list_runs(
            status="CANCELLED", page_size=10, page_token=token
        )
        pages += 1
        found += [r.run_id for r in runs]
        if not token:
            break
    assert "rare" in found and pages >= 2
