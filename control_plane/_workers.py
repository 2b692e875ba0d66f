"""WorkerService.Connect and the dispatcher that pushes queued runs to connected workers.

Queues are Redis streams, one per workflow, read through one consumer group by
every replica: each queued attempt is delivered to exactly one replica, and
CLAIM_RUN makes it RUNNING on exactly one worker.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from longline._store import (
    Backoff,
    BuildView,
    Claimed,
    ClaimRequest,
    InvalidArgumentError,
    PermissionDeniedError,
    QueueEntry,
    Queues,
    RedisError,
    Store,
    TakeBack,
    WrongBuild,
    check_build_id,
    check_workflow_name,
    keys,
    presence_ms,
)
from longline.v1 import worker_pb2, worker_pb2_grpc

from ._auth import current
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
    # Assignments sent and not yet acknowledged: run_id -> (attempt, workflow, when sent).
    unacked: dict[str, tuple[int, str, float]] = field(default_factory=dict)
    # It let an assignment go unacknowledged (a stalled process, a half-open connection):
    # it gets nothing more until it says something on its stream.
    unresponsive: bool = False
    # When its presence in Redis runs out (time.monotonic()), as last read: past it, it
    # stopped heartbeating (stalled, or cut off from Redis) and is not chosen.
    present_until: float = float("inf")
    connected_at: float = field(default_factory=time.monotonic)

    @property
    def silent(self) -> bool:
        """Its presence ran out: it has not heartbeat for five heartbeat intervals."""
        return time.monotonic() >= self.present_until

    principal: str = ""  # the name of the token it connected with
    # The worker's protocol (WorkerHello.protocol): from 1 it takes assignment batches and
    # assignments whose RUN_STARTED the claim wrote.
    protocol: int = 0

    @property
    def answering(self) -> bool:
        """It acknowledges what it is sent and heartbeats: a run can wait for its slots (a
        run meant for a worker that does not answer goes back to the queue instead)."""
        return not (self.unresponsive or self.silent)

    @property
    def free(self) -> int:
        """Slots this worker can take runs into now."""
        if self.draining or self.closed or self.unresponsive or self.silent:
            return 0
        return max(0, self.slots - len(self.running))

    def send(self, message: worker_pb2.ConnectResponse) -> None:
        """Queue a message for the worker's stream."""
        self.outbox.put_nowait(message)


# The protocol this control plane speaks on Connect (WorkerWelcome.protocol): 1 takes
# WorkerReports, and sends AssignmentBatch and claim-written starts to workers of protocol 1.
PROTOCOL = 1
MAX_BATCH = 256  # assignments in one AssignmentBatch at most
# Bytes of assignments in one batch at most: well under a worker's 4 MiB receive limit, which
# one assignment alone always fits in (an input is at most --max-input-bytes, 1 MiB).
MAX_BATCH_BYTES = 1024 * 1024
ROUTING_REFRESH = 1.0  # seconds between reads of the builds (blue-green routing)
# Seconds between reads of every queue stream. Notices are lost only with the subscription's
# connection, and every stream is read again when it is made anew: this is a safety net.
FULL_READ = 10.0


# How long a stopping control plane waits for its ended streams' give-backs (Dispatcher.
# given_back) before it closes its Redis clients. Seconds: each is a few round trips.
GIVE_BACK_WAIT = 5.0


