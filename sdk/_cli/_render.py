"""How the `longline` command shows things to a person: a run live, a trace tree, builds.

Output formats here are read by people and matched by tests (tests/e2e/test_cli.py);
change them on purpose.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .._types import Event, EventType, RunTrace, Schedule, TraceSpan, WorkflowBuilds

__all__ = ["LiveView", "print_builds", "print_schedule", "print_trace", "schedule_zone"]


def _seconds(span: TraceSpan) -> str:
    d = span.duration
    if d is None:
        return "running"
    return f"{d * 1000:.0f} ms" if d < 1 else f"{d:.2f} s"


def print_trace(t: RunTrace, out: TextIO = sys.stdout) -> None:
    """Print a run's trace tree."""
    run = t.run
    attempts = t.children("")
    tokens = t.input_tokens + t.output_tokens
    out.write(
        f"run {run.run_id} {run.workflow} {run.status}: {len(attempts)} attempt"
        f"{'s' if len(attempts) != 1 else ''}, {tokens} tokens "
        f"({t.input_tokens} in, {t.output_tokens} out)\n"
    )

    def walk(span_id: str, prefix: str) -> None:
        kids = t.children(span_id)
        for n, s in enumerate(kids):
            last = n == len(kids) - 1
            branch = "└─ " if last else "├─ "
            if s.status == "REPLAYED":
                line = f"↺ {s.step} replayed from a checkpoint (not run again)"
            elif s.kind == "CHILD_RUN":
                workflow = s.name.removesuffix(" (child run)")
                line = f"⤷ child run {s.run_id} ({workflow}) {_seconds(s)} {s.status.lower()}"
                if s.error:
                    line += f" · {s.error}"
            elif s.kind == "ATTEMPT":  # a child run's attempt
                where = f" on {s.worker}" if s.worker else ""
                why = f": {s.error}" if s.error else ""
                line = f"{s.name}{where} · {_seconds(s)} · {s.status.lower()}{why}"
            else:
                line = f"{s.step or s.name} {_seconds(s)} {s.status.lower()}"
                if s.tries > 1:
                    line += f" after {s.tries} tries"
                if s.cache_hit:
                    line += ", cache hit"
                if s.model:
                    line += f" · {s.model} at {s.provider}, {s.input_tokens}+{s.output_tokens} tok"
                if s.error:
                    line += f" · {s.error}"
            out.write(f"{prefix}{branch}{line}\n")
            walk(s.span_id, prefix + ("   " if last else "│  "))

    for a in attempts:
        where = f" on {a.worker}" if a.worker else ""
        why = f": {a.error}" if a.error else ""
        out.write(f"{a.name}{where} · {_seconds(a)} · {a.status.lower()}{why}\n")
        walk(a.span_id, "  ")
    if t.truncated:
        out.write(
            "(truncated: the run has more events than one trace reads; what happened after "
            "the spans above is not shown)\n"
        )


