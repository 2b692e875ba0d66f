"""The running context of a workflow attempt, reachable with `longline.current()`."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from ._errors import ChildFailed, InputTimeout
from ._events import EMITTABLE, EventBody
from ._policies import Limit
from ._store import MAX_CHILDREN
from ._waits import MAX_WAIT_SECONDS, InputRequest, Parked, Waits

__all__ = [
    "ChildRun",
    "Context",
    "EventSink",
    "Services",
    "current",
    "is_child_step",
    "new_span_id",
    "step_facts",
]


class EventSink(Protocol):
    """Where a run's events go (the worker's fenced Redis writer, or memory in tests)."""

    async def emit(
        self, type: str, body: EventBody, checkpoint: tuple[str, str] | None = None
    ) -> str:
        """Record one event (with a step's checkpoint: (step key, JSON result)); its id."""
        ...

    async def output(self, text: str, parent_span_id: str) -> None:
        """Record an OUTPUT chunk: `emit("OUTPUT", EventBody(message=text, parent_span_id=
        ...))`, on the path a workflow streaming tokens takes for each one (a sink may
        coalesce chunks into fewer events)."""
        ...


class Services(Protocol):
    """What components need from the cluster: a result cache and shared limits."""

    async def cache_get(self, key: str) -> str | None:
        """The cached JSON result under key, or None."""
        ...

    async def cache_set(self, key: str, value: str, ttl: float) -> None:
        """Cache a JSON result for ttl seconds."""
        ...

    async def acquire(self, limits: Sequence[Limit]) -> Callable[[], Awaitable[None]]:
        """Wait until every limit admits one more call; returns the release."""
        ...

    async def record_tokens(self, limits: Sequence[Limit], tokens: int) -> None:
        """Count tokens a call used against the limits' token budgets."""
        ...

    async def pause(self, limits: Sequence[Limit], seconds: float) -> None:
        """Hold back every caller of these limits for `seconds` (a provider said so)."""
        ...


MAX_MAP_CONCURRENCY = 1000  # ctx.map's concurrency, at most
_FAILURES = ("fail_fast", "collect")
_LATEST_MS = 221_845_392_000_000  # 9000-01-01: a wake time a protobuf Timestamp can carry

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "longline_context", default=None
)
# The span of the innermost component call, so nested calls nest in the trace.
current_span: contextvars.ContextVar[str] = contextvars.ContextVar("longline_span", default="")
# Facts about the running step that land on its COMPONENT_FINISHED event (LLM usage...).
step_facts: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "longline_step_facts", default=None
)
# The step key of the innermost component call: nested steps are numbered within it.
current_step: contextvars.ContextVar[str] = contextvars.ContextVar("longline_step", default="")
# The step keys of the component calls the code runs in, outermost first (keys may hold '/',
# so the chain is kept, not parsed out of the innermost key).
step_chain: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "longline_step_chain", default=()
)


def new_span_id() -> str:
    """A random 64-bit span id, hex, as OpenTelemetry writes them."""
    return secrets.token_hex(8)


