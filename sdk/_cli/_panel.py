"""The live panel `longline run` and `longline watch` draw on a terminal (rich).

At the bottom of the screen, redrawn a few times a second: the run, its attempt and state
(queued, running, sleeping until, waiting for input, succeeded, failed), the last status
line, the steps done and running, the time since the first event seen, the tokens the
steps used, the retries, and a bar when the workflow reports `ctx.progress(done, total)`.
Above it scroll the lines `LiveView` prints (status, starts, waits, input requests and the
`longline input` hint, retries, errors, the result) and the run's output, in whole lines,
so the scrollback keeps the story; at the run's end the panel is drawn a last time and
stays.

`_client_commands._client()` picks it for a terminal (not TERM=dumb, no --plain);
elsewhere the plain lines of `LiveView`, which tests and pipes read.

What a run writes is untrusted: it reaches the terminal as rich `Text` (never markup), its
control characters shown as "?", so it can neither style the screen nor move the cursor
under the panel.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._types import Event, EventType
from ._render import LiveView

__all__ = ["PanelView"]

REFRESHES_PER_SECOND = 6
# An output line longer than this with no newline yet is printed anyway: the pending text
# is bounded, and a model that streams one endless line still shows.
MOST_PENDING = 4096
MOST_NAMES = 4  # running steps the panel names; the rest are counted
BAR_WIDTH = 40

# C0 and C1 control characters but tab and newline become "?"; a carriage return goes.
_CONTROLS: dict[int, str | None] = {
    c: "?" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)
}
_CONTROLS[0x0D] = None

# Events only a running attempt writes.
_WORKER_EVENTS = frozenset(
    {
        EventType.STATUS,
        EventType.OUTPUT,
        EventType.PROGRESS,
        EventType.COMPONENT_STARTED,
        EventType.COMPONENT_FINISHED,
    }
)
_LINE_STYLES = {
    EventType.RUN_SUCCEEDED: "green",
    EventType.RUN_FAILED: "bold red",
    EventType.RUN_CANCELLED: "yellow",
    EventType.RUN_RETRYING: "yellow",
    EventType.RUN_WAITING: "cyan",
    EventType.INPUT_REQUESTED: "bold",
}


def _clean(text: str) -> str:
    """Text a run wrote, safe to put on a terminal."""
    return text.replace("\r\n", "\n").translate(_CONTROLS)


def _data(event: Event) -> dict[str, Any]:
    """The event's data when it is a JSON object, else {} (another version's, or broken)."""
    try:
        data = event.data
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any, default: int = 0) -> int:
    n = _number(value)
    return default if n is None else int(n)


def _clock(seconds: float) -> str:
    """0:05, 12:34, 1:02:03."""
    s = max(0, int(seconds))
    h, m = s // 3600, s // 60 % 60
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _wall(ms: float) -> str:
    """A Unix time in ms as the local clock reads it (with the date when not today)."""
    try:
        when = datetime.fromtimestamp(ms / 1000)
    except (OverflowError, OSError, ValueError):  # not a time any clock reads
        return "?"
    if when.date() == datetime.now().date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _is_wait_step(step: str) -> bool:
    """A checkpoint of ctx.sleep or ctx.wait_for_input (`@sleep#1`), not a component's."""
    return step.rsplit("/", 1)[-1].startswith("@")