class Dispatcher:
    """Reads the queues that local workers have room for and assigns runs.

    Which queues a worker reads follows its build (see longline._store.BuildView): the view
    of current builds and live builds is refreshed every ROUTING_REFRESH seconds, at once
    after a promotion here, and whenever a claim finds the view was stale.

    A queue is one stream per partition. The dispatcher reads a stream only when it may
    hold something: a notice (`Queues.notices`) says an attempt was queued there, and the
    stream stays marked until a read of it comes back short. It reads every stream again
    when its subscription starts over (notices were missed meanwhile), and every FULL_READ
    seconds. Between reads it waits for a notice or a local wake (a slot freed, a worker
    came), never in Redis.
    """

    def __init__(self, store: Store, queues: Queues, settings: ControlPlaneSettings) -> None:
        self._store = store
        self._queues = queues
        self._settings = settings
        self.sessions: dict[str, WorkerSession] = {}
        self._groups: set[str] = set()
        self._backlog: list[QueueEntry] = []
        # Entries delivered to this replica but not yet handled are in its pending list; they
        # are re-read from there at start and after any lost reply, so none is stranded.
        self._recover = True
        # stream -> the notice count when it was last marked: a read that comes back short
        # clears the mark only if no notice came in while it was on its way.
        self._marked: dict[str, int] = {}
        self._notices = 0
        self._read_all = True  # every stream, not only the marked ones (at start, after gaps)
        self._next_full = 0.0
        self._rotation = 0
        self._woken = asyncio.Event()
        self._view = BuildView()
        self._view_due = 0.0
        self._draining = asyncio.Lock()
        self._next_reclaim = 0.0
        # Give-backs of sessions that ended, running on even when the stream's handler was
        # cancelled; the control plane waits for them before it closes its Redis clients.
        self._giving_back: set[asyncio.Task[None]] = set()

    async def wake(self) -> None:
        """Make the dispatcher look at its workers again (a slot freed, a worker came)."""
        self._woken.set()

    @property
    def backlog(self) -> int:
        """Queue entries this replica holds, waiting for a local slot."""
        return len(self._backlog)

    async def builds_changed(self) -> None:
        """Read the builds again before the next dispatch (a promotion, a draining worker)."""
        self._view_due = 0.0
        self._read_all = True  # queues a worker newly reads may hold entries already
        await self.wake()

    async def watch_notices(self) -> None:
        """Follow every partition's notices, marking the streams they name; runs until
        cancelled, and survives every error with backoff (reading every stream again once
        subscribed anew)."""
        backoff = Backoff()
        while True:
            try:
                async for stream in self._queues.notices():
                    backoff.reset()
                    if stream is None:  # (re)subscribed: what was sent before went unseen
                        self._read_all = True
                    elif stream in self._groups:  # a stream this replica reads
                        self._notices += 1
                        self._marked[stream] = self._notices
                    self._woken.set()
                raise RedisError("the notice subscription ended")
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError):
                    log.exception("notice watch: unexpected error; it goes on")
                self._read_all = True
                self._woken.set()
                await backoff.wait(log, "queue notices", exc)

    def _readers(self) -> dict[tuple[str, str], list[WorkerSession]]:
        """queue (workflow, build) -> the local sessions that take runs from it (free slots
        or not)."""
        readers: dict[tuple[str, str], list[WorkerSession]] = {}
        for session in self.sessions.values():
            if session.closed or session.draining:
                continue
            for name in session.workflows:
                for queue in self._view.queues_for(name, session.build_id):
                    readers.setdefault(queue, []).append(session)
        return readers

    async def _refresh_view(self) -> None:
        if time.monotonic() < self._view_due:
            return
        sessions = list(self.sessions.values())
        workflows = {name for s in sessions for name in s.workflows}
        view = self._view = await self._store.builds.view(workflows)
        self._view_due = time.monotonic() + ROUTING_REFRESH
        for session in sessions:
            # A worker that stopped heartbeating (its presence runs out) is not chosen, however
            # many free slots it claims; it is again once its heartbeats land. A session that
            # connected after the read began may not be in it yet.
            if session.draining or session.connected_at >= view.loaded:
                continue
            was_silent = session.silent
            left = view.present.get(session.worker_id)
            session.present_until = view.loaded + (left / 1000 if left is not None else 0.0)
            if session.silent and not was_silent:
                log.warning(
                    "worker %s stopped heartbeating: no runs go to it until it does again",
                    session.worker_id,
                )

    async def watch_acks(self) -> None:
        """Take back unacknowledged assignments on a timer of their own (a quarter of the
        ack timeout, at most 0.25 s), not only between the dispatcher's rounds: the
        take-back must come before the lease runs out, or the attempt would count as lost.
        Runs until cancelled; survives every error with backoff."""
        backoff = Backoff()
        every = min(0.25, self._ack_timeout() / 4)
        while True:
            try:
                await self._expire_unacked()
            except Exception as exc:
                if not isinstance(exc, RedisError):
                    log.exception("ack watch: unexpected error; it goes on")
                await backoff.wait(log, "ack watch", exc)
                continue
            backoff.reset()
            await asyncio.sleep(every)

    def _ack_timeout(self) -> float:
        # Within half a lease at most: an attempt taken back by its lease running out would
        # count as lost, though the worker never had it.
        return min(self._settings.ack_timeout, self._settings.lease_timeout / 2)

    async def _expire_unacked(self) -> None:
        """Take back assignments a worker did not acknowledge within the ack timeout.

        The worker never showed it had the run (a stalled process keeps its TCP connection
        up; a half-open connection swallows what is sent), so the run goes back to the queue
        as the next attempt at once, without counting as a lost attempt, and that worker
        gets nothing more until it speaks again. If it did start the run after all, its
        writes are refused (the attempt moved on) and it stops.
        """
        timeout = self._ack_timeout()
        now = time.monotonic()
        for session in list(self.sessions.values()):
            late = [
                (run_id, attempt, workflow)
                for run_id, (attempt, workflow, sent) in session.unacked.items()
                if now - sent >= timeout
            ]
            for run_id, attempt, _ in late:
                # Out of the book before any await: an acknowledgement, a finish or the end of
                # the stream may come while the take-back is on its way.
                entry = session.unacked.pop(run_id, None)
                if entry is None or entry[0] != attempt:
                    continue
                # Passed over from now on, before the await: the run taken back is queued again
                # in the same script, and the dispatcher must not hand it straight back here.
                was_unresponsive, session.unresponsive = session.unresponsive, True
                try:
                    outcome = await self._store.attempts.take_back(
                        run_id,
                        attempt,
                        f"worker {session.worker_id} did not acknowledge attempt {attempt} "
                        f"within {timeout:g} s (stalled, or its connection is half-open); "
                        f"retrying as attempt {attempt + 1}",
                        session.worker_id,
                    )
                except RedisError:
                    session.unresponsive = was_unresponsive
                    session.unacked.setdefault(run_id, entry)  # tried again next round
                    raise
                if outcome is TakeBack.NOT_HELD and session.running.get(run_id) == attempt:
                    del session.running[run_id]  # it ended or moved on meanwhile: slot free
                if outcome is TakeBack.TAKEN_BACK:
                    if not was_unresponsive:
                        log.warning(
                            "worker %s did not acknowledge run %s within %g s: no runs go to "
                            "it until it answers",
                            session.worker_id,
                            run_id,
                            timeout,
                        )
                    if session.running.get(run_id) == attempt:
                        del session.running[run_id]
                else:
                    session.unresponsive = was_unresponsive
                # STARTED: the acknowledgement was lost, not the run (the worker has written
                # for it already); its lease covers it from here.

    async def _reclaim(self) -> None:
        """Take over entries other replicas were handed but never acted on (they died).

        Safe even if the other replica is alive and only slow: CLAIM_RUN lets exactly one
        assignment of an attempt through, and the loser just acknowledges the entry.
        """
        idle_ms = int(self._settings.reclaim_after * 1000)
        held = {(item.stream, item.entry_id) for item in self._backlog}
        for entry in await self._queues.reclaim(sorted(self._groups), idle_ms):
            if (entry.stream, entry.entry_id) not in held:
                log.warning("taking over queued run %s from a silent replica", entry.run_id)
                self._backlog.append(entry)

    async def run(self) -> None:
        """The dispatch loop; runs until cancelled.

        It survives every Redis error: one log line, a capped backoff, and the next round
        starts by re-reading what this replica was handed. A consumer group that vanished
        (an expiry, a flush, a Redis that restarted empty) is made again.
        """
        backoff = Backoff()
        while True:
            try:
                if not await self._round():
                    # asyncio.wait, not asyncio.timeout: on Python 3.11 a timeout that
                    # expires as the task is cancelled can turn the cancellation into a
                    # TimeoutError, and this loop would then never end.
                    woken = asyncio.ensure_future(self._woken.wait())
                    try:
                        await asyncio.wait({woken}, timeout=self._nap())
                    finally:
                        woken.cancel()
                    self._woken.clear()
            except RedisError as exc:
                self._recover = True
                if "NOGROUP" in str(exc):
                    self._groups.clear()  # a group or its stream vanished: made again
                await backoff.wait(log, "dispatcher", exc)
            except Exception as exc:  # a bug must not take the replica down with it
                log.exception("dispatcher: unexpected error; it goes on")
                self._recover = True
                await backoff.wait(log, "dispatcher", exc)
            else:
                backoff.reset()

    def _nap(self) -> float:
        """How long to wait for a notice or a wake before the next round's upkeep."""
        now = time.monotonic()
        due = min(self._next_full, self._view_due, self._next_reclaim)
        return min(max(due - now, 0.01), FULL_READ)

    async def _round(self) -> bool:
        """One round: upkeep, assign what the backlog holds, then read the marked streams
        that local workers have room for. True when it read something (go again at once)."""
        await self._refresh_view()
        if time.monotonic() >= self._next_reclaim:
            await self._reclaim()
            self._next_reclaim = time.monotonic() + max(0.1, self._settings.reclaim_after / 3)
        await self._drain_backlog()
        if time.monotonic() >= self._next_full:
            self._read_all = True
        readers = self._readers()
        capacity: dict[tuple[str, str], int] = {}
        for queue, sessions in readers.items():
            free = sum(s.free for s in sessions)
            if free:
                capacity[queue] = free
        wanted = [s for queue in sorted(readers) for s in self._queues.streams(*queue)]
        missing = [s for s in wanted if s not in self._groups]
        if missing:
            await self._queues.ensure_groups(missing)
            self._groups.update(missing)
            self._recover = True  # entries an earlier life of this replica was handed first
            self._read_all = True  # and what the new streams hold (no notice was followed)
        if self._recover:  # everything this replica was handed, for any workflow
            entries = await self._queues.read({s: ("0", None) for s in sorted(self._groups)})
            self._recover = False
            self._hold(entries)
            return True  # then the new entries, at once
        if self._read_all:
            # Every stream local workers read, with room or not: a slot that frees later
            # finds its streams marked.
            self._read_all = False
            self._next_full = time.monotonic() + FULL_READ
            self._marked = {s: n for s, n in self._marked.items() if s in self._groups}
            for stream in wanted:
                self._marked.setdefault(stream, self._notices)
        plan = self._plan(capacity)
        if not plan:
            return False
        seen = {stream: self._marked.get(stream, 0) for stream in plan}
        entries = await self._queues.read({s: (">", count) for s, count in plan.items()})
        got: dict[str, int] = {}
        for e in entries:
            got[e.stream] = got.get(e.stream, 0) + 1
        for stream, count in plan.items():
            # Came back short: nothing more there, unless a notice came in meanwhile.
            if got.get(stream, 0) < count and self._marked.get(stream) == seen[stream]:
                self._marked.pop(stream, None)
        self._hold(entries)
        # Go on at once while marked streams of queues with room are left unread.
        return bool(entries) or any(
            s in self._marked for queue in capacity for s in self._queues.streams(*queue)
        )

    def _plan(self, capacity: dict[tuple[str, str], int]) -> dict[str, int]:
        """stream -> how many entries to read: each queue's free slots shared among its
        marked streams, starting at a rotating partition so that none waits behind others."""
        plan: dict[str, int] = {}
        self._rotation += 1
        for queue, free in capacity.items():
            streams = [s for s in self._queues.streams(*queue) if s in self._marked]
            if not streams:
                continue
            turn = self._rotation % len(streams)
            streams = streams[turn:] + streams[:turn]
            share, extra = divmod(free, len(streams))
            for i, stream in enumerate(streams[:free]):
                plan[stream] = plan.get(stream, 0) + share + (1 if i < extra else 0)
        return plan

    def _hold(self, entries: list[QueueEntry]) -> None:
        # Entry ids are unique within a stream only (two queues can hand out the same id).
        held = {(item.stream, item.entry_id) for item in self._backlog}
        self._backlog += [e for e in entries if (e.stream, e.entry_id) not in held]

    async def drain_now(self) -> None:
        """Assign what the backlog holds to free local slots now (a slot just freed). A Redis
        error is only logged: the entries stay in the backlog and the dispatch loop retries,
        and the worker's stream, which called this, is not broken by it."""
        try:
            await self._drain_backlog()
        except RedisError as exc:
            log.warning("could not assign queued runs now (%s); the dispatcher retries", exc)

    async def _drain_backlog(self) -> None:
        """Assign backlog entries to local workers with room: every claim of the batch in one
        pipeline, every acknowledgement in another. Runs under a lock: the dispatch loop and
        a freed slot may both call it."""
        async with self._draining:
            items, self._backlog = self._backlog, []
            waiting: list[QueueEntry] = []
            back: list[QueueEntry] = []
            plan: list[tuple[WorkerSession, QueueEntry]] = []
            readers = self._readers()
            free = {id(s): s.free for s in self.sessions.values()}
            for item in items:
                queue = (item.workflow, item.build)
                candidates = [s for s in readers.get(queue, []) if free[id(s)] > 0]
                if not candidates:
                    if any(s.answering for s in readers.get(queue, [])):
                        waiting.append(item)  # assigned here when a local slot frees
                    else:  # no local worker takes it any more: hand it back to every replica
                        back.append(item)
                    continue
                session = max(candidates, key=lambda s: free[id(s)])
                free[id(session)] -= 1
                plan.append((session, item))
            try:
                claims = await self._store.attempts.claim_many(
                    [
                        ClaimRequest(
                            item.run_id,
                            item.attempt,
                            session.worker_id,
                            self._settings.replica_id,
                            int(self._settings.lease_timeout * 1000),
                            session.workflows[item.workflow].max_attempts or 3,
                            session.build_id,
                            secrets.token_hex(8) if session.protocol >= 1 else "",
                        )
                        for session, item in plan
                    ]
                )
            except BaseException:
                self._backlog = items + self._backlog  # nothing was lost: retried next time
                raise
            done: dict[str, list[str]] = {}
            failed: list[RedisError] = []
            behind: set[str] = set()
            orphans: list[tuple[WorkerSession, QueueEntry]] = []
            for (session, item), claimed in zip(plan, claims, strict=True):
                if isinstance(claimed, RedisError):
                    failed.append(claimed)  # not claimed: tried again from the backlog
                    waiting.append(item)
                    continue
                if isinstance(claimed, WrongBuild):
                    # It has not started yet and another build was promoted meanwhile; or
                    # the partition's copy of the current build is behind (a promotion cut
                    # short): made whole below, before the entry goes back.
                    self._view_due = 0.0
                    behind.add(item.workflow)
                    back.append(item)
                    continue
                if claimed is not None:
                    if session.closed:  # its stream ended while the claim was on its way
                        orphans.append((session, item))
                    else:
                        self._send_assignment(session, item, claimed)
                # else: cancelled while queued, or this attempt was already taken
                done.setdefault(item.stream, []).append(item.entry_id)
            self._backlog = waiting + self._backlog
            if behind:
                try:
                    await self._store.builds.sync(behind)
                except RedisError as exc:  # the entries go back all the same; the sweep syncs
                    log.warning("could not make the current builds' copies whole (%s)", exc)
            if back:
                # Handed back as a new entry first; the old one is acknowledged only where its
                # copy landed (under OOM Redis refuses XADD but not XACK: an entry acknowledged
                # without its copy would strand the run QUEUED).
                landed = await self._queues.hand_back(back)
                for item, copied in zip(back, landed, strict=True):
                    if copied:
                        done.setdefault(item.stream, []).append(item.entry_id)
                        # Read again here too, should its notice be lost.
                        self._notices += 1
                        self._marked[item.stream] = self._notices
                    else:
                        self._backlog.append(item)  # still pending here: tried again
            await self._queues.ack(done)
            for session, item in orphans:
                await self._take_back(session, item.run_id, item.attempt, item.workflow)
            if failed:
                raise failed[0]  # the loop backs off; what was not claimed waits here

    def _send_assignment(self, session: WorkerSession, item: QueueEntry, claimed: Claimed) -> None:
        input_json, traceparent = claimed.input_json, claimed.traceparent
        session.running[item.run_id] = item.attempt
        session.unacked[item.run_id] = (item.attempt, item.workflow, time.monotonic())
        session.send(
            worker_pb2.ConnectResponse(
                assignment=worker_pb2.Assignment(
                    run_id=item.run_id,
                    workflow=item.workflow,
                    input_json=input_json,
                    attempt=item.attempt,
                    lease_token=item.attempt,
                    stream_key=keys.events_key(item.run_id),
                    run_key=keys.run_key(item.run_id),
                    traceparent=traceparent,
                    labels_json=claimed.labels_json,
                    started=bool(claimed.span_id),
                    span_id=claimed.span_id,
                    idem_key=claimed.idem_key,
                    parent_run_id=claimed.parent_run_id,
                    tenant=claimed.tenant,
                    checkpoints=claimed.checkpoints,
                )
            )
        )

    async def give_back(self, session: WorkerSession) -> None:
        """requeue_unsent(session) for a session that ended, carried on to its end when the
        caller (the stream's handler, cancelled by a cut stream or a stopping server) is
        cancelled meanwhile; given_back() waits for it."""
        task = asyncio.create_task(self.requeue_unsent(session), name="give-back")
        self._giving_back.add(task)
        task.add_done_callback(self._gave_back)
        await asyncio.shield(task)

    def _gave_back(self, task: asyncio.Task[None]) -> None:
        self._giving_back.discard(task)
        if not task.cancelled() and task.exception() is not None:  # its caller may be gone
            log.error("a give-back failed: %r; its runs' leases requeue them", task.exception())

    async def given_back(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the give-backs of every stream that ended or is
        ending (a stopping control plane, its server stopped, before it closes its Redis
        clients): a stream's handler may not have run its end yet when the server's stop
        returns, so this waits while a session is still registered too. What is left then
        is cancelled (and so when this is), and those runs' leases requeue them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (self._giving_back or self.sessions) and (left := deadline - loop.time()) > 0:
                if self._giving_back:
                    await asyncio.wait(set(self._giving_back), timeout=left)
                else:  # a handler yet to end: its give-back starts when it does
                    await asyncio.sleep(min(0.01, left))
        finally:
            late = {task for task in self._giving_back if not task.done()}
            for task in late:
                task.cancel()
            if late or self.sessions:
                log.warning(
                    "stopping with %d give-backs unfinished and %d worker streams not ended "
                    "after %g s; the leases of their runs requeue them",
                    len(late),
                    len(self.sessions),
                    timeout,
                )
            if late:
                await asyncio.wait(late, timeout=1)

    async def requeue_unsent(
        self, session: WorkerSession, keep: dict[str, int] | None = None
    ) -> None:
        """Give back, at once, what a closed (or replaced) session's worker never showed it
        had: the assignments still in its outbox and those it did not acknowledge, but not
        what it wrote for already, nor the runs in `keep` (what it said it runs when it
        connected again)."""
        unsent: dict[str, tuple[int, str]] = {
            run_id: (attempt, workflow)
            for run_id, (attempt, workflow, _) in session.unacked.items()
        }
        stop = False
        while not session.outbox.empty():
            message = session.outbox.get_nowait()
            if message is None:
                stop = True
            elif message.HasField("assignment"):
                a = message.assignment
                unsent[a.run_id] = (a.attempt, a.workflow)
        if stop:
            session.outbox.put_nowait(None)  # its write loop still ends
        session.unacked.clear()
        for run_id, (attempt, workflow) in unsent.items():
            if (keep or {}).get(run_id) != attempt:
                await self._take_back(session, run_id, attempt, workflow)

    async def _take_back(
        self, session: WorkerSession, run_id: str, attempt: int, workflow: str
    ) -> None:
        try:
            await self._store.attempts.take_back(
                run_id,
                attempt,
                f"worker {session.worker_id} disconnected before it acknowledged the run",
                session.worker_id,
            )
        except RedisError as exc:  # its lease runs out and the monitor requeues it
            log.warning("could not give back run %s now (%s)", run_id, exc)


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
        check_build_id(hello.build_id, allow_empty=True)
        for info in hello.workflows:
            check_workflow_name(info.name)
        allowed = current().workflows
        if allowed is not None:
            refused = sorted({w.name for w in hello.workflows} - allowed)
            if refused:
                raise PermissionDeniedError(
                    f"this worker token ({current().name}) may serve only "
                    f"{', '.join(sorted(allowed)) or 'no workflows'}; not {', '.join(refused)}",
                    "WORKFLOW_NOT_ALLOWED",
                )
        session = WorkerSession(
            worker_id=hello.worker_id,
            build_id=hello.build_id,
            workflows={w.name: w for w in hello.workflows},
            slots=hello.slots,
            principal=current().name,
            protocol=hello.protocol,
        )
        # What it says it runs counts only where Redis agrees (the attempt holds the run, on
        # this worker, for a workflow it may serve): a worker can give back only its own runs.
        session.running = await self._store.attempts.held_by(
            hello.worker_id, [(r.run_id, r.attempt) for r in hello.running], set(session.workflows)
        )
        await self._store.presence.announce(
            session.worker_id,
            [(w.name, w.description) for w in session.workflows.values()],
            presence_ms(self._settings.heartbeat_interval),
            session.build_id,
        )
        previous = self._dispatcher.sessions.get(session.worker_id)
        if previous is not None:
            if previous.principal != session.principal:
                raise PermissionDeniedError(
                    f"worker id {session.worker_id!r} is connected here with another token",
                    "WORKER_ID_IN_USE",
                )
            previous.closed = True
            previous.outbox.put_nowait(None)
            # What it was sent on the old stream and did not acknowledge, and does not say it
            # runs now, is given back at once (its old stream may take a while to end).
            await self._dispatcher.requeue_unsent(previous, keep=session.running)
        writer: asyncio.Task[None] | None = None
        self._dispatcher.sessions[session.worker_id] = session
        try:  # from here on, however it ends, the session goes (a welcome that failed too)
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
                        protocol=PROTOCOL,
                    )
                )
            )
            writer = asyncio.create_task(self._write_loop(session, context))
            await self._dispatcher.builds_changed()
            async for request in request_iterator:
                await self._handle(session, request)
        finally:
            if writer is not None:
                writer.cancel()
            session.closed = True
            if self._dispatcher.sessions.get(session.worker_id) is session:
                del self._dispatcher.sessions[session.worker_id]
            # Logged first: a stream cut off (keepalive, a reset) cancels this handler, and
            # the shielded give-back goes on without it.
            log.info("worker %s disconnected", session.worker_id)
            await self._dispatcher.give_back(session)

    async def _write_loop(self, session: WorkerSession, context: grpc.aio.ServicerContext) -> None:
        """Send what the outbox holds, in order. To a worker of protocol 1, assignments
        queued together go as one AssignmentBatch: one message for many runs."""
        held: worker_pb2.ConnectResponse | None = None
        while True:
            message = held if held is not None else await session.outbox.get()
            held = None
            if message is None:
                return
            sent = [message]
            if session.protocol >= 1 and message.HasField("assignment"):
                size = message.ByteSize()
                while not session.outbox.empty() and len(sent) < MAX_BATCH:
                    following = session.outbox.get_nowait()
                    if (
                        following is None
                        or not following.HasField("assignment")
                        or size + following.ByteSize() > MAX_BATCH_BYTES
                    ):
                        held = following
                        if following is None:
                            held = None
                            session.outbox.put_nowait(None)  # the end, after this batch
                        break
                    sent.append(following)
                    size += following.ByteSize()
                if len(sent) > 1:
                    message = worker_pb2.ConnectResponse(
                        assignments=worker_pb2.AssignmentBatch(
                            assignments=[m.assignment for m in sent]
                        )
                    )
            try:
                await context.write(message)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
                # The stream is gone; requeue_unsent hands these back when Connect ends.
                for m in sent if held is None else [*sent, held]:
                    session.outbox.put_nowait(m)
                return

    def _accepted(self, session: WorkerSession, ref: worker_pb2.RunRef) -> None:
        sent = session.unacked.get(ref.run_id)
        if sent is not None and sent[0] == ref.attempt:
            del session.unacked[ref.run_id]
        elif session.running.get(ref.run_id) != ref.attempt and session.outbox.qsize() < 1000:
            # Taken back before this came (it was late): stop the task it started. (A
            # stream that sends these and never reads gets no more than a bounded backlog.)
            session.send(
                worker_pb2.ConnectResponse(
                    cancel=worker_pb2.CancelAssignment(
                        run=ref, reason="acknowledged too late: the run moved on"
                    )
                )
            )

    def _freed(self, session: WorkerSession, ref: worker_pb2.RunRef, kind: str) -> bool:
        """The worker no longer runs this attempt (it finished or released it): its slot is
        free. False when the worker does not hold it here (nothing changes)."""
        if session.running.get(ref.run_id) != ref.attempt:
            # A released run's task still reports finished as it unwinds: expected.
            log.debug(
                "worker %s reported %s for run %s attempt %d, which it does not hold; ignored",
                session.worker_id,
                kind,
                ref.run_id,
                ref.attempt,
            )
            return False
        del session.running[ref.run_id]
        session.unacked.pop(ref.run_id, None)
        return True

    async def _slot_freed(self, was_full: bool) -> None:
        # Runs waiting in this replica's backlog take the slot at once; otherwise the
        # dispatcher, which reads this worker's queues while it has room, needs waking
        # only when this is the worker's first free slot.
        if self._dispatcher.backlog:
            await self._dispatcher.drain_now()
        elif was_full:
            await self._dispatcher.wake()

    async def _handle(self, session: WorkerSession, request: worker_pb2.ConnectRequest) -> None:
        kind = request.WhichOneof("message")
        if session.unresponsive:
            log.info("worker %s answers again", session.worker_id)
            session.unresponsive = False
        if kind == "accepted":
            self._accepted(session, request.accepted.run)
        elif kind == "reports":
            for ref in request.reports.accepted:
                self._accepted(session, ref)
            was_full = session.free == 0
            freed = [self._freed(session, ref, "finished") for ref in request.reports.finished]
            if any(freed):
                await self._slot_freed(was_full)
        elif kind in ("finished", "released"):
            ref = getattr(request, kind).run
            was_full = session.free == 0
            if not self._freed(session, ref, kind):
                return
            if kind == "released":
                try:
                    await self._store.attempts.requeue(
                        ref.run_id,
                        ref.attempt,
                        request.released.reason[:1000] or "released",
                        session.worker_id,
                    )
                except RedisError as exc:  # its lease runs out and the monitor requeues it
                    log.warning("could not requeue released run %s now (%s)", ref.run_id, exc)
            await self._slot_freed(was_full)
        elif kind == "draining":
            session.draining = True
            # Its build stops counting this worker at once, so pinned runs can move on.
            await self._store.presence.announce(
                session.worker_id,
                [(w.name, w.description) for w in session.workflows.values()],
                presence_ms(self._settings.heartbeat_interval),
                session.build_id,
                draining=True,
            )
            await self._dispatcher.builds_changed()
        elif kind == "hello":
            raise InvalidArgumentError(
                "WorkerHello may only be sent once per Connect stream", "INVALID_WORKER_STREAM"
            )