def current() -> Context:
    """The Context of the run this code is part of; RuntimeError outside a run."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("longline.current() was called outside a running workflow")
    return ctx


def current_or_none() -> Context | None:
    """The running Context, or None outside a run."""
    return _current.get()


class Context:
    """What a workflow knows about its run, and how it talks to its watchers."""

    def __init__(
        self,
        run_id: str,
        attempt: int,
        workflow: str,
        sink: EventSink,
        checkpoints: dict[str, str] | None = None,
        services: Services | None = None,
        waits: Waits | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.run_id = run_id
        # The run's labels, as it was started with them (a scheduled run's include
        # longline.schedule and longline.tick, its tick's time in ISO 8601).
        self.labels: dict[str, str] = dict(labels or {})
        self.attempt = attempt
        self.workflow = workflow
        self.span_id = new_span_id()  # the attempt's own span: the root of its components
        self.checkpoints: dict[str, str] = dict(checkpoints or {})  # step key -> JSON result
        self.replayed: list[str] = []  # steps this attempt took from checkpoints
        self.services = services
        self._sink = sink
        self._waits = waits
        self._calls: dict[tuple[str, str], int] = {}
        self.parked = False  # a wait parked the run: this attempt is over
        # While a wait's call that may park the run is on its way: whether it parked.
        self._parking: asyncio.Future[bool] | None = None
        self._park_lock = asyncio.Lock()
        self._running: dict[str, int] = {}  # step key -> calls of it running now
        self._blocked: list[tuple[str, ...]] = []  # the step chains of waits in others_done
        self._changed = asyncio.Event()  # set (and replaced) when any of the above changes

    async def status(self, text: str) -> None:
        """Tell watchers what the run is doing now (a STATUS event)."""
        await self._sink.emit(
            "STATUS", EventBody(message=str(text), parent_span_id=current_span.get())
        )

    async def output(self, chunk: str) -> None:
        """Stream a piece of output to watchers (an OUTPUT event)."""
        await self._sink.output(str(chunk), current_span.get())

    async def progress(self, done: float, total: float | None = None) -> None:
        """Report how far the run is (a PROGRESS event): `done` of `total` units (steps,
        pages, items); the live views draw a bar from it."""
        data: dict[str, float | None] = {"done": float(done), "total": None}
        if total is not None:
            data["total"] = float(total)
        if not all(v is None or math.isfinite(v) for v in data.values()):
            raise ValueError("progress takes finite numbers")
        text = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
        await self._sink.emit(
            "PROGRESS",
            EventBody(message=text, data_json=json.dumps(data), parent_span_id=current_span.get()),
        )

    async def sleep(self, duration: float | timedelta) -> None:
        """Wait `duration` (seconds, or a timedelta), durably: a long wait parks the run
        (WAITING, no worker held) and a later attempt goes on after it; a replay after the
        sleep ended returns at once. A sleep is a step, so call it in a deterministic order
        like components."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise ValueError(f"ctx.sleep takes seconds or a timedelta, not {duration!r}")
        if seconds > MAX_WAIT_SECONDS:
            raise ValueError(f"ctx.sleep takes at most {MAX_WAIT_SECONDS:.0f} seconds (100 years)")
        step = self.next_step("@sleep")
        if await self._replay(step) is not None:
            return
        await self._waiter().sleep(step, delay_ms=max(0, round(seconds * 1000)), until_ms=None)

    async def sleep_until(self, when: datetime) -> None:
        """Wait until `when` (a timezone-aware datetime), durably, as `sleep` does."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValueError(
                "ctx.sleep_until takes a timezone-aware datetime, e.g. "
                "datetime.now(UTC) + timedelta(hours=1)"
            )
        until_ms = round(when.timestamp() * 1000)
        if until_ms > _LATEST_MS:
            raise ValueError("ctx.sleep_until takes a time before the year 9000")
        step = self.next_step("@sleep")
        if await self._replay(step) is not None:
            return
        await self._waiter().sleep(step, delay_ms=None, until_ms=until_ms)

    async def wait_for_input(
        self,
        name: str,
        *,
        schema: Any = None,
        prompt: str | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Ask for an input by `name` and wait for it durably; returns its decoded payload.

        The run writes INPUT_REQUESTED (name, prompt, JSON Schema: any UI can draw a form)
        and parks until someone sends it (`longline input`, `RunHandle.send_input`, the
        SendInput RPC); a payload that does not match `schema` is refused to its sender.
        An input sent before the run asks is kept for it. With `timeout` (seconds or a
        timedelta) InputTimeout is raised once it passes; catch it to go on without. Each
        name is asked once per run: a replay returns the same payload.
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        request = InputRequest(name, prompt or "", schema, seconds)
        step = f"@input:{name}"
        done = await self._replay(step)
        if done is not None:
            if done.get("timeout"):
                raise InputTimeout(name, seconds)
            return done.get("payload")
        return await self._waiter().wait_for_input(step, request)

    async def run_child(self, workflow: Any, input: Any = None, *, key: str | None = None) -> Any:
        """Run `workflow` (a `@longline.workflow` or its name) as a child run and return its
        result; ChildFailed when it failed or was cancelled.

        The child is a run of its own, queued for any worker of its workflow, and is started
        exactly once for this call (a step: a later attempt of this run finds the child it
        started, by call order or by `key`). While it runs, this run parks (WAITING, no
        worker held) and wakes when it ends. If this run ends first, the child is cancelled.
        """
        child = await self.start_child(workflow, input, key=key)
        return await child.result()

    async def start_child(
        self, workflow: Any, input: Any = None, *, key: str | None = None, detach: bool = False
    ) -> ChildRun:
        """Start `workflow` as a child run, once, and return its handle at once (await
        `handle.result()` later, or never). A child still running when this run ends is
        cancelled, unless `detach` is true: a detached child lives on by itself."""
        name = _workflow_name(workflow)
        try:
            input_json = json.dumps(input, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the input of child workflow {name!r} is not JSON: {exc}") from None
        if key is not None and not isinstance(key, str):
            raise TypeError(f"a child's key is a str, not {key!r}")
        if key and "/" in key:
            raise ValueError(f"a child's key is a str without '/', not {key!r}")
        step = self.next_step("@child", key or "")
        return await self._start_child(step, name, input_json, detach)

    async def _start_child(
        self, step: str, workflow: str, input_json: str, detach: bool
    ) -> ChildRun:
        value = self.checkpoints.get(step)
        if value is None:
            value = await self._waiter().start_child(
                step,
                workflow,
                input_json,
                detached=detach,
                span_id=new_span_id(),
                parent_span_id=current_span.get() or self.span_id,
            )
            self.checkpoints[step] = value
        data = json.loads(value)
        return ChildRun(self, step, str(data["child"]), str(data["workflow"]))

    async def wait_children(self, steps: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Of the children started at `steps`, those that ended (step -> how: status, result
        or error); waits (parking the run) until at least one has."""
        ended = {s: self.checkpoints[s] for s in steps if _ended(self.checkpoints.get(s))}
        if not ended:
            ended = await self._waiter().wait_children(f"@wait:{steps[0]}", list(steps))
            self.checkpoints.update(ended)
        return {s: json.loads(v) for s, v in ended.items()}

    async def map(
        self,
        fn: Any,
        items: Iterable[Any],
        *,
        concurrency: int = 16,
        failures: str = "fail_fast",
        progress: bool = False,
    ) -> list[Any]:
        """Call `fn` on each item, at most `concurrency` at a time; the results in the order
        of the items.

        `fn` is a workflow (a `@longline.workflow`, or a workflow's name): each item is the
        input of a child run, spread over every worker of that workflow, and the limit holds
        across this run's attempts (children started and not ended count, whichever attempt
        started them). Or `fn` is a component (or any async function of one argument): each
        item is a call in this worker, a step checkpointed on its own when `fn` is a
        component.

        `failures="fail_fast"` (the default) raises the first failure seen (ChildFailed for
        a child run) and starts no more items: the children still running go on, and are
        cancelled if this run then ends; component calls still running are cancelled.
        `failures="collect"` runs every item and puts each failure's exception in its place
        in the results. With `progress=True` it reports how many items are done as it goes
        (`ctx.progress(done, len(items))`: the live views draw a bar).
        """
        items = list(items)
        if not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_MAP_CONCURRENCY:
            raise ValueError(
                f"ctx.map's concurrency must be an int from 1 to {MAX_MAP_CONCURRENCY}, "
                f"not {concurrency!r}"
            )
        if failures not in _FAILURES:
            raise ValueError(f"ctx.map's failures must be one of {_FAILURES}, not {failures!r}")
        base = self.next_step("@map")
        if isinstance(fn, str) or _is_workflow(fn):
            if len(items) > MAX_CHILDREN:
                raise ValueError(
                    f"ctx.map over a workflow takes at most {MAX_CHILDREN} items (a run starts at "
                    f"most that many child runs), not {len(items)}: map over batches instead"
                )
            return await self._map_children(
                _workflow_name(fn), items, base, concurrency, failures == "collect", progress
            )
        if not callable(fn):
            raise TypeError(f"ctx.map takes a workflow or a component, not {fn!r}")
        return await self._map_calls(fn, items, base, concurrency, failures == "collect", progress)

    async def _map_children(
        self,
        workflow: str,
        items: list[Any],
        base: str,
        concurrency: int,
        collect: bool,
        progress: bool,
    ) -> list[Any]:
        try:
            inputs = [json.dumps(item, allow_nan=False) for item in items]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"an item of ctx.map over {workflow!r} is not JSON: {exc}") from None
        steps = [f"{base}/{i}" for i in range(len(items))]
        results: list[Any] = [None] * len(items)
        done: set[int] = set()
        started = 0
        reported = -1
        while True:
            for i in range(started):
                if i not in done and _ended(self.checkpoints.get(steps[i])):
                    outcome = json.loads(self.checkpoints[steps[i]])
                    done.add(i)
                    if outcome["status"] == "SUCCEEDED":
                        results[i] = outcome.get("result")
                    else:
                        results[i] = _child_failed(outcome)
                        if not collect:
                            raise results[i]
            # Children an earlier attempt started count as started, whatever the limit now.
            while started < len(items) and steps[started] in self.checkpoints:
                started += 1
            if progress and len(done) != reported:
                reported = len(done)
                await self.progress(reported, len(items))
            while started < len(items) and started - len(done) < concurrency:
                await self._start_child(steps[started], workflow, inputs[started], False)
                started += 1
            if len(done) == len(items):
                return results
            # As many run as may (or every item started): wait until one ends.
            await self.wait_children([steps[i] for i in range(started) if i not in done])

    async def _map_calls(
        self,
        fn: Callable[[Any], Awaitable[Any]],
        items: list[Any],
        base: str,
        concurrency: int,
        collect: bool,
        progress: bool,
    ) -> list[Any]:
        with_key = getattr(fn, "with_key", None)
        results: list[Any] = [None] * len(items)
        failed: list[tuple[int, BaseException]] = []
        following = iter(range(len(items)))
        done = 0

        async def worker() -> None:
            # One of `concurrency` workers, each taking the next item in order: at most that
            # many calls run, and no task is made per item.
            nonlocal done
            for i in following:
                if failed and not collect:
                    return
                call = with_key(f"{base}.{i}") if with_key is not None else fn
                try:
                    results[i] = await call(items[i])
                except Exception as exc:
                    if not collect:
                        failed.append((i, exc))
                        raise
                    results[i] = exc
                done += 1
                if progress:
                    await self.progress(done, len(items))

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(items)))]
        try:
            pending = set(tasks)
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if any(t.exception() is not None for t in finished):
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        items_failed = {id(exc) for _, exc in failed}
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None and id(error) not in items_failed:
                raise error  # Parked, a lost lease (from progress), a cancellation: not an item's
        if failed:
            raise min(failed, key=lambda f: f[0])[1]
        return results

    @contextlib.asynccontextmanager
    async def running_step(self, step: str) -> AsyncIterator[None]:
        """Count a component step as running (from before it starts until its result is
        checkpointed). A step about to begin while a wait may be parking the run waits for
        the answer, and ends with Parked if it did: it has not begun, so nothing it does is
        lost or done twice."""
        while self._parking is not None:
            await asyncio.shield(self._parking)
        if self.parked:
            raise Parked()
        self._running[step] = self._running.get(step, 0) + 1
        token = step_chain.set((*step_chain.get(), step))
        try:
            yield
        finally:
            step_chain.reset(token)
            self._running[step] -= 1
            if not self._running[step]:
                del self._running[step]
            self._notify()

    def _notify(self) -> None:
        """Wake the waits in others_done to look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def others_running(self) -> bool:
        """Whether component steps run beside the caller: not its own enclosing steps, nor
        steps whose only work now is a wait of their own (those park with the run)."""
        own = set(step_chain.get())
        blocked = {s for chain in self._blocked for s in chain}
        return any(s not in own and s not in blocked for s in self._running)

    async def others_done(self) -> None:
        """Wait until no component step runs beside the caller: a wait that parks the run
        first lets the steps running beside it (asyncio.gather) finish and checkpoint, so
        the next attempt does not run them again. Parked when another wait parked the run
        meanwhile."""
        chain = step_chain.get()
        self._blocked.append(chain)
        self._notify()
        try:
            while self.others_running() and not self.parked:
                await self._changed.wait()
        finally:
            self._blocked.remove(chain)
            self._notify()
        if self.parked:
            raise Parked()

    @contextlib.asynccontextmanager
    async def may_park(self) -> AsyncIterator[Callable[[bool], None]]:
        """Around a wait's call that may park the run (one at a time): steps about to begin
        wait for its outcome. Call the given function with whether the run parked. Parked
        at once, without a call, when another wait parked the run already."""
        async with self._park_lock:
            if self.parked:
                raise Parked()
            parking = asyncio.get_running_loop().create_future()
            self._parking = parking
            outcome = False

            def said(parked: bool) -> None:
                nonlocal outcome
                outcome = parked

            try:
                yield said
            finally:
                self.parked = self.parked or outcome
                self._parking = None
                parking.set_result(outcome)
                self._notify()

    async def _replay(self, step: str) -> dict[str, Any] | None:
        """A wait's checkpoint, decoded, when an earlier attempt finished it."""
        if step not in self.checkpoints:
            return None
        self.replayed.append(step)
        value = json.loads(self.checkpoints[step])
        return value if isinstance(value, dict) else {}

    def _waiter(self) -> Waits:
        if self._waits is None:
            raise RuntimeError(
                "this run cannot wait: its Context was made without a way to wait (a worker "
                "or longline.testing.run_local gives one)"
            )
        return self._waits

    async def emit(
        self, type: str, *, checkpoint: tuple[str, str] | None = None, **body: str
    ) -> str:
        """Write an event of a type workflow code may write (STATUS, OUTPUT, COMPONENT_*),
        with the `EventBody` fields given (message=..., data_json=...); used by components.
        The run's lifecycle events (started, retrying, its end) are written by the worker and
        the control plane only: ValueError for those."""
        if type not in EMITTABLE:
            raise ValueError(
                f"a workflow cannot write a {type!r} event: only {', '.join(EMITTABLE)}; the "
                "run's lifecycle (started, retrying, succeeded, failed, cancelled) is written "
                "by longline itself"
            )
        return await self._sink.emit(type, EventBody(**body), checkpoint)

    def next_step(self, name: str, key: str = "") -> str:
        """The deterministic key of the next call of a component.

        `name#n` for the n-th call of the component within its parent step (or the
        workflow), or `name:key` for a key the user gave; a nested step's key starts
        with its parent's, so replaying a parent from its checkpoint leaves the
        numbering of everything else as it was.
        """
        scope = current_step.get()
        if key:
            own = f"{name}:{key}"
        else:
            n = self._calls.get((scope, name), 0) + 1
            self._calls[(scope, name)] = n
            own = f"{name}#{n}"
        return f"{scope}/{own}" if scope else own

    def activate(self) -> contextvars.Token[Context | None]:
        """Make this the current context (the worker does this in the run's task)."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[Context | None]) -> None:
        """Undo activate()."""
        _current.reset(token)


class ChildRun:
    """A child run this run started (`Context.start_child`): its `run_id`, its `workflow`,
    and `await result()` to wait for it (parking this run) and get its result."""

    def __init__(self, ctx: Context, step: str, run_id: str, workflow: str) -> None:
        self._ctx = ctx
        self.step = step
        self.run_id = run_id
        self.workflow = workflow

    async def result(self) -> Any:
        """The child's result once it ended; ChildFailed when it failed or was cancelled."""
        outcome = (await self._ctx.wait_children([self.step]))[self.step]
        if outcome["status"] != "SUCCEEDED":
            raise _child_failed(outcome)
        return outcome.get("result")

    def __repr__(self) -> str:
        return f"ChildRun(run_id={self.run_id!r}, workflow={self.workflow!r})"


