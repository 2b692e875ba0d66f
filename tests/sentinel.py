"""A Redis primary, one replica and three sentinels, as real processes on free ports.

Built from the same redis-server binary as every other test (`find_redis_server`): a
sentinel is `redis-server sentinel.conf --sentinel`. Each process has a directory of its
own (sentinels rewrite their config file as they learn the topology), and its log there.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import redis

from longline._embedded import find_redis_server, free_port
from longline._embedded_cluster import RedisProcess, wait_for

SERVICE = "longline"
_REPL_USER, _REPL_PASSWORD = "replication", "replication-secret"


class Server(RedisProcess):
    """One redis-server child process with a directory and a log file of its own (the
    Sentinel setup here and the Redis Cluster in tests/cluster.py are made of these), which
    a test can also kill."""

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class SentinelCluster:
    """A primary, a replica and three sentinels monitoring SERVICE; `url` once started.

    down_after_ms is how long the primary must be silent before a sentinel thinks it down,
    failover_timeout_ms bounds one failover (and spaces out a retried one). With password
    the nodes require it (and the URL carries it); with sentinel_password the sentinels do.
    """

    def __init__(
        self,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str = "",
        sentinel_password: str = "",
    ) -> None:
        self.binary = find_redis_server()
        self._root = Path(tempfile.mkdtemp(prefix="longline-sentinel-"))
        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "."]
        # Replicas log in as a user of their own, so a test can shut the replica out (and
        # only it) to make the primary acknowledge writes that the replica never gets.
        data += ["--user", _REPL_USER, "on", f">{_REPL_PASSWORD}", "~*", "+@all"]
        data += ["--masteruser", _REPL_USER, "--masterauth", _REPL_PASSWORD]
        if password:
            data += ["--requirepass", password]
        first, second = free_port(), free_port()
        self.nodes = [
            Server(self.binary, self._root, "node0", first, ["--port", str(first)], password),
            Server(
                self.binary,
                self._root,
                "node1",
                second,
                ["--port", str(second), "--replicaof", "127.0.0.1", str(first)],
                password,
            ),
        ]
        for node in self.nodes:
            node._args += data
        self.sentinels: list[Server] = []
        for i in range(3):
            port = free_port()
            server = Server(
                self.binary, self._root, f"sentinel{i}", port, ["sentinel.conf"], sentinel_password
            )
            auth = f"sentinel auth-pass {SERVICE} {password}\n" if password else ""
            if sentinel_password:  # for clients, and for the other sentinels
                auth += f"requirepass {sentinel_password}\n"
                auth += f"sentinel sentinel-pass {sentinel_password}\n"
            (server.dir / "sentinel.conf").write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {server.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {first} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n" + auth
            )
            server._args.append("--sentinel")
            self.sentinels.append(server)
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        userinfo = f":{password}@" if password else ""
        query = f"?sentinel_password={sentinel_password}" if sentinel_password else ""
        self.url = f"redis+sentinel://{userinfo}{hosts}/{SERVICE}/0{query}"

    def start(self, timeout: float = 30.0) -> SentinelCluster:
        """Start everything; return once the replica is in sync and every sentinel knows
        the primary, the replica and the two other sentinels (a failover needs all that)."""
        try:
            for node in self.nodes:
                node.start()
            wait_for(lambda: all(n.ping() for n in self.nodes), timeout, "the nodes", self.nodes)
            wait_for(self._replica_synced, timeout, "the replica to sync", self.nodes)
            for sentinel in self.sentinels:
                sentinel.start()
            wait_for(self._sentinels_ready, timeout, "the sentinels to meet", self._all)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def _all(self) -> list[Server]:
        return [*self.nodes, *self.sentinels]

    def _replica_synced(self) -> bool:
        try:
            with self.nodes[1].client() as c:
                return c.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            try:
                with sentinel.client(0.5) as c:
                    state = c.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def primary_port(self) -> int:
        """The port of the primary, as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client(0.5) as c:
                    _, port = c.sentinel_get_master_addr_by_name(SERVICE)
                    return int(port)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answered")

    def node(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    def kill_primary(self) -> int:
        """kill -9 the current primary; returns its port."""
        port = self.primary_port()
        self.node(port).kill()
        return port

    def failed_over_from(self, old_port: int) -> bool:
        """Whether every sentinel names a new primary and that node says it is one."""
        ports = set()
        for sentinel in self.sentinels:
            try:
                with sentinel.client(0.5) as c:
                    _, port = c.sentinel_get_master_addr_by_name(SERVICE)
            except (redis.RedisError, TypeError):
                return False
            ports.add(int(port))
        if len(ports) != 1 or old_port in ports:
            return False
        try:
            with self.node(ports.pop()).client(0.5) as c:
                return c.info("replication").get("role") == "master"
        except redis.RedisError:
            return False

    def cut_replication(self) -> None:
        """From now on the primary acknowledges writes that its replica never receives, as
        when replication lags; a failover then loses them (asynchronous replication)."""
        with self.node(self.primary_port()).client() as c:
            c.acl_setuser(_REPL_USER, enabled=False)  # it cannot log in again...
            c.client_kill_filter(user=_REPL_USER)  # ...once its link is cut

    def replica_offsets(self) -> tuple[int, int]:
        """The replication offsets of the primary and of its replica: how far each got."""
        primary = self.node(self.primary_port())
        replica = next(n for n in self.nodes if n is not primary)
        with primary.client() as p, replica.client() as r:
            return (
                int(p.info("replication")["master_repl_offset"]),
                int(r.info("replication")["master_repl_offset"]),
            )

    def logs(self) -> str:
        """The tail of every process's log, for a failing test's report."""
        return "\n".join(
            f"----- {s.name} (port {s.port}) -----\n{s.log.read_text(errors='replace')[-3000:]}"
            for s in self._all
            if s.log.exists()
        )

    def stop(self) -> None:
        """Stop every process and remove the directories; safe to call twice."""
        for server in self._all:
            server.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