class PanelView(LiveView):
    """LiveView's lines with a live panel under them, for a person at a terminal.

    Same interface: `show(event)`, `last_event_id`, `paused()` (the panel goes while a
    prompt has the terminal) and `close()` (draw it a last time and stop; again: nothing).
    The panel is drawn from the first event on, by rich's refresh thread: what it reads
    is set by `show` in whole values (a str, a tuple, a frozenset), never changed in place.
    """

    def __init__(
        self,
        out: TextIO = sys.stdout,
        verbose: bool = False,
        workflow: str = "",
        console: Console | None = None,
    ) -> None:
        super().__init__(out, verbose)
        self.console = console or Console(file=out, markup=False, emoji=False, highlight=False)
        self._closed = False
        self._paused = False
        self._pending = ""  # the output line not finished yet
        self._line_style = ""
        # What the panel shows.
        self._workflow = workflow
        self._run_id = ""
        self._attempt = 0
        self._state = ""  # not known yet
        self._state_style = "blue"
        self._wait = ""  # "sleep" or "input NAME" while the run waits
        self._wake_ms: float | None = None
        self._status = ""
        self._done: frozenset[str] = frozenset()
        self._running: dict[str, str] = {}  # span -> component; read through _running_names
        self._running_names: tuple[str, ...] = ()
        self._tokens = (0, 0)
        self._retries = 0
        self._progress: tuple[float, float | None] | None = None
        self._children = (0, 0, 0)  # child runs started, ended, ended not succeeded
        self._first_seen: float | None = None  # time.monotonic() at the first event
        self._ended: float | None = None
        self._live = self._new_live()  # last: it renders the panel at once

    def show(self, event: Event) -> None:
        """Print the event's lines above the panel, as LiveView words them, and update it."""
        if self._first_seen is None:
            self._first_seen = time.monotonic()
        self.last_event_id = event.event_id
        self._run_id = event.run_id or self._run_id
        self._attempt = max(self._attempt, event.attempt)
        t = event.type
        data = _data(event)
        if t in _WORKER_EVENTS and (self._wait or not self._state):
            # An attempt is running: followed from the middle (--after), or the input it
            # asked for was there already.
            self._set_state("running")
        if not self._closed and not self._paused:
            self._live.start()  # drawn once the event is in (below)
        if t is EventType.OUTPUT:
            self._output(event.message)
            return
        self._update(event, data)
        if self._live.is_started:  # the lines printed next redraw the panel as it is now
            self._live.refresh()
        if t is EventType.PROGRESS:  # the bar says it; no line
            return
        self._line_style = _LINE_STYLES.get(t, "")
        if t is EventType.COMPONENT_FINISHED and "error" in data:
            self._line_style = "red"
        try:
            super().show(event)
        finally:
            self._line_style = ""
        if t.terminal:
            self.close()

    def _update(self, event: Event, data: dict[str, Any]) -> None:
        t = event.type
        if t is EventType.STATUS:
            self._status = event.message
        elif t is EventType.PROGRESS:
            done = _number(data.get("done"))
            if done is not None:
                total = _number(data.get("total"))
                self._progress = (done, total if total and total > 0 else None)
        elif t is EventType.RUN_QUEUED:
            self._set_state("queued" if event.attempt <= 1 else f"queued: {event.message}")
        elif t is EventType.RUN_STARTED:
            self._set_state("running")
            self._set_running({})
            checkpoints = data.get("checkpoints")
            if isinstance(checkpoints, list):  # steps a former attempt finished
                steps = {s for s in checkpoints if isinstance(s, str) and not _is_wait_step(s)}
                self._done = self._done | steps
        elif t is EventType.COMPONENT_STARTED:
            name = event.component or "?"
            self._set_running({**self._running, event.span_id or name: name})
        elif t is EventType.COMPONENT_FINISHED:
            running = dict(self._running)
            running.pop(event.span_id or event.component or "?", None)
            self._set_running(running)
            if "error" not in data:
                step = data.get("step")
                self._done = self._done | {step if isinstance(step, str) else event.span_id}
            llm = data.get("llm")
            usage = llm.get("usage") if isinstance(llm, dict) else None
            if isinstance(usage, dict):
                tokens_in, tokens_out = self._tokens
                self._tokens = (
                    tokens_in + _count(usage.get("input_tokens")),
                    tokens_out + _count(usage.get("output_tokens")),
                )
            self._retries += max(0, _count(data.get("tries"), 1) - 1)
        elif t is EventType.RUN_RETRYING:
            self._retries += 1
            self._set_state(f"retrying as attempt {event.attempt}", "yellow")
            self._set_running({})
        elif t is EventType.RUN_WAITING:
            wake = _number(data.get("wake_ms"))
            name = str(data.get("name") or "")
            self._set_running({})
            kind = data.get("kind")
            children = data.get("children")
            many = _count(data.get("waiting")) or (
                len(children) if isinstance(children, list) else 0
            )
            if kind == "sleep":
                wait = "sleep"
            elif kind == "child":
                wait = "a child run" if many == 1 else f"one of {many} child runs"
            else:
                wait = f"input {name}".strip()
            self._set_state("waiting", "cyan", wait)
            self._wake_ms = wake
        elif t is EventType.INPUT_REQUESTED:  # RUN_WAITING follows unless it is there
            self._set_state("waiting", "cyan", f"input {data.get('name', '')}".strip())
        elif t is EventType.INPUT_RECEIVED:
            if self._wait:
                self._set_state(f"input {data.get('name', '')} received", "cyan")
        elif t is EventType.CHILD_STARTED:
            self._children = (self._children[0] + 1, self._children[1], self._children[2])
        elif t is EventType.CHILD_ENDED:
            failed = int(data.get("status") != "SUCCEEDED")
            started, ended, failures = self._children
            self._children = (started, ended + 1, failures + failed)
        elif t is EventType.RUN_SUCCEEDED:
            self._end("succeeded", "green")
        elif t is EventType.RUN_FAILED:
            self._end(f"failed: {event.message}", "red")
        elif t is EventType.RUN_CANCELLED:
            self._end(f"cancelled: {event.message}", "yellow")

    def _set_state(self, state: str, style: str = "blue", wait: str = "") -> None:
        self._state, self._state_style, self._wait, self._wake_ms = state, style, wait, None

    def _set_running(self, running: dict[str, str]) -> None:
        self._running = running
        self._running_names = tuple(running.values())

    def _end(self, state: str, style: str) -> None:
        self._set_state(state, style)
        self._set_running({})
        self._ended = time.monotonic()

    def _output(self, chunk: str) -> None:
        """Print the chunk's whole lines; keep its unfinished one for the next chunk."""
        *lines, rest = (self._pending + _clean(chunk)).split("\n")
        for line in lines:
            self._print(line)
        if len(rest) > MOST_PENDING:
            self._print(rest)
            rest = ""
        self._pending = rest

    def _flush(self) -> None:
        """Print the unfinished output line (before another line, a prompt, the end)."""
        if self._pending:
            pending, self._pending = self._pending, ""
            self._print(pending)

    def _line(self, text: str) -> None:
        self._flush()
        self._print(_clean(text), self._line_style)

    def _print(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Take the panel off the screen while a prompt has the terminal; draw it after."""
        self._flush()
        live = self._live.is_started
        if live:
            self._live.transient = True  # the prompt takes the panel's place
            self._live.stop()
            self._live.transient = False
        self._paused = True
        try:
            yield
        finally:
            self._paused = False
            if live and not self._closed:
                # A new display: a stopped one would start by erasing as many lines as
                # it last drew, the prompt's now.
                self._live = self._new_live()
                self._live.start(refresh=True)

    def _new_live(self) -> Live:
        return Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=REFRESHES_PER_SECOND,
            transient=False,
        )

    def close(self) -> None:
        """Print the unfinished output line, draw the panel a last time and stop it."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        if self._ended is None:
            self._ended = time.monotonic()
        self._live.stop()

    def _render(self) -> RenderableType:
        """The panel as it is now (rich's refresh thread calls this)."""
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row("state", Text(self._state_line(), style=self._state_style))
        status = self._status.strip().split("\n", 1)[0]
        if status:
            grid.add_row("status", Text(_clean(status)))
        grid.add_row("steps", Text(self._steps_line()))
        started, ended, failures = self._children
        if started:
            failed = f", {failures} failed or cancelled" if failures else ""
            grid.add_row("children", Text(f"{ended} ended{failed}, {started - ended} running"))
        tokens_in, tokens_out = self._tokens
        grid.add_row(
            "elapsed",
            Text(
                f"{_clock(self._elapsed())}   tokens {tokens_in:,} in, {tokens_out:,} out   "
                f"retries {self._retries}"
            ),
        )
        if self._progress is not None:
            grid.add_row("progress", self._progress_row(*self._progress))
        title = " · ".join(
            part
            for part in (
                self._workflow,
                f"run {self._run_id}" if self._run_id else "",
                f"attempt {self._attempt}" if self._attempt else "",
            )
            if part
        )
        panel = Panel(
            grid,
            title=Text(_clean(title)),
            title_align="left",
            border_style=self._state_style,
        )
        pending = self._pending
        if not pending:
            return panel
        room = max(10, self.console.width - 1)
        tail = pending if len(pending) <= room else "…" + pending[-(room - 1) :]
        return Group(Text(tail, no_wrap=True), panel)

    def _state_line(self) -> str:
        wake = self._wake_ms
        if self._wait == "sleep":
            if wake is None:
                return "sleeping"
            left = wake / 1000 - time.time()
            return f"sleeping until {_wall(wake)}" + (f" ({left:.0f} s left)" if left > 0 else "")
        if self._wait:
            until = f" until {_wall(wake)}" if wake is not None else ""
            return _clean(f"waiting for {self._wait}{until}")
        return _clean(self._state or "…")

    def _steps_line(self) -> str:
        names = self._running_names
        line = f"{len(self._done)} done, {len(names)} running"
        if names:
            shown = ", ".join(_clean(n) for n in names[:MOST_NAMES])
            more = f" and {len(names) - MOST_NAMES} more" if len(names) > MOST_NAMES else ""
            line += f": {shown}{more}"
        return line

    def _progress_row(self, done: float, total: float | None) -> RenderableType:
        if total is None:
            return Text(f"{done:g} done")
        row = Table.grid(padding=(0, 1))
        row.add_row(
            ProgressBar(total=total, completed=min(done, total), width=BAR_WIDTH),
            Text(f"{done:g}/{total:g} ({min(done / total, 1):.0%})"),
        )
        return row

    def _elapsed(self) -> float:
        if self._first_seen is None:
            return 0.0
        end = time.monotonic() if self._ended is None else self._ended
        return end - self._first_seen
