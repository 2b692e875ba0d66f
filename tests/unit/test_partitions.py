"""Partitions: every key of a run's transitions in one Redis Cluster slot, partitions spread
evenly over the slot space, and a run's partition readable from its id."""

from __future__ import annotations

import uuid

import pytest

from longline._store import Store, connect, keys


def test_every_partition_number_has_a_tag_near_its_share_of_the_slots() -> None:
    tags = {keys.tag(n) for n in range(keys.MAX_PARTITIONS)}
    assert len(tags) == keys.MAX_PARTITIONS
    for n in (0, 1, 7, 1000, 2048, 4095):
        assert (keys.slot(keys.tag(n)) - n * 4) % 16384 < 64


@pytest.mark.parametrize("count", [1, 3, 64, 100, 256, 4096])
def test_partitions_spread_evenly_over_three_equal_masters(count: int) -> None:
    numbers = keys.partition_numbers(count)
    assert len(set(numbers)) == count and numbers[0] == 0
    # Slots split as redis-cli --cluster create splits them among three masters.
    bounds = (0, 5461, 10923, 16384)
    per_master = [0, 0, 0]
    for n in numbers:
        s = keys.slot(keys.tag(n))
        per_master[next(i for i in range(3) if bounds[i] <= s < bounds[i + 1])] += 1
    assert max(per_master) - min(per_master) <= max(1, count // 100), per_master


def test_the_partition_count_is_bounded() -> None:
    for bad in (0, -1, 4097):
        with pytest.raises(ValueError, match="1 to 4096"):
            keys.partition_numbers(bad)


def test_a_run_id_names_its_partition_and_any_other_string_is_in_partition_0() -> None:
    run_id = keys.run_id_in(0xABC, uuid.uuid4().hex)
    assert len(run_id) == 32 and keys.partition_of(run_id) == 0xABC
    for other in ("r1", "", "q0001", "x" * 32, run_id.upper(), run_id + "0"):
        assert keys.partition_of(other) == 0


def test_every_key_of_a_run_transition_is_in_the_slot_of_its_partition() -> None:
    store = Store(connect("redis://127.0.0.1:1/0"), partitions=64)  # never connects
    for _ in range(200):
        run_id = store.runs.new_run_id()
        n = keys.partition_of(run_id)
        assert n in store.partitions
        names = [
            keys.run_key(run_id),
            keys.events_key(run_id),
            keys.steps_key(run_id),
            keys.idempotency_key(n, "k", "t"),
            keys.leases_key(n),
            *keys.stats_keys(n),
            keys.builds_current_key(n),
            keys.queue_key(n, "wf"),
            keys.queue_key(n, "wf", "v1"),
            keys.runs_key(n),
            keys.runs_key(n, "t"),
            keys.runs_by_workflow_key(n, "wf"),
            keys.runs_by_workflow_key(n, "wf", "t"),
            keys.work_channel(n),
        ]
        assert {keys.slot(name) for name in names} == {keys.slot(keys.tag(n))}
        assert keys.partition_of_key(keys.queue_key(n, "wf", "v1")) == n


def test_runs_with_one_idempotency_key_are_made_in_one_partition() -> None:
    store = Store(connect("redis://127.0.0.1:1/0"), partitions=64)
    ids = {store.runs.new_run_id("order-17", "alice") for _ in range(20)}
    assert len(ids) == 20
    assert len({keys.partition_of(i) for i in ids}) == 1
    assert keys.partition_of(ids.pop()) == keys.partition_for_key(
        "order-17", "alice", store.partitions
    )
    spread = {keys.partition_of(store.runs.new_run_id()) for _ in range(2000)}
    assert spread == set(store.partitions)


def test_queue_keys_read_back_as_their_workflow_and_build() -> None:
    assert keys.queue_of(keys.queue_key(5, "blog_post")) == ("blog_post", "")
    assert keys.queue_of(keys.queue_key(5, "a:b.c", "v1.2")) == ("a:b.c", "v1.2")