def is_child_step(step: str) -> bool:
    """Whether a step key is a child run's start (ctx.run_child's `@child#n`, ctx.map's
    `@map#n/i` over a workflow), not a component's or a wait's."""
    parts = step.split("/")
    return parts[-1].startswith("@child") or (
        len(parts) > 1 and parts[-2].startswith("@map#") and parts[-1].isdigit()
    )


def _ended(checkpoint: str | None) -> bool:
    """Whether a child's step checkpoint says how the child ended."""
    return checkpoint is not None and checkpoint.startswith('{"status":')


def _child_failed(outcome: dict[str, Any]) -> ChildFailed:
    error = outcome.get("error") or {}
    return ChildFailed(
        str(outcome.get("child", "")),
        str(outcome.get("workflow", "")),
        str(outcome.get("status", "")),
        str(error.get("type", "")),
        str(error.get("message", "")),
        str(error.get("component", "")),
    )


def _is_workflow(fn: Any) -> bool:
    from ._workflow import Workflow  # it imports this module

    return isinstance(fn, Workflow)


def _workflow_name(workflow: Any) -> str:
    if isinstance(workflow, str) and workflow:
        return workflow
    if _is_workflow(workflow):
        return str(workflow.name)
    raise TypeError(
        f"a child run takes a @longline.workflow or a workflow's name, not {workflow!r}"
    )


def to_json(value: Any, limit: int = 4096) -> str:
    """A JSON text of value for event payloads; not-JSON values as repr, cut at limit."""
    text = json.dumps(value, default=repr, ensure_ascii=False)
    if len(text) > limit:
        text = json.dumps({"truncated": True, "preview": text[: limit - 64]})
    return text
