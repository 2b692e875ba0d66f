"""A compute-plane worker: one Connect stream to the control plane, runs as asyncio tasks,
every event, heartbeat and result written straight to Redis (fenced by the attempt)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, start_http_server

from longline import Context, InputTimeout, LeaseLost, Workflow
from longline._channel import bearer, open_channel
from longline._component import component_of
from longline._context import is_child_step
from longline._events import EventBody
from longline._store import (
    RedisError,
    RedisServices,
    RunWriter,
    Store,
    connect,
    encode_event,
    presence_ms,
)
from longline._waits import InputRequest, Parked, schema_error
from longline.v1 import worker_pb2, worker_pb2_grpc

from ._metrics import WorkerMetrics
from ._settings import WorkerSettings

log = logging.getLogger("longline.compute_plane")
# The protocol this worker speaks on Connect (WorkerHello.protocol): 1 takes AssignmentBatch
# and claim-written starts (Assignment.started), and sends WorkerReports to a control plane
# of protocol 1.
PROTOCOL = 1
_tracer = trace.get_tracer("longline.compute_plane")


class _RedisSink:
    """The EventSink of one attempt: fenced appends to the run's stream.

    Output chunks are coalesced: a chunk emitted while the previous output write is still on
    its way waits in a buffer, and the next write carries every chunk buffered by then as
    one OUTPUT event (their texts joined). At light load every chunk is its own event as
    soon as it is emitted; under load the writes grow instead of queueing. Nothing is lost
    or reordered: any other event, and the run's end, first waits for the buffer to land.
    """

    def __init__(
        self, writer: RunWriter, metrics: WorkerMetrics | None, max_event_bytes: int
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._max_event_bytes = max_event_bytes
        self._chunks: list[str] = []
        self._chunks_bytes = 0
        self._chunks_parent = ""
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def output(self, text: str, parent_span_id: str) -> None:
        # The hot path of a streaming workflow: no event body is made for a chunk. Every
        # microsecond here costs more than itself: a slower producer fits fewer chunks into
        # each write, so more writes are made (tests/bench B5).
        _check_size("a OUTPUT event", len(text.encode()), self._max_event_bytes)
        await self._output(text, parent_span_id)

    async def emit(
        self, type: str, body: EventBody, checkpoint: tuple[str, str] | None = None
    ) -> str:
        _check_size(
            f"a {type} event",
            len(body.message.encode()) + len(body.data_json.encode()),
            self._max_event_bytes,
        )
        if type == "OUTPUT" and not (
            body.data_json or body.component or body.span_id or checkpoint
        ):
            await self._output(body.message, body.parent_span_id)
            return ""
        await self.flush()
        return await self._write(type, body, checkpoint)

    async def _write(self, type: str, body: EventBody, checkpoint: tuple[str, str] | None) -> str:
        fields = encode_event(type, self._writer.attempt, body)
        started = time.perf_counter()
        event_id = (await self._writer.append([fields], checkpoint))[0]
        if self._metrics is not None:
            self._metrics.event_write.observe(time.perf_counter() - started)
            if type == "COMPONENT_FINISHED":
                self._metrics.step_finished(body.component, body.data_json)
        return event_id

    async def _output(self, chunk: str, parent_span_id: str) -> None:
        self._raise_failure()
        if self._chunks and parent_span_id != self._chunks_parent:
            await self.flush()  # one event holds the chunks of one span only
        size = len(chunk.encode())
        if self._chunks_bytes + size > self._max_event_bytes > 0:
            await self.flush()  # the coalesced event stays within the event limit
        self._chunks.append(chunk)
        self._chunks_bytes += size
        self._chunks_parent = parent_span_id
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_chunks())
        if self._chunks_bytes >= _COALESCE_BYTES:
            await self.flush()  # a fast producer waits for Redis instead of buffering more
        else:
            await asyncio.sleep(0)  # let the write start

    async def _flush_chunks(self) -> None:
        while self._chunks:
            chunks, parent = self._chunks, self._chunks_parent
            self._chunks, self._chunks_bytes = [], 0
            try:
                body = EventBody(message="".join(chunks), parent_span_id=parent)
                await self._write("OUTPUT", body, None)
            except Exception as exc:  # LeaseLost, Redis: the run's own task raises it next
                self._failure = exc
                return

    async def flush(self) -> None:
        """Wait until every buffered output chunk is written (or raise why it was not)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._chunks and self._failure is None:
            await self._flush_chunks()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        """Stop writing buffered output (the attempt is over)."""
        if self._flusher is not None:
            self._flusher.cancel()


