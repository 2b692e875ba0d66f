"""A local Redis Cluster for the tests: the SDK's `EmbeddedCluster` (what
`longline dev --redis-cluster` starts; how it forms is in `longline._embedded_cluster`)
with what only tests do to it: kill a master, wait for its replica to take over, empty
every master between tests.

Its nodes are `tests.sentinel.Server`s, which a test can kill.
"""

from __future__ import annotations

import redis

from longline._embedded_cluster import (
    SLOTS,
    EmbeddedCluster,
    NodeView,
    cluster_port,
    parse_nodes,
    slot_ranges,
)
from tests.sentinel import Server

__all__ = ["SLOTS", "NodeView", "RedisCluster", "cluster_port", "parse_nodes", "slot_ranges"]


class RedisCluster(EmbeddedCluster):
    """A local Redis Cluster of `masters` masters and `replicas` replicas per master.

    Besides what `EmbeddedCluster` offers: `kill_master(i)` kill -9s the i-th master as
    formed, `failed_over_from(port)` says whether its replica took over,
    `live_master_ports()` names the masters holding slots now, and `flush()` empties them.
    """

    node_type = Server

    def live_master_ports(self) -> list[int]:
        """The ports of the masters that hold slots now, as the first live node sees it."""
        for node in self.nodes:
            if not node.alive:
                continue
            views = self._views(node)
            if views is not None:
                return sorted(
                    v.port for v in views if v.is_master and v.slots and "fail" not in v.flags
                )
        raise RuntimeError("no cluster node answered")

    def failed_over_from(self, old_port: int) -> bool:
        """Whether every live node sees the old master's replica as a master holding its
        slots, and says the cluster is ok again."""
        replica = next(r for r, m in self.replica_of.items() if m == old_port)
        for node in self.nodes:
            if not node.alive:
                continue
            views = self._views(node)
            if views is None:
                return False
            promoted = next((v for v in views if v.port == replica), None)
            if promoted is None or not promoted.is_master or not promoted.slots:
                return False
            try:
                with node.client(1.0) as c:
                    if c.cluster("INFO").get("cluster_state") != "ok":
                        return False
            except redis.RedisError:
                return False
        return True

    def flush(self) -> None:
        """Empty every master that holds slots now (their replicas follow)."""
        for port in self.live_master_ports():
            with self.node(port).client() as c:
                c.flushall()

    def kill_master(self, i: int) -> int:
        """kill -9 the i-th master as formed, as a crash would; returns its port."""
        master = self.masters[i]
        assert isinstance(master, Server)
        master.kill()
        return master.port
