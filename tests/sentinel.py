"""A Redis primary, one replica and three sentinels, as real processes on free ports.

Built from the same redis-server binary as every other test (`find_redis_server`): a
sentinel is `redis-server sentinel.conf --sentinel`. Each process has a directory of its
own (sentinels rewrite their config file as they learn the topology), and its log there.

Ports are drawn as the local Redis Cluster's are (`cluster_port`: below the kernel's
ephemeral range, where port-0 binds and outgoing connections land), and a process that
still loses the race for its port (redis-server exits: "Failed listening on port ...")
has the whole set started again on fresh ports: the nodes' and sentinels' configurations
name each other's ports, so one process cannot move alone.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import redis

from longline._embedded import find_redis_server
from longline._embedded_cluster import RedisProcess, cluster_port, wait_for

SERVICE = "longline"
_REPL_USER, _REPL_PASSWORD = "replication", "replication-secret"
# What redis-server logs before it exits when another process holds its port.
_PORT_TAKEN = ("Address already in use", "Failed listening on port")
_START_ATTEMPTS = 3


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
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._password = password
        self._sentinel_password = sentinel_password
        self._root = Path(tempfile.mkdtemp(prefix="longline-sentinel-"))
        self._lay_out()

    def _lay_out(self) -> None:
        """Pick fresh ports; make the processes' command lines, the sentinels' config files
        (in a directory of their own under the root) and `url`."""
        password, sentinel_password = self._password, self._sentinel_password
        root = Path(tempfile.mkdtemp(prefix="try-", dir=self._root))
        taken: set[int] = set()

        def port() -> int:
            picked = cluster_port(taken)
            taken.add(picked)
            return picked

        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "."]
        # A replica syncs at once (Redis 7's diskless sync otherwise waits 5 s for more
        # replicas to join it; there is only ever one).
        data += ["--repl-diskless-sync-delay", "0"]
        # Replicas log in as a user of their own, so a test can shut the replica out (and
        # only it) to make the primary acknowledge writes that the replica never gets.
        data += ["--user", _REPL_USER, "on", f">{_REPL_PASSWORD}", "~*", "+@all"]
        data += ["--masteruser", _REPL_USER, "--masterauth", _REPL_PASSWORD]
        if password:
            data += ["--requirepass", password]
        first, second = port(), port()
        self.nodes = [
            Server(self.binary, root, "node0", first, ["--port", str(first)], password),
            Server(
                self.binary,
                root,
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
            sentinel_port = port()
            server = Server(
                self.binary,
                root,
                f"sentinel{i}",
                sentinel_port,
                ["sentinel.conf"],
                sentinel_password,
            )
            auth = f"sentinel auth-pass {SERVICE} {password}\n" if password else ""
            if sentinel_password:  # for clients, and for the other sentinels
                auth += f"requirepass {sentinel_password}\n"
                auth += f"sentinel sentinel-pass {sentinel_password}\n"
            (server.dir / "sentinel.conf").write_text(
                f"port {sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {server.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {first} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self._down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self._failover_timeout_ms}\n"
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
        the primary, the replica and the two other sentinels (a failover needs all that).
        If a process exits because another took its port meanwhile, start again on fresh
        ports (`url` changes then: read it after start)."""
        try:
            attempt = 1
            while exited := self._start_once(timeout):
                logs = [s.log.read_text(errors="replace") for s in exited]
                port_taken = all(any(m in log for m in _PORT_TAKEN) for log in logs)
                if not port_taken or attempt == _START_ATTEMPTS:
                    raise RuntimeError(f"a Redis process exited at start\n{self.logs()}")
                self._stop_processes()
                self._lay_out()
                attempt += 1
        except BaseException:
            self.stop()
            raise
        return self

    def _start_once(self, timeout: float) -> list[Server]:
        """Start the nodes, then the sentinels, waiting as `start` says; the processes that
        exited meanwhile (none when it all came up)."""
        for node in self.nodes:
            node.start()
        wait_for(
            lambda: all(n.ping() or not n.alive for n in self.nodes),
            timeout,
            "the nodes",
            self.nodes,
        )
        if exited := [n for n in self.nodes if not n.alive]:
            return exited
        wait_for(self._replica_synced, timeout, "the replica to sync", self.nodes)
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(
            lambda: self._sentinels_ready() or not all(s.alive for s in self.sentinels),
            timeout,
            "the sentinels to meet",
            self._all,
        )
        return [s for s in self.sentinels if not s.alive]

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

    def _stop_processes(self) -> None:
        # SIGTERM to all first: a primary told alone waits for its replica's acknowledgement
        # (about a second); with the replica going down beside it, it exits at once.
        for server in self._all:
            if server.alive and server.proc is not None:
                server.proc.terminate()
        for server in self._all:
            server.stop()

    def stop(self) -> None:
        """Stop every process and remove the directories; safe to call twice."""
        self._stop_processes()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
