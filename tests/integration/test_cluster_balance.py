"""The balance check: B1-style load on a Redis Cluster of 3 masters spreads evenly.

A control plane and a worker (subprocesses, 64 partitions) run no-op workflows started by
8 clients at once, as B1 does. Each master should then have served a third of the commands
and hold a third of the data, within 20%: the partitions are spread over the slot space
(21/21/22 of 64 on 3 masters) and runs over the partitions; nothing hot sits on one key.
The table is printed (pytest -s, or on failure).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.bench.b1 import stack, throughput
from tests.cluster import RedisCluster
from tests.procs import Proc

# Its own stack on the session's cluster: the --redis-cluster pass need not run it again.
pytestmark = pytest.mark.single_redis

RUNS = 1500
WITHIN = 0.20


def _commands(client: redis.Redis) -> int:
    """Commands this master served since CONFIG RESETSTAT (INFO's own calls left out)."""
    stats: dict[str, Any] = client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")
    )


def _data_bytes(client: redis.Redis) -> int:
    """Memory of the data itself (used_memory_dataset: used_memory less the server's own
    overhead: clients' buffers, the replication backlog, the cluster's bookkeeping)."""
    return int(client.info("memory")["used_memory_dataset"])


async def test_b1_load_spreads_commands_and_memory_over_three_masters_evenly(
    redis_cluster: RedisCluster, redis_url: str, procs: list[Proc]
) -> None:
    redis_cluster.flush()
    masters = {port: redis_cluster.node(port).client() for port in redis_cluster.master_ports}
    try:
        before = {}
        for port, client in masters.items():
            client.config_resetstat()
            before[port] = _data_bytes(client)
        target = await stack(redis_cluster.longline_url, procs, slots=64)
        rate = await throughput(target, RUNS)
        commands = {port: _commands(c) for port, c in masters.items()}
        data = {port: _data_bytes(c) - before[port] for port, c in masters.items()}
    finally:
        for client in masters.values():
            client.close()
    lines = [f"B1-style load: {RUNS} no-op runs, 8 clients, {rate:.0f} runs/s, 3 masters"]
    lines.append(f"{'master':>8} {'commands':>10} {'share':>7} {'data bytes':>12} {'share':>7}")
    for port in masters:
        lines.append(
            f"{port:>8} {commands[port]:>10} {commands[port] / sum(commands.values()):>7.1%}"
            f" {data[port]:>12} {data[port] / sum(data.values()):>7.1%}"
        )
    table = "\n".join(lines)
    print(table)
    for name, per_master in (("commands", commands), ("data", data)):
        third = sum(per_master.values()) / len(per_master)
        for port, value in per_master.items():
            assert abs(value - third) <= WITHIN * third, f"{name} on {port} off a third:\n{table}"
