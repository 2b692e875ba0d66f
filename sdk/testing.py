"""Helpers for testing workflows without a control plane, worker or Redis."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._component import component_of
from ._context import Context, Services
from ._errors import InputTimeout
from ._events import EventBody, body_of
from ._offline_model import Faults, OfflineModel
from ._policies import Limit
from ._waits import InputRequest, schema_error
from ._workflow import Workflow

__all__ = ["Faults", "LocalRun", "MemoryServices", "OfflineModel", "RecordedEvent", "run_local"]


class MemoryServices:
    """In-process Services: a result cache in a dict; limits admit everything."""

    def __init__(self) -> None:
        self.cache: dict[str, str] = {}

    async def cache_get(self, key: str) -> str | None:
        return self.cache.get(key)

    async def cache_set(self, key: str, value: str, ttl: float) -> None:
        self.cache[key] = value

    async def acquire(self, limits: Sequence[Limit]) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            return None

        return release

    async def record_tokens(self, limits: Sequence[Limit], tokens: int) -> None:
        return None

    async def pause(self, limits: Sequence[Limit], seconds: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RecordedEvent(EventBody):
    """An event a workflow emitted during run_local: its type, and what it says (its
    `EventBody`: message, data_json, component, span ids)."""

    type: str


@dataclass
class LocalRun:
    """What run_local saw: the result or the error, and every event."""

    result: Any = None
    error: BaseException | None = None
    error_component: str = ""
    events: list[RecordedEvent] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    replayed: list[str] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)  # each durable sleep's length, seconds
    requests: list[InputRequest] = field(default_factory=list)  # inputs the run asked for
    children: dict[str, LocalRun] = field(default_factory=dict)  # child run id -> its run

    @property
    def outputs(self) -> list[str]:
        """The OUTPUT chunks, in order."""
        return [e.message for e in self.events if e.type == "OUTPUT"]


class _MemorySink:
    def __init__(self, run: LocalRun) -> None:
        self._run = run
        self._ids = itertools.count(1)

    async def emit(
        self, type: str, body: EventBody, checkpoint: tuple[str, str] | None = None
    ) -> str:
        if checkpoint is not None:
            self._run.checkpoints[checkpoint[0]] = checkpoint[1]
        self._run.events.append(RecordedEvent(type=type, **body_of(body)))
        return f"0-{next(self._ids)}"

    async def output(self, text: str, parent_span_id: str) -> None:
        self._run.events.append(
            RecordedEvent(type="OUTPUT", message=text, parent_span_id=parent_span_id)
        )
        next(self._ids)  # as emit() would have numbered it


class _MemoryWaits:
    """Waits that take no time: sleeps are recorded, inputs come from a mapping."""

    def __init__(
        self,
        run: LocalRun,
        inputs: Mapping[str, Any],
        sink: _MemorySink,
        *,
        run_id: str = "local",
        workflows: Mapping[str, Workflow] | None = None,
        services: Services | None = None,
    ) -> None:
        self._run = run
        self._inputs = inputs
        self._sink = sink
        self._now_ms = 0
        self._run_id = run_id
        self._workflows = workflows or {}
        self._services = services
        self._outcomes: dict[str, str] = {}  # step -> how its child ended

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
        # The child runs to its end at once, in this process, with the same inputs.
        child_workflow = self._workflows.get(workflow)
        if child_workflow is None:
            raise LookupError(
                f"run_local: child workflow {workflow!r} is not known: pass it in "
                "run_local(..., workflows=[...])"
            )
        child_id = f"{self._run_id}/{step}"
        head = {"child": child_id, "workflow": workflow}
        await self._sink.emit(
            "CHILD_STARTED",
            EventBody(
                message=f"started child run {child_id} ({workflow})",
                data_json=json.dumps({**head, "step": step, "detached": detached}),
                span_id=span_id,
                parent_span_id=parent_span_id,
            ),
        )
        child = await run_local(
            child_workflow,
            json.loads(input_json),
            run_id=child_id,
            services=self._services,
            inputs=self._inputs,
            workflows=self._workflows.values(),
        )
        self._run.children[child_id] = child
        if child.error is None:
            outcome: dict[str, Any] = {"status": "SUCCEEDED", **head, "result": child.result}
        else:
            error = {
                "type": type(child.error).__name__,
                "message": str(child.error),
                "component": child.error_component,
            }
            outcome = {"status": "FAILED", **head, "error": error}
        self._outcomes[step] = json.dumps(outcome)
        await self._sink.emit(
            "CHILD_ENDED",
            EventBody(
                message=f"child run {child_id} ({workflow}) ended {outcome['status']}",
                data_json=json.dumps({**head, "step": step, "status": outcome["status"]}),
            ),
        )
        started = json.dumps(head)
        self._run.checkpoints[step] = started
        return started

    async def wait_children(self, wait_step: str, steps: list[str]) -> dict[str, str]:
        ended = {s: self._outcomes[s] for s in steps if s in self._outcomes}
        self._run.checkpoints.update(ended)
        return ended

    async def sleep(self, step: str, *, delay_ms: int | None, until_ms: int | None) -> None:
        self._run.slept.append((delay_ms if delay_ms is not None else 0) / 1000)
        self._run.checkpoints[step] = json.dumps({"slept": True})

    async def wait_for_input(self, step: str, request: InputRequest) -> Any:
        self._run.requests.append(request)
        await self._sink.emit(
            "INPUT_REQUESTED",
            EventBody(message=f"waiting for input {request.name}", data_json=request.json),
        )
        if request.name not in self._inputs:
            self._run.checkpoints[step] = json.dumps({"timeout": True})
            raise InputTimeout(request.name, request.timeout)
        payload = self._inputs[request.name]
        text = json.dumps(payload)
        error = schema_error(text, request.schema) if request.schema is not None else None
        if error is not None:
            raise ValueError(
                f"run_local: input {request.name!r} does not match its schema: {error}"
            )
        self._run.checkpoints[step] = json.dumps({"payload": payload})
        return payload


async def run_local(
    workflow: Workflow,
    input: Any = None,
    *,
    run_id: str = "local",
    checkpoints: dict[str, str] | None = None,
    services: Services | None = None,
    inputs: Mapping[str, Any] | None = None,
    workflows: Iterable[Workflow] = (),
    labels: Mapping[str, str] | None = None,
) -> LocalRun:
    """Run a workflow in this process, recording its events; errors are captured, not raised.

    Pass the `checkpoints` of an earlier LocalRun to replay it as a later attempt would:
    steps found there are not run again (see `LocalRun.replayed`). Pass `services`
    (e.g. MemoryServices()) for components' caches and limits. Durable sleeps take no
    time (see `LocalRun.slept`); `ctx.wait_for_input(name)` returns `inputs[name]`
    (checked against its schema), or raises InputTimeout when `inputs` has no such name.
    Child runs (`ctx.run_child`, `ctx.map` over a workflow) run here too, each to its end
    when it starts, and must be among `workflows` (see `LocalRun.children`).
    """
    run = LocalRun(checkpoints=dict(checkpoints or {}))
    attempt = 1 if checkpoints is None else 2
    sink = _MemorySink(run)
    known = {w.name: w for w in workflows}
    waits = _MemoryWaits(run, inputs or {}, sink, run_id=run_id, workflows=known, services=services)
    ctx = Context(
        run_id, attempt, workflow.name, sink, checkpoints, services, waits, dict(labels or {})
    )
    token = ctx.activate()
    try:
        run.result = await workflow(ctx, input)
    except Exception as exc:
        run.error = exc
        run.error_component = component_of(exc)
    finally:
        Context.deactivate(token)
        run.replayed = list(ctx.replayed)
    return run