def _abridged(value: Any, limit: int = 240) -> Any:
    """The value with long strings cut, for a terminal (GetRun has the whole result)."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit].replace("\n", " ") + f"… ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _abridged(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_abridged(v, limit) for v in value]
    return value


class LiveView:
    """Prints a run's events as a person wants to watch them."""

    def __init__(self, out: TextIO = sys.stdout, verbose: bool = False) -> None:
        self.out = out
        self.verbose = verbose
        self.last_event_id = ""
        self._mid_line = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hand the terminal to a prompt (the run's input request) for a while."""
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.flush()
        yield

    def close(self) -> None:
        """Nothing to stop: every line is out as soon as it is shown (PanelView stops its
        live display here)."""

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.write(text + "\n")
        self.out.flush()

    def show(self, event: Event) -> None:
        """Print one event."""
        self.last_event_id = event.event_id
        t = event.type
        if t is EventType.OUTPUT:
            self.out.write(event.message)
            self.out.flush()
            self._mid_line = not event.message.endswith("\n")
        elif t is EventType.STATUS:
            self._line(f"· {event.message}")
        elif t is EventType.RUN_QUEUED:
            if event.attempt > 1:  # a parked run going on
                self._line(f"↻ {event.message} (attempt {event.attempt})")
            else:
                self._line(f"queued run {event.run_id}")
        elif t is EventType.RUN_WAITING:
            self._line(f"⏸ {event.message}")
        elif t is EventType.INPUT_REQUESTED:
            self._input_requested(event)
        elif t is EventType.INPUT_RECEIVED:
            data = event.data if isinstance(event.data, dict) else {}
            sender = f" from {data['sender']}" if data.get("sender") else ""
            self._line(f"✉ input {data.get('name', '')} received{sender}")
        elif t is EventType.PROGRESS:
            self._line(f"· progress {event.message}")
        elif t is EventType.RUN_STARTED:
            self._line(f"▶ {event.message}")
        elif t is EventType.CHILD_STARTED:
            if self.verbose:
                self._line(f"⤷ {event.message}")
        elif t is EventType.CHILD_ENDED:
            data = event.data if isinstance(event.data, dict) else {}
            if self.verbose or data.get("status") != "SUCCEEDED":
                error = data.get("error") if isinstance(data.get("error"), dict) else None
                why = f": {error.get('type')}: {error.get('message')}" if error else ""
                self._line(f"⤶ {event.message}{why}")
        elif t is EventType.RUN_RETRYING:
            self._line(f"↻ retrying (attempt {event.attempt}): {event.message}")
        elif t in (EventType.COMPONENT_STARTED, EventType.COMPONENT_FINISHED):
            if self.verbose or (
                t is EventType.COMPONENT_FINISHED and "error" in (event.data or {})
            ):
                verb = "started" if t is EventType.COMPONENT_STARTED else "finished"
                extra = f": {event.message}" if event.message else ""
                self._line(f"  [{event.component} {verb}{extra}]")
        elif t is EventType.RUN_SUCCEEDED:
            self._line("✓ succeeded; result:")
            self._line(json.dumps(_abridged(event.data), indent=2, ensure_ascii=False))
        elif t is EventType.RUN_FAILED:
            self._line(f"✗ failed: {event.message}")
        elif t is EventType.RUN_CANCELLED:
            self._line(f"■ cancelled: {event.message}")

    def _input_requested(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        name = str(data.get("name", ""))
        prompt = str(data.get("prompt") or "")
        self._line(f"? the run asks for input {name}" + (f": {prompt}" if prompt else ""))
        schema = data.get("schema")
        if schema is not None:
            self._line("  schema: " + json.dumps(schema, ensure_ascii=False)[:500])
        self._line(f"  answer with: longline input {event.run_id} {name} --data '<JSON>'")


def print_builds(workflows: list[WorkflowBuilds], out: TextIO = sys.stdout) -> None:
    """A table per workflow: its builds, live workers and runs; unserved runs called out."""
    for w in workflows:
        current = w.current_build_id or "none (any worker takes new runs)"
        print(f"{w.workflow}  current build: {current}  policy: {w.policy}", file=out)
        header = (
            f"{'BUILD':<24} {'WORKERS':>7} {'QUEUED':>7} {'RUNNING':>7} {'WAITING':>7} "
            f"{'UNSERVED':>8}"
        )
        print("  " + header, file=out)
        for b in w.builds:
            name = (b.build_id or "(not started)") + (" *" if b.current else "")
            print(
                f"  {name:<24} {b.workers:>7} {b.queued_runs:>7} {b.running_runs:>7} "
                f"{b.waiting_runs:>7} {b.unserved_runs:>8}",
                file=out,
            )
        if w.unserved_runs:
            print(
                f"  warning: {w.unserved_runs} queued runs of {w.workflow} wait for a build no "
                "worker serves: start its workers, or promote a build that has some",
                file=out,
            )


def schedule_zone(s: Schedule) -> ZoneInfo:
    """The time zone a schedule's cron reads in (UTC without one, or one not known here)."""
    try:
        return ZoneInfo(s.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return ZoneInfo("UTC")


def print_schedule(s: Schedule, out: TextIO = sys.stdout) -> None:
    """One schedule: what it does and where it stands."""

    zone = schedule_zone(s)

    def when(value: datetime | None) -> str:  # in the schedule's time zone, as its cron reads
        return "-" if value is None else value.astimezone(zone).isoformat(timespec="seconds")

    state = f"paused ({s.note})" if s.paused and s.note else "paused" if s.paused else "active"
    lines = [
        f"schedule {s.schedule_id}: {state}",
        f"  runs     {s.workflow} with {s.input_json or 'null'}",
        f"  cron     {s.cron} in {s.time_zone or 'UTC'}",
        f"  overlap  {s.overlap}; catch-up window {s.catchup_window:g} s",
        f"  next     {when(s.next_tick_time)}",
        f"  last     {when(s.last_tick_time)} (run {s.last_run_id or '-'})",
        f"  counts   {s.started_runs} started, {s.skipped_ticks} skipped, {s.missed_ticks} missed",
    ]
    if s.buffered_tick_time is not None:
        lines.append(f"  buffered {when(s.buffered_tick_time)} (waits for the last run to end)")
    if s.last_error:
        lines.append(f"  error    {s.last_error}")
    out.write("\n".join(lines) + "\n")
