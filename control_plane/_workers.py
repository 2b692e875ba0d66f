"""WorkerService.Connect and the dispatcher that pushes queued runs to connected workers.

Queues are Redis streams, one per workflow, read through one consumer group by
every replica: each queued attempt is delivered to exactly one replica, and
CLAIM_RUN makes it RUNNING on exactly one worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from longline._store import InvalidArgumentError, Store, keys
from longline.v1 import worker_pb2, worker_pb2_grpc

from ._hub import BLOCK_MS
from ._settings import ControlPlaneSettings

log = logging.getLogger("longline.control_plane.workers")


@dataclass(eq=False)
class WorkerSession:
    """One connected worker, as this replica sees it."""

    worker_id: str
    build_id: str
    workflows: dict[str, worker_pb2.WorkflowInfo]
    slots: int
    running: dict[str, int] = field(default_factory=dict)  # run_id -> attempt
    draining: bool = False
    outbox: asyncio.Queue[worker_pb2.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    @property
    def free(self) -> int:
        """Slots this worker can take runs into now."""
        if self.draining or self.closed:
            return 0
        return max(0, self.slots - len(self.running))

    def send(self, message: worker_pb2.ConnectResponse) -> None:
        """Queue a message for the worker's stream."""
        self.outbox.put_nowait(message)


