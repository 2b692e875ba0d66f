"""A run's trace tree, rebuilt from its events alone (no tracing backend needed).

Events may come from workflow code or from another version of longline: a type this module
does not know is skipped, and a field of the wrong type reads as absent, never as an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import StoredEvent


@dataclass
class SpanRecord:
    """One node of the tree: an attempt, or a component call of an attempt."""

    span_id: str
    parent_span_id: str
    name: str
    kind: str  # ATTEMPT | COMPONENT
    attempt: int
    start_ms: int
    status: str = "RUNNING"  # OK | ERROR | RUNNING | INTERRUPTED | REPLAYED
    step: str = ""
    end_ms: int | None = None
    error: str = ""
    tries: int = 0
    cache_hit: bool = False
    model: str = ""
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    worker: str = ""


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
    own = step.rsplit("/", 1)[-1]
    return re.split(r"[#:]", own, maxsplit=1)[0]


def build(events: list[StoredEvent]) -> list[SpanRecord]:
    """The spans, parents before children, in the order things happened."""
    spans: list[SpanRecord] = []
    by_id: dict[str, SpanRecord] = {}
    current: SpanRecord | None = None  # the attempt in progress

    def end_attempt(at_ms: int, status: str, error: str = "") -> None:
        if current is None or current.end_ms is not None:
            return
        current.end_ms, current.status, current.error = at_ms, status, error[:_MOST_ERROR]
        for span in spans:
            if span.attempt == current.attempt and span.status == "RUNNING":
                span.end_ms, span.status = at_ms, "INTERRUPTED"

    for event in events:
        data = _data(event)
        if event.type == "RUN_STARTED":
            end_attempt(event.time_ms, "INTERRUPTED")
            current = SpanRecord(
                span_id=event.span_id or f"attempt-{event.attempt}",
                parent_span_id="",
                name=f"attempt {event.attempt}",
                kind="ATTEMPT",
                attempt=event.attempt,
                start_ms=event.time_ms,
                worker=_str(data.get("worker")),
            )
            spans.append(current)
            checkpoints = data.get("checkpoints")
            for step in checkpoints if isinstance(checkpoints, list) else []:
                if not isinstance(step, str):
                    continue
                spans.append(
                    SpanRecord(
                        span_id=f"{current.span_id}/{step}",
                        parent_span_id=current.span_id,
                        name=_component_of_step(step),
                        kind="COMPONENT",
                        attempt=event.attempt,
                        start_ms=event.time_ms,
                        end_ms=event.time_ms,
                        status="REPLAYED",
                        step=step,
                    )
                )
        elif event.type == "COMPONENT_STARTED":
            span = SpanRecord(
                span_id=event.span_id,
                parent_span_id=event.parent_span_id,
                name=event.component,
                kind="COMPONENT",
                attempt=event.attempt,
                start_ms=event.time_ms,
                step=_str(data.get("step")),
            )
            spans.append(span)
            by_id[event.span_id] = span
        elif event.type == "COMPONENT_FINISHED" and event.span_id in by_id:
            span = by_id[event.span_id]
            span.end_ms = event.time_ms
            error = data.get("error")
            span.status = "ERROR" if error else "OK"
            if isinstance(error, dict):
                span.error = f"{error.get('type')}: {error.get('message')}"[:_MOST_ERROR]
            elif isinstance(error, str):
                span.error = error[:_MOST_ERROR]
            span.tries = _int(data.get("tries"), 1) or 1
            span.cache_hit = data.get("cache") == "hit"
            llm = data.get("llm")
            if isinstance(llm, dict):
                usage = _dict(llm.get("usage"))
                span.model = str(llm.get("model", ""))
                span.provider = str(llm.get("provider", ""))
                span.input_tokens = _int(usage.get("input_tokens"))
                span.output_tokens = _int(usage.get("output_tokens"))
        elif event.type == "RUN_RETRYING":
            end_attempt(event.time_ms, "INTERRUPTED", event.message)
        elif event.type == "RUN_SUCCEEDED":
            end_attempt(event.time_ms, "OK")
        elif event.type == "RUN_FAILED":
            end_attempt(event.time_ms, "ERROR", event.message)
        elif event.type == "RUN_CANCELLED":
            end_attempt(event.time_ms, "INTERRUPTED", f"cancelled: {event.message}")
    return spans