class _RedisWaits:
    """How an attempt waits (the Context's `Waits`): durable sleeps and input requests in
    Redis. A wait longer than `park_after_ms` parks the run, and the attempt ends with Parked;
    a shorter sleep waits in memory, its end recorded so that a replay sleeps only what is
    left, and its end checkpointed once it is over.

    A wait that would park while component steps run beside it (asyncio.gather) first
    records its start (the sleep's end, the input's request and timeout), then lets those
    steps finish and checkpoint, then parks: they are not run again by the next attempt.
    """

    _NEVER = 2**62  # park_after_ms that never parks: record the wait, do not park yet

    def __init__(
        self,
        writer: RunWriter,
        sink: _RedisSink,
        park_after_ms: int,
        *,
        known: Callable[[str], Awaitable[bool]] | None = None,
        max_input_bytes: int = 0,
    ) -> None:
        self._writer = writer
        self._sink = sink
        self._park_after_ms = park_after_ms
        self._known = known  # whether a workflow was ever announced (a child's)
        self._max_input_bytes = max_input_bytes
        self.context: Context | None = None

    @property
    def parked(self) -> bool:
        """Whether a wait of this attempt parked the run."""
        return self.context is not None and self.context.parked

    def _beside(self) -> bool:
        """Whether component steps run beside this wait now."""
        return self.context is not None and self.context.others_running()

    async def sleep(self, step: str, *, delay_ms: int | None, until_ms: int | None) -> None:
        assert self.context is not None
        await self._sink.flush()  # what the run said before it sleeps lands first
        if self._beside():
            _, left_ms = await self._writer.sleep(
                step, delay_ms=delay_ms, until_ms=until_ms, park_after_ms=self._NEVER
            )
            if left_ms > self._park_after_ms:
                await self.context.others_done()
        async with self.context.may_park() as said:
            parked, left_ms = await self._writer.sleep(
                step, delay_ms=delay_ms, until_ms=until_ms, park_after_ms=self._park_after_ms
            )
            said(parked)
        if parked:
            raise Parked()
        if left_ms > 0:
            await asyncio.sleep(left_ms / 1000)
        # Over: checkpointed, so no later attempt asks Redis about this sleep again.
        await self._writer.append([], (step, '{"slept":true}'))

    async def wait_for_input(self, step: str, request: InputRequest) -> Any:
        assert self.context is not None
        await self._sink.flush()
        timeout_ms = None if request.timeout is None else round(request.timeout * 1000)
        take = refuse = why = ""
        may_park = not self._beside()
        while True:
            async with self.context.may_park() as said:
                code, payload = await self._writer.request_input(
                    step,
                    request.name,
                    request.json,
                    timeout_ms,
                    request.schema is not None,
                    take=take,
                    refuse=refuse,
                    why=why,
                    park=may_park,
                )
                said(code == 1)
            if code == 0:
                return json.loads(payload)
            if code == 1:
                raise Parked()
            if code == 3:
                raise InputTimeout(request.name, request.timeout)
            if code == 4:  # it would park: the steps beside it finish first
                await self.context.others_done()
                may_park = True
                continue
            # Sent before the run asked: checked against the schema here, then taken or
            # dropped (its sender was told it was kept, not that it was valid).
            error = await asyncio.to_thread(schema_error, payload, request.schema)
            take, refuse, why = (payload, "", "") if error is None else ("", payload, "")
            if error is not None:
                why = (
                    f"input {request.name} sent before the run asked for it does not match "
                    f"its schema ({error}): dropped; waiting for a valid one"
                )

    async def start_child(
        self,
        step: str,
        workflow: str,
        input_json: str,
        *,
        detached: bool,
        span_id: str,
        parent_span_id: str,
    ) -> str:
        _check_size("the input of a child run", len(input_json.encode()), self._max_input_bytes)
        if self._known is not None and not await self._known(workflow):
            raise LookupError(
                f"workflow {workflow[:100]!r} is not known: no worker has announced it, so a "
                "child run of it would never start (is its worker deployed?)"
            )
        await self._sink.flush()  # what the run said before lands before the child starts
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        _, checkpoint = await self._writer.start_child(
            step,
            workflow,
            input_json,
            traceparent=carrier.get("traceparent", ""),
            detached=detached,
            span_id=span_id,
            parent_span_id=parent_span_id,
        )
        return checkpoint

    async def wait_children(self, wait_step: str, steps: list[str]) -> dict[str, str]:
        assert self.context is not None
        await self._sink.flush()
        may_park = not self._beside()
        while True:
            async with self.context.may_park() as said:
                code, ended = await self._writer.wait_children(wait_step, steps, park=may_park)
                said(code == 1)
            if code == 0:
                return ended
            if code == 1:
                raise Parked()
            # It would park: the steps beside it finish first.
            await self.context.others_done()
            may_park = True


