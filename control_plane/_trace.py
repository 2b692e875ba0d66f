"""A run's trace tree, rebuilt from its events alone (no tracing backend needed).

Events may come from workflow code or from another version of longline: a type this module
does not know is skipped, and a field of the wrong type reads as absent, never as an error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from longline._context import is_child_step
from longline._store import StoredEvent
from longline._types import TraceSpan

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(ms: int) -> datetime:
    """An event's time, exact to the millisecond (no float on the way)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _data(event: StoredEvent) -> dict[str, Any]:
    try:
        value = json.loads(event.data_json) if event.data_json else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    try:
        return int(value)
    except (OverflowError, ValueError):  # inf, nan
        return default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


_MOST_ERROR = 1000  # characters of an error kept in a span


def _component_of_step(step: str) -> str:
    if is_child_step(step):
        return "child run"  # a child's start (ctx.run_child, ctx.map over a workflow)
    own = step.rsplit("/", 1)[-1]
    return re.split(r"[#:]", own, maxsplit=1)[0]


def build(events: list[StoredEvent], run_id: str = "") -> list[TraceSpan]:
    """The spans of run `run_id`, parents before children, in the order things happened. A
    child run it started is one span (kind CHILD_RUN, `run_id` the child's), under which the
    caller may nest the child's own spans (`nest`)."""
    spans: list[TraceSpan] = []
    by_id: dict[str, int] = {}  # a component's span id -> its place in spans
    children: dict[str, int] = {}  # a child run's id -> the place of its span
    current: int | None = None  # the place of the attempt in progress
    known: set[str] = set()  # the span ids seen so far

    def parent_of(event: StoredEvent) -> str:
        """The span an event happened in. A worker that traces with OpenTelemetry names its
        attempt by its own span's id, where the claim wrote RUN_STARTED under another: a span
        not seen is the attempt in progress."""
        parent = event.parent_span_id
        if parent and parent not in known and current is not None:
            return spans[current].span_id
        return parent

    def update(at: int, **changes: Any) -> None:
        spans[at] = dataclasses.replace(spans[at], **changes)

    def end_attempt(at_ms: int, status: str, error: str = "") -> None:
        if current is None or spans[current].end_time is not None:
            return
        attempt = spans[current].attempt
        update(current, end_time=_at(at_ms), status=status, error=error[:_MOST_ERROR])
        for n, span in enumerate(spans):
            if span.attempt == attempt and span.status == "RUNNING" and span.kind != "CHILD_RUN":
                update(n, end_time=_at(at_ms), status="INTERRUPTED")

    for event in events:
        data = _data(event)
        if event.type == "RUN_STARTED":
            end_attempt(event.time_ms, "INTERRUPTED")
            attempt = TraceSpan(
                span_id=event.span_id or f"attempt-{event.attempt}",
                parent_span_id="",
                name=f"attempt {event.attempt}",
                kind="ATTEMPT",
                attempt=event.attempt,
                step="",
                start_time=_at(event.time_ms),
                end_time=None,
                status="RUNNING",
                worker=_str(data.get("worker")),
            )
            current = len(spans)
            spans.append(attempt)
            known.add(attempt.span_id)
            checkpoints = data.get("checkpoints")
            for step in checkpoints if isinstance(checkpoints, list) else []:
                if not isinstance(step, str):
                    continue
                spans.append(
                    TraceSpan(
                        span_id=f"{attempt.span_id}/{step}",
                        parent_span_id=attempt.span_id,
                        name=_component_of_step(step),
                        kind="COMPONENT",
                        attempt=event.attempt,
                        step=step,
                        start_time=_at(event.time_ms),
                        end_time=_at(event.time_ms),
                        status="REPLAYED",
                    )
                )
        elif event.type == "COMPONENT_STARTED":
            by_id[event.span_id] = len(spans)
            known.add(event.span_id)
            spans.append(
                TraceSpan(
                    span_id=event.span_id,
                    parent_span_id=parent_of(event),
                    name=event.component,
                    kind="COMPONENT",
                    attempt=event.attempt,
                    step=_str(data.get("step")),
                    start_time=_at(event.time_ms),
                    end_time=None,
                    status="RUNNING",
                )
            )
        elif event.type == "CHILD_STARTED":
            child = _str(data.get("child"))
            children[child] = len(spans)
            known.add(event.span_id or f"child-{child}")
            spans.append(
                TraceSpan(
                    span_id=event.span_id or f"child-{child}",
                    parent_span_id=parent_of(event),
                    name=f"{_str(data.get('workflow'))} (child run)",
                    kind="CHILD_RUN",
                    attempt=event.attempt,
                    step=_str(data.get("step")),
                    start_time=_at(event.time_ms),
                    end_time=None,
                    status="RUNNING",
                    run_id=child,
                )
            )
        elif event.type == "CHILD_ENDED" and _str(data.get("child")) in children:
            status = _str(data.get("status"))
            error = _dict(data.get("error"))
            update(
                children[_str(data.get("child"))],
                end_time=_at(event.time_ms),
                status={"SUCCEEDED": "OK", "FAILED": "ERROR"}.get(status, "INTERRUPTED"),
                error=f"{error.get('type')}: {error.get('message')}"[:_MOST_ERROR] if error else "",
            )
        elif event.type == "COMPONENT_FINISHED" and event.span_id in by_id:
            update(by_id[event.span_id], end_time=_at(event.time_ms), **_finished(data))
        elif event.type == "RUN_RETRYING":
            end_attempt(event.time_ms, "INTERRUPTED", event.message)
        elif event.type == "RUN_WAITING":
            end_attempt(event.time_ms, "PARKED")
        elif event.type == "RUN_SUCCEEDED":
            end_attempt(event.time_ms, "OK")
        elif event.type == "RUN_FAILED":
            end_attempt(event.time_ms, "ERROR", event.message)
        elif event.type == "RUN_CANCELLED":
            end_attempt(event.time_ms, "INTERRUPTED", f"cancelled: {event.message}")
    return [dataclasses.replace(span, run_id=span.run_id or run_id) for span in spans]


def nest(parent: TraceSpan, spans: list[TraceSpan]) -> list[TraceSpan]:
    """A child run's spans (`build` of its events), its attempts hung under its span in the
    parent's trace."""
    return [
        dataclasses.replace(span, parent_span_id=span.parent_span_id or parent.span_id)
        for span in spans
    ]


def _finished(data: dict[str, Any]) -> dict[str, Any]:
    """What a COMPONENT_FINISHED event's data says about its span."""
    error = data.get("error")
    facts: dict[str, Any] = {
        "status": "ERROR" if error else "OK",
        "tries": _int(data.get("tries"), 1) or 1,
        "cache_hit": data.get("cache") == "hit",
    }
    if isinstance(error, dict):
        facts["error"] = f"{error.get('type')}: {error.get('message')}"[:_MOST_ERROR]
    elif isinstance(error, str):
        facts["error"] = error[:_MOST_ERROR]
    llm = data.get("llm")
    if isinstance(llm, dict):
        usage = _dict(llm.get("usage"))
        facts["model"] = str(llm.get("model", ""))
        facts["provider"] = str(llm.get("provider", ""))
        facts["input_tokens"] = _int(usage.get("input_tokens"))
        facts["output_tokens"] = _int(usage.get("output_tokens"))
    return facts