class Dispatcher:
    """Reads the queues of workflows that local workers have room for and assigns runs."""

    def __init__(
        self, store: Store, reader: aioredis.Redis, settings: ControlPlaneSettings
    ) -> None:
        self._store = store
        self._reader = reader  # a dedicated connection: it blocks in XREADGROUP
        self._settings = settings
        self.sessions: dict[str, WorkerSession] = {}
        self._wake_key = keys.wake_key(settings.replica_id + ":dispatch")
        self._groups: set[str] = set()
        self._backlog: list[tuple[str, str, int, str]] = []  # (workflow, run_id, attempt, entry)
        # Entries delivered to this replica but not yet handled are in its pending list; they
        # are re-read from there at start and after any lost reply, so none is stranded.
        self._recover = True
        # Wake at least as often as abandoned entries are looked for.
        self._block_ms = min(BLOCK_MS, max(100, int(settings.reclaim_after * 1000 / 3)))

    async def wake(self) -> None:
        """Make the dispatcher look at its workers again (a slot freed, a worker came)."""
        async with self._store.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(self._wake_key, 3600)
            await pipe.execute()

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self._store.redis.xgroup_create(
                stream, keys.DISPATCH_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)
        self._recover = True  # entries an earlier life of this replica was handed come first

    def _capacity(self) -> dict[str, int]:
        free: dict[str, int] = {}
        for session in self.sessions.values():
            if session.free:
                for name in session.workflows:
                    free[name] = free.get(name, 0) + session.free
        return free

    async def _reclaim(self) -> None:
        """Take over entries other replicas were handed but never acted on (they died).

        Safe even if the other replica is alive and only slow: CLAIM_RUN lets exactly one
        assignment of an attempt through, and the loser just acknowledges the entry.
        """
        idle_ms = int(self._settings.reclaim_after * 1000)
        held = {item[3] for item in self._backlog}
        for stream in sorted(self._groups - {self._wake_key}):
            reply = await self._store.redis.xautoclaim(
                stream, keys.DISPATCH_GROUP, self._settings.replica_id, idle_ms, "0-0", count=100
            )
            workflow = stream.removeprefix(keys.queue_key(""))
            for entry_id, fields in reply[1] if len(reply) > 1 else []:
                if fields and entry_id not in held:
                    log.warning("taking over queued run %s from a silent replica", fields["run_id"])
                    self._backlog.append(
                        (workflow, fields["run_id"], int(fields["attempt"]), entry_id)
                    )

    async def run(self) -> None:
        """The dispatch loop; runs until cancelled."""
        await self._ensure_group(self._wake_key)
        next_reclaim = 0.0
        while True:
            if time.monotonic() >= next_reclaim:
                try:
                    await self._reclaim()
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.warning("could not look for abandoned queue entries: %s", exc)
                next_reclaim = time.monotonic() + max(0.1, self._settings.reclaim_after / 3)
            await self._drain_backlog()
            capacity = self._capacity()
            streams = {self._wake_key: ">"}
            for name in sorted(capacity):
                await self._ensure_group(keys.queue_key(name))
                streams[keys.queue_key(name)] = ">"
            count = min(capacity.values()) if capacity else 1
            recovering = self._recover
            if recovering:  # everything this replica was handed, for any workflow
                streams = {k: "0" for k in sorted(self._groups | set(streams))}
            try:
                reply = await self._reader.xreadgroup(
                    keys.DISPATCH_GROUP,
                    self._settings.replica_id,
                    streams,
                    count=None if recovering else max(1, count),
                    block=None if recovering else self._block_ms,
                )
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("dispatcher lost Redis (%s); reconnecting", exc)
                self._recover = True
                await asyncio.sleep(0.5)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.clear()  # the group vanished (Redis flushed): create it again
                continue
            self._recover = False
            for stream, entries in reply or []:
                if not entries:
                    continue
                if stream == self._wake_key:
                    await self._store.redis.xack(
                        stream, keys.DISPATCH_GROUP, *[e[0] for e in entries]
                    )
                    continue
                workflow = stream.removeprefix(keys.queue_key(""))
                held = {item[3] for item in self._backlog}
                for entry_id, fields in entries:
                    if not fields:  # trimmed away while pending: nothing left to assign
                        await self._store.redis.xack(stream, keys.DISPATCH_GROUP, entry_id)
                    elif entry_id not in held:
                        self._backlog.append(
                            (workflow, fields["run_id"], int(fields["attempt"]), entry_id)
                        )

    async def _drain_backlog(self) -> None:
        waiting = []
        for item in self._backlog:
            workflow, run_id, attempt, entry_id = item
            session = max(
                (s for s in self.sessions.values() if s.free and workflow in s.workflows),
                key=lambda s: s.free,
                default=None,
            )
            if session is None:
                if any(workflow in s.workflows for s in self.sessions.values()):
                    waiting.append(item)  # assigned here when a local slot frees
                else:  # no local worker serves it any more: hand it back to every replica
                    await self._store.redis.xadd(
                        keys.queue_key(workflow), {"run_id": run_id, "attempt": str(attempt)}
                    )
                    await self._store.redis.xack(
                        keys.queue_key(workflow), keys.DISPATCH_GROUP, entry_id
                    )
                continue
            await self._assign(session, workflow, run_id, attempt)
            await self._store.redis.xack(keys.queue_key(workflow), keys.DISPATCH_GROUP, entry_id)
        self._backlog = waiting

    async def _assign(
        self, session: WorkerSession, workflow: str, run_id: str, attempt: int
    ) -> None:
        claimed = await self._store.claim(
            run_id,
            attempt,
            session.worker_id,
            self._settings.replica_id,
            int(self._settings.lease_timeout * 1000),
            session.workflows[workflow].max_attempts or 3,
        )
        if claimed is None:
            return  # cancelled while queued, or this attempt was already taken
        _, input_json, traceparent = claimed
        session.running[run_id] = attempt
        session.send(
            worker_pb2.ConnectResponse(
                assignment=worker_pb2.Assignment(
                    run_id=run_id,
                    workflow=workflow,
                    input_json=input_json,
                    attempt=attempt,
                    lease_token=attempt,
                    stream_key=keys.events_key(run_id),
                    run_key=keys.run_key(run_id),
                    traceparent=traceparent,
                )
            )
        )

    async def requeue_unsent(self, session: WorkerSession) -> None:
        """Give back assignments still in a closed session's outbox, at once."""
        while not session.outbox.empty():
            message = session.outbox.get_nowait()
            if message is not None and message.HasField("assignment"):
                a = message.assignment
                await self._store.requeue(
                    a.run_id, a.workflow, a.attempt, "worker disconnected before it got the run"
                )


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """The control plane's end of each worker's Connect stream."""

    def __init__(
        self, store: Store, dispatcher: Dispatcher, settings: ControlPlaneSettings
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._settings = settings

    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.HasField("hello"):
            raise InvalidArgumentError(
                "the first message on Connect must be a WorkerHello", "INVALID_WORKER_STREAM"
            )
        hello = first.hello
        if not hello.worker_id or hello.slots < 1:
            raise InvalidArgumentError(
                "WorkerHello needs a worker_id and slots >= 1", "INVALID_WORKER_STREAM"
            )
        session = WorkerSession(
            worker_id=hello.worker_id,
            build_id=hello.build_id,
            workflows={w.name: w for w in hello.workflows},
            slots=hello.slots,
            running={r.run_id: r.attempt for r in hello.running},
        )
        await self._store.announce(
            session.worker_id,
            [(w.name, w.description) for w in session.workflows.values()],
            int(self._settings.heartbeat_interval * 3000),
        )
        previous = self._dispatcher.sessions.get(session.worker_id)
        if previous is not None:
            previous.closed = True
            previous.outbox.put_nowait(None)
        self._dispatcher.sessions[session.worker_id] = session
        log.info(
            "worker %s connected (build %s, %d slots, workflows %s)",
            session.worker_id,
            session.build_id or "-",
            session.slots,
            sorted(session.workflows),
        )
        await context.write(
            worker_pb2.ConnectResponse(
                welcome=worker_pb2.WorkerWelcome(
                    replica_id=self._settings.replica_id,
                    heartbeat_interval_seconds=self._settings.heartbeat_interval,
                    lease_timeout_seconds=self._settings.lease_timeout,
                )
            )
        )
        writer = asyncio.create_task(self._write_loop(session, context))
        await self._dispatcher.wake()
        try:
            async for request in request_iterator:
                await self._handle(session, request)
        finally:
            writer.cancel()
            session.closed = True
            if self._dispatcher.sessions.get(session.worker_id) is session:
                del self._dispatcher.sessions[session.worker_id]
            await asyncio.shield(self._dispatcher.requeue_unsent(session))
            log.info("worker %s disconnected", session.worker_id)

    async def _write_loop(self, session: WorkerSession, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await session.outbox.get()
            if message is None:
                return
            try:
                await context.write(message)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                # The stream is gone; requeue_unsent hands this back when Connect ends.
                session.outbox.put_nowait(message)
                return

    async def _handle(self, session: WorkerSession, request: worker_pb2.ConnectRequest) -> None:
        kind = request.WhichOneof("message")
        if kind in ("finished", "released"):
            ref = getattr(request, kind).run
            if session.running.get(ref.run_id) == ref.attempt:
                del session.running[ref.run_id]
            if kind == "released":
                workflow = await self._store.redis.hget(keys.run_key(ref.run_id), "workflow")
                await self._store.requeue(
                    ref.run_id, workflow or "", ref.attempt, request.released.reason or "released"
                )
            await self._dispatcher.wake()
        elif kind == "draining":
            session.draining = True
        elif kind == "hello":
            raise InvalidArgumentError(
                "WorkerHello may only be sent once per Connect stream", "INVALID_WORKER_STREAM"
            )