def _labels(text: str) -> dict[str, str]:
    """An assignment's labels (a JSON object of strings; {} from a control plane that sends
    none)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _check_size(what: str, size: int, limit: int) -> None:
    if limit and size > limit:
        raise ValueError(
            f"{what} of {size} bytes is over the limit of {limit} bytes (--max-event-bytes): "
            "stream long output in pieces (one ctx.output per chunk), and keep large data "
            "outside the run (a URL or object key)"
        )


_COALESCE_BYTES = 64 * 1024  # buffered output beyond this waits for Redis

_REFUSED = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


@dataclass(eq=False)
class _Running:
    attempt: int
    workflow: str
    task: asyncio.Task[None]
    # When the lease was last known renewed (time.monotonic() of sending the heartbeat that
    # renewed it, or of receiving the assignment): the lease lasts a lease timeout from then.
    renewed: float = 0.0
    stopped: bool = False  # the lease watch cancelled it


class Worker:
    """Serves `workflows` until request_stop(); `await worker.run()`."""

    def __init__(self, settings: WorkerSettings, workflows: dict[str, Workflow]) -> None:
        if not workflows:
            raise ValueError("a worker needs at least one workflow")
        self.settings = settings
        self.workflows = workflows
        self._running: dict[str, _Running] = {}
        self._outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] | None = None
        # The protocol of the control plane this worker's stream is open to (its welcome):
        # from 1, acceptances and finishes queued together go as one WorkerReports.
        self._peer_protocol = 0
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._heartbeat_interval = settings.heartbeat_interval
        self._lease_ms = int(settings.heartbeat_interval * 5000)
        self._store: Store | None = None
        self._services: RedisServices | None = None
        # Runs the lease watch stopped, to give back once Redis answers again:
        # (run_id, attempt) -> workflow.
        self._to_release: dict[tuple[str, int], str] = {}
        self._beat_now = asyncio.Event()  # set when the interval or lease changes
        # False once the drain is over: the heartbeat loop then ends by itself. Python 3.11's
        # asyncio.wait_for can swallow a cancellation that meets its inner result (fixed in
        # 3.12), and the loop waits in wait_for most of its life: a cancel alone left a
        # stopping worker waiting for it for good (seen on a Redis Cluster, about one stop
        # in ten).
        self._beating = True
        self.metrics = WorkerMetrics(CollectorRegistry()) if settings.metrics_listen else None
        self.metrics_port = 0  # the bound Prometheus port, with settings.metrics_listen

    @property
    def connected(self) -> asyncio.Event:
        """Set while a Connect stream is open."""
        return self._connected

    @property
    def running(self) -> int:
        """How many runs this worker holds."""
        return len(self._running)

    def request_stop(self) -> None:
        """Stop taking runs, let in-flight ones finish until the drain timeout, then stop."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, serve, heartbeat; returns after request_stop() and the drain."""
        s = self.settings
        redis = connect(
            s.redis_url, client_name=f"longline-worker-{s.worker_id}", max_connections=64
        )
        self._store = Store(redis)
        self._services = RedisServices(redis)
        health_server = await self._start_health()
        metrics_server = None
        if self.metrics is not None:
            self.metrics.watch(lambda: len(self._running), s.slots)
            host, _, port = s.metrics_listen.rpartition(":")
            metrics_server, _ = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=self.metrics.registry
            )
            self.metrics_port = metrics_server.server_port
        try:
            async with asyncio.TaskGroup() as tasks:
                session = tasks.create_task(self._session_loop(), name="connect")
                beat = tasks.create_task(self._heartbeat_loop(), name="heartbeat")
                watch = tasks.create_task(self._lease_watch(), name="lease-watch")
                await self._stopping.wait()
                if health_server is not None:
                    await health_server[1].enter_graceful_shutdown()
                await self._drain()
                self._beating = False
                self._beat_now.set()
                session.cancel()
                beat.cancel()
                watch.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self._store.presence.withdraw(s.worker_id, self.workflows, s.build_id)
            if health_server is not None:
                await health_server[0].stop(0)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            await redis.aclose()

    async def _start_health(self) -> tuple[grpc.aio.Server, Any] | None:
        if not self.settings.health_listen:
            return None
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(self.settings.health_listen)
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, servicer

    async def _drain(self) -> None:
        self._send(
            worker_pb2.ConnectRequest(
                draining=worker_pb2.WorkerDraining(deadline_seconds=self.settings.drain_timeout)
            )
        )
        pending = [r.task for r in self._running.values()]
        if pending:
            log.info(
                "draining: waiting up to %gs for %d runs", self.settings.drain_timeout, len(pending)
            )
            await asyncio.wait(pending, timeout=self.settings.drain_timeout)
        for run_id, running in list(self._running.items()):
            await self._release(run_id, running)
        if self._running:
            await asyncio.wait([r.task for r in self._running.values()], timeout=5)
        if self._outbox is not None:
            self._outbox.put_nowait(None)
            await asyncio.sleep(0)  # let the request stream hand over the last messages

    async def _release(self, run_id: str, running: _Running) -> None:
        """Give a run back at the drain deadline: requeued at once, resumed from checkpoints."""
        assert self._store is not None
        log.warning("releasing run %s (attempt %d) at the drain deadline", run_id, running.attempt)
        reason = f"worker {self.settings.worker_id} drained before the run finished"
        try:
            # In Redis first (fenced, so harmless if the lease already moved on): the hand-off
            # does not depend on the control plane being reachable right now.
            await self._store.attempts.requeue(
                run_id, running.attempt, reason, self.settings.worker_id
            )
        except RedisError as exc:
            log.error("could not release run %s (%s); its lease will run out", run_id, exc)
        running.task.cancel()
        self._send(
            worker_pb2.ConnectRequest(
                released=worker_pb2.WorkerReleased(
                    run=worker_pb2.RunRef(run_id=run_id, attempt=running.attempt), reason=reason
                )
            )
        )

    def _send(self, message: worker_pb2.ConnectRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    async def _requests(
        self, outbox: asyncio.Queue[worker_pb2.ConnectRequest | None]
    ) -> AsyncIterator[worker_pb2.ConnectRequest]:
        held: worker_pb2.ConnectRequest | None = None
        while True:
            message = held if held is not None else await outbox.get()
            held = None
            if message is None:
                return
            kind = message.WhichOneof("message")
            if self._peer_protocol < 1 or kind not in ("accepted", "finished"):
                yield message
                continue
            # Acceptances and finishes queued together, in one message (acceptances are read
            # first there, and no run is finished here before it was accepted).
            reports = worker_pb2.WorkerReports()
            ended = False
            while True:
                if kind == "accepted":
                    reports.accepted.append(message.accepted.run)
                else:
                    reports.finished.append(message.finished.run)
                if outbox.empty() or len(reports.accepted) + len(reports.finished) >= 512:
                    break
                following = outbox.get_nowait()
                if following is None:
                    ended = True
                    break
                kind = following.WhichOneof("message")
                if kind not in ("accepted", "finished"):
                    held = following
                    break
                message = following
            yield worker_pb2.ConnectRequest(reports=reports)
            if ended:
                return

    def _hello(self) -> worker_pb2.ConnectRequest:
        s = self.settings
        return worker_pb2.ConnectRequest(
            hello=worker_pb2.WorkerHello(
                worker_id=s.worker_id,
                build_id=s.build_id,
                workflows=[
                    worker_pb2.WorkflowInfo(
                        name=w.name, description=w.description, max_attempts=w.max_attempts
                    )
                    for w in self.workflows.values()
                ],
                slots=s.slots,
                protocol=PROTOCOL,
                running=[
                    worker_pb2.RunRef(run_id=run_id, attempt=r.attempt)
                    for run_id, r in self._running.items()
                ],
            )
        )

    async def _session_loop(self) -> None:
        """Keep one Connect stream open, to any of the targets, reconnecting with backoff."""
        targets = self.settings.targets
        delay = 0.1
        n = 0
        while not self._stopping.is_set():
            target = targets[n % len(targets)]
            n += 1
            outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
            outbox.put_nowait(self._hello())
            self._peer_protocol = 0
            try:
                s = self.settings
                async with open_channel(
                    target, tls=s.tls, tls_ca=s.tls_ca, tls_cert=s.tls_cert, tls_key=s.tls_key
                ) as channel:
                    call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(
                        self._requests(outbox), metadata=bearer(s.token)
                    )
                    async for response in call:
                        if response.HasField("welcome"):
                            self._on_welcome(response.welcome, outbox)
                            delay = 0.1
                        elif response.HasField("assignment"):
                            self._on_assignment(response.assignment)
                        elif response.HasField("assignments"):
                            for assignment in response.assignments.assignments:
                                self._on_assignment(assignment)
                        elif response.HasField("cancel"):
                            self._on_cancel(response.cancel)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSED:  # retried: the token may be rotated in meanwhile
                    log.error("control plane %s refused this worker: %s", target, exc.details())
                else:
                    log.warning("connection to control plane %s lost: %s", target, exc.details())
            finally:
                self._connected.clear()
                self._outbox = None
            if self._stopping.is_set():
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _on_welcome(
        self,
        welcome: worker_pb2.WorkerWelcome,
        outbox: asyncio.Queue[worker_pb2.ConnectRequest | None],
    ) -> None:
        if welcome.heartbeat_interval_seconds > 0:
            self._heartbeat_interval = welcome.heartbeat_interval_seconds
        if welcome.lease_timeout_seconds > 0:
            self._lease_ms = int(welcome.lease_timeout_seconds * 1000)
        self._beat_now.set()
        self._peer_protocol = welcome.protocol
        self._outbox = outbox
        self._connected.set()
        log.info("connected to control plane replica %s", welcome.replica_id)

    def _on_assignment(self, a: worker_pb2.Assignment) -> None:
        workflow = self.workflows.get(a.workflow)
        stale = self._running.get(a.run_id)
        if stale is not None and stale.attempt < a.attempt and workflow is not None:
            # The run moved on from the attempt this worker still holds (its lease ran out, or
            # its assignment was taken back) and came back here: the newer attempt replaces
            # the stale task, whose writes would be refused anyway.
            log.info(
                "run %s: attempt %d replaces attempt %d here", a.run_id, a.attempt, stale.attempt
            )
            del self._running[a.run_id]
            stale.task.cancel()
        held = self._running.get(a.run_id)
        if held is not None and held.attempt == a.attempt and workflow is not None:
            # The same assignment twice (a claim sent again after its reply was lost, by a
            # replica this worker reached after another): it runs already; acknowledged.
            self._send(
                worker_pb2.ConnectRequest(
                    accepted=worker_pb2.WorkerAccepted(
                        run=worker_pb2.RunRef(run_id=a.run_id, attempt=a.attempt)
                    )
                )
            )
            return
        if workflow is None or a.run_id in self._running or self._stopping.is_set():
            reason = "draining" if self._stopping.is_set() else f"cannot run {a.workflow!r} here"
            self._send(
                worker_pb2.ConnectRequest(
                    released=worker_pb2.WorkerReleased(
                        run=worker_pb2.RunRef(run_id=a.run_id, attempt=a.attempt), reason=reason
                    )
                )
            )
            return
        task = asyncio.create_task(self._execute(workflow, a), name=f"run-{a.run_id}")
        # The lease began when the run was claimed, a moment before this: counted from a
        # little earlier, so the worker errs early.
        claimed = time.monotonic() - min(1.0, self._lease_ms / 10_000)
        self._running[a.run_id] = _Running(a.attempt, a.workflow, task, claimed)
        # However the task ends, even cancelled before its first step, the slot is given back.
        task.add_done_callback(lambda done: self._task_done(a.run_id, a.attempt, done))
        self._send(
            worker_pb2.ConnectRequest(
                accepted=worker_pb2.WorkerAccepted(
                    run=worker_pb2.RunRef(run_id=a.run_id, attempt=a.attempt)
                )
            )
        )

    def _task_done(self, run_id: str, attempt: int, task: asyncio.Task[None]) -> None:
        running = self._running.get(run_id)
        if running is None or running.task is not task:
            return
        del self._running[run_id]
        self._send(
            worker_pb2.ConnectRequest(
                finished=worker_pb2.WorkerFinished(
                    run=worker_pb2.RunRef(run_id=run_id, attempt=attempt)
                )
            )
        )

    def _on_cancel(self, cancel: worker_pb2.CancelAssignment) -> None:
        running = self._running.get(cancel.run.run_id)
        if running is not None and running.attempt == cancel.run.attempt:
            log.info("cancelling run %s: %s", cancel.run.run_id, cancel.reason)
            running.task.cancel()

    async def _execute(self, workflow: Workflow, a: worker_pb2.Assignment) -> None:
        assert self._store is not None
        writer = RunWriter(
            self._store,
            a.run_id,
            a.attempt,
            self.settings.worker_id,
            alive=lambda: self._lease_held(a.run_id, a.attempt),
        )
        try:
            if a.started:  # the claim wrote RUN_STARTED and told what open() would read
                writer.opened(a.idem_key, a.parent_run_id, a.tenant)
                checkpoints = await writer.checkpoints() if a.checkpoints else {}
            else:
                checkpoints = await writer.open()
        except RedisError as exc:  # given back once Redis answers
            log.error("run %s attempt %d could not start: %s", a.run_id, a.attempt, exc)
            self._to_release[a.run_id, a.attempt] = a.workflow
            return
        sink = _RedisSink(writer, self.metrics, self.settings.max_event_bytes)
        waits = _RedisWaits(
            writer,
            sink,
            round(self.settings.park_after * 1000),
            known=self._store.presence.known,
            max_input_bytes=self.settings.max_event_bytes,
        )
        ctx = Context(
            a.run_id,
            a.attempt,
            workflow.name,
            sink,
            checkpoints,
            self._services,
            waits,
            labels=_labels(a.labels_json),
        )
        waits.context = ctx
        ctx.activate()  # this task's own copy of the context variables
        # The attempt is traced as a child of the run's span, whichever process made it.
        attempt_span = _tracer.start_span(
            f"attempt {a.attempt}: {workflow.name}",
            context=propagate.extract({"traceparent": a.traceparent}) if a.traceparent else None,
            attributes={
                "longline.run_id": a.run_id,
                "longline.workflow": workflow.name,
                "longline.attempt": a.attempt,
                "longline.worker_id": self.settings.worker_id,
                "longline.checkpoints": len(checkpoints),
            },
        )
        otel_context.attach(trace.set_span_in_context(attempt_span))
        span_context = attempt_span.get_span_context()
        if span_context.is_valid:
            # The OpenTelemetry span's id, so the events' spans are the exported ones (where
            # the claim wrote RUN_STARTED under another id, the trace nests this one's
            # components under that attempt all the same: control_plane._trace).
            ctx.span_id = format(span_context.span_id, "016x")
        elif a.started:
            ctx.span_id = a.span_id
        resumed = f", resuming after {len(checkpoints)} finished steps" if checkpoints else ""
        try:
            if not a.started:
                await self._write_started(sink, a, ctx.span_id, checkpoints, resumed)
            try:
                result = await workflow(ctx, json.loads(a.input_json or "null"))
            except BaseExceptionGroup as group:
                # A TaskGroup in the workflow, one of whose tasks parked the run: parked.
                if waits.parked and group.subgroup(Parked) is not None:
                    raise Parked() from group
                raise
            try:
                result_json = json.dumps(result)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"workflow {workflow.name!r} returned a value that is not "
                    f"JSON-serialisable: {exc}"
                ) from exc
            _check_size("the result", len(result_json.encode()), self.settings.max_event_bytes)
            await sink.flush()  # output still buffered lands before the result
            await writer.finish(
                "SUCCEEDED",
                result_json=result_json,
                event=encode_event(
                    "RUN_SUCCEEDED",
                    a.attempt,
                    EventBody(message="succeeded", data_json=result_json, span_id=ctx.span_id),
                ),
            )
            if self.metrics is not None:
                self.metrics.finished.labels("succeeded").inc()
            await self._wake_parent(writer)
        except Parked:
            log.info("run %s attempt %d parked: it waits, holding no worker", a.run_id, a.attempt)
            attempt_span.set_attribute("longline.parked", True)
            if self.metrics is not None:
                self.metrics.finished.labels("parked").inc()
        except LeaseLost:
            if waits.parked:  # written on the way out of a parked attempt: refused, as meant
                log.info("run %s attempt %d parked", a.run_id, a.attempt)
                return
            attempt_span.set_status(trace.Status(trace.StatusCode.ERROR, "lease lost"))
            log.info("run %s attempt %d no longer ours; abandoned", a.run_id, a.attempt)
            # Refused by Redis (the run moved on: giving it back is a fenced no-op), or given
            # up here because the lease could not be renewed: then it goes back to the queue
            # once Redis answers, not as a lost attempt.
            self._to_release[a.run_id, a.attempt] = a.workflow
        except RedisError as exc:
            # Nothing more can be written now: given back once Redis answers.
            log.error("run %s attempt %d lost Redis: %s", a.run_id, a.attempt, exc)
            self._to_release[a.run_id, a.attempt] = a.workflow
        except Exception as exc:
            if waits.parked:  # a step beside a wait failed after the wait parked the run
                log.info(
                    "run %s attempt %d parked; %s beside the wait fails again when it resumes",
                    a.run_id,
                    a.attempt,
                    type(exc).__name__,
                )
                return
            attempt_span.record_exception(exc)
            attempt_span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}"))
            await self._fail(writer, sink, ctx, exc)
            if self.metrics is not None:
                self.metrics.finished.labels("failed").inc()
        finally:
            sink.close()
            attempt_span.set_attribute("longline.replayed_steps", len(ctx.replayed))
            attempt_span.end()

    async def _write_started(
        self,
        sink: _RedisSink,
        a: worker_pb2.Assignment,
        span_id: str,
        checkpoints: dict[str, str],
        resumed: str,
    ) -> None:
        """RUN_STARTED, written by the worker: the control plane's claim did not (protocol 0)."""
        await sink.emit(
            "RUN_STARTED",
            EventBody(
                message=f"attempt {a.attempt} started on worker {self.settings.worker_id}"
                + resumed,
                span_id=span_id,
                data_json=json.dumps(
                    {
                        "worker": self.settings.worker_id,
                        "build": self.settings.build_id,
                        # Child runs' starts are not steps the trace replays: their
                        # CHILD_STARTED events show them.
                        "checkpoints": sorted(c for c in checkpoints if not is_child_step(c)),
                    }
                ),
            ),
        )

    async def _fail(
        self, writer: RunWriter, sink: _RedisSink, ctx: Context, exc: Exception
    ) -> None:
        component = component_of(exc)
        kind, text = type(exc).__name__, str(exc)
        error = {"type": kind, "message": text, "component": component, "attempt": ctx.attempt}
        where = f" in {component}" if component else ""
        log.info("run %s failed%s: %s: %s", ctx.run_id, where, kind, text)
        try:
            with contextlib.suppress(Exception):
                await sink.flush()  # the output written before the failure, then the failure
            await writer.finish(
                "FAILED",
                error=(kind, text, component),
                event=encode_event(
                    "RUN_FAILED",
                    ctx.attempt,
                    EventBody(
                        message=f"{kind}{where}: {text}",
                        data_json=json.dumps(error),
                        component=component,
                        span_id=ctx.span_id,
                    ),
                ),
            )
        except (LeaseLost, RedisError) as lost:
            log.info("run %s: its failure could not be written: %s", ctx.run_id, lost)
            return
        await self._wake_parent(writer)

    async def _wake_parent(self, writer: RunWriter) -> None:
        """A child run ended: wake its parent now, if it waits for it. Best effort: the
        parent's timer was made due with the child's end, so the control plane's monitor
        wakes it within a round otherwise."""
        if not writer.parent or self._store is None:
            return
        try:
            await self._store.waits.wake([writer.parent])
        except RedisError as exc:
            log.info(
                "run %s: its parent %s is left to the monitor to wake: %s",
                writer.run_id,
                writer.parent,
                exc,
            )

    def _lease_held(self, run_id: str, attempt: int) -> bool:
        """Whether this worker can still count on holding the attempt: its lease was renewed
        less than a lease timeout ago."""
        running = self._running.get(run_id)
        return (
            running is not None
            and running.attempt == attempt
            and time.monotonic() - running.renewed < self._lease_ms / 1000
        )

    async def _heartbeat_loop(self) -> None:
        """Extend every held lease and this worker's presence, every heartbeat interval.

        A round that Redis does not answer within half a lease is given up (a black-holed
        connection answers nothing, ever) and the next round tries again; runs
        whose lease could not be renewed for a lease timeout are stopped by _lease_watch.
        """
        assert self._store is not None
        failures = 0
        while self._beating:
            held = [(run_id, r.attempt) for run_id, r in self._running.items()]
            sent = time.monotonic()
            try:
                # Half a lease: room for one more round before the lease is in doubt.
                alive = await asyncio.wait_for(
                    self._beat(held), timeout=max(0.5, self._lease_ms / 2000)
                )
            except (RedisError, OSError, TimeoutError) as exc:
                # Not renewed: counted as such. Tried again within an interval (the interval
                # the control plane gives, which may be shorter than when the loop began).
                failures += 1
                delay = self._heartbeat_interval * (0.5 + random.random() / 2)
                log.warning(
                    "heartbeat: %s: %s; retrying in %.2f s (failure %d)",
                    type(exc).__name__,
                    str(exc)[:200] or "no reply in time",
                    delay,
                    failures,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                await self._release_stopped()
            except (RedisError, OSError) as exc:  # given back at a later round
                log.warning("could not give back stopped runs yet: %s", exc)
            for (run_id, attempt), ok in zip(held, alive, strict=True):
                running = self._running.get(run_id)
                if running is None or running.attempt != attempt:
                    continue
                if ok:
                    running.renewed = max(running.renewed, sent)
                else:
                    log.warning("run %s attempt %d lost its lease; stopping it", run_id, attempt)
                    running.task.cancel()
            # Until the next round, or at once when the control plane says how often to beat
            # (its interval may be shorter than this worker's default that the wait began with).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), timeout=self._heartbeat_interval)
            self._beat_now.clear()

    async def _release_stopped(self) -> None:
        """Give back the runs the lease watch stopped, now that Redis answers: a run whose
        lease the control plane has not expired yet (it could not reach Redis either) goes
        back to the queue at once and does not count as a lost attempt. A run that moved on
        meanwhile is left as it is (the requeue is fenced)."""
        assert self._store is not None
        for run_id, attempt in list(self._to_release):
            await self._store.attempts.requeue(
                run_id,
                attempt,
                f"worker {self.settings.worker_id} could not renew its lease while Redis was "
                "out of reach and stopped the run",
                self.settings.worker_id,
                stopped=True,
            )
            del self._to_release[run_id, attempt]

    async def _beat(self, held: list[tuple[str, int]]) -> list[bool]:
        assert self._store is not None
        s = self.settings
        alive = await self._store.attempts.heartbeat(held, self._lease_ms, s.worker_id)
        await self._store.presence.announce(
            s.worker_id,
            [(w.name, w.description) for w in self.workflows.values()],
            presence_ms(self._heartbeat_interval),
            s.build_id,
            draining=self._stopping.is_set(),
        )
        return alive

    async def _lease_watch(self) -> None:
        """Stop every run whose lease this worker could not renew for a lease timeout.

        By then the control plane has taken the run back and another worker may run it: cut
        off from Redis (a partition, a black-holed connection, a failover), this worker stops
        its own work instead of running the same steps as the new holder.
        """
        while True:
            await asyncio.sleep(min(0.5, self._heartbeat_interval / 2))
            now = time.monotonic()
            for run_id, running in list(self._running.items()):
                if now - running.renewed >= self._lease_ms / 1000 and not running.stopped:
                    running.stopped = True
                    self._to_release[run_id, running.attempt] = running.workflow
                    log.warning(
                        "run %s attempt %d: lease not renewed for %.1f s (this process was "
                        "paused, or Redis out of reach); stopping it, the control plane has "
                        "moved it on",
                        run_id,
                        running.attempt,
                        now - running.renewed,
                    )
                    running.task.cancel()
