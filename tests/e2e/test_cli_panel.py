"""`longline run` on a terminal draws the live panel (rich); piped, or with --plain, it
prints the plain lines of LiveView."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from rich.console import Console

from longline import Event, EventType
from longline._cli._panel import PanelView
from tests.conftest import ROOT
from tests.procs import Proc, start_control_plane, start_worker

# CSI (colours, cursor moves), OSC (titles, links), and the two-character escapes.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Variables that would make rich draw otherwise than on a plain xterm, or the CLI be plain.
UNSET = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LONGLINE_PLAIN")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and k not in UNSET}
    return {**env, "PYTHONUNBUFFERED": "1"}


def on_terminal(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `longline ARGS` with a pseudo-terminal (100 columns) as its standard input,
    output and error: (exit code, everything it wrote, escapes and all)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {**_env(), "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "longline._cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # its own session: no signal from ours reaches it
        )
    finally:
        os.close(slave)
    written = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"still running after {timeout} s:\n{plain_text(written)}"
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not chunk:
                break
            written += chunk
        return proc.wait(10), written.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def plain_text(written: bytes | str) -> str:
    """What a person reads: the escape sequences and carriage returns taken out."""
    text = written.decode(errors="replace") if isinstance(written, bytes) else written
    return ANSI.sub("", text).replace("\r", "")


def piped(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "longline._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**_env(), "TERM": "xterm-256color"},
        stdin=subprocess.DEVNULL,
    )


# Once, on one Redis: `longline run` makes test_cli's Redis calls, which run on the cluster.
@pytest.mark.single_redis
async def test_run_draws_a_live_panel_on_a_terminal_and_plain_lines_elsewhere(
    redis_url: str, procs: list[Proc]
) -> None:
    cp, target = await start_control_plane(redis_url)
    procs.append(cp)
    procs.append(await start_worker(redis_url, target, workflow="sleeper"))
    flag = ("--control-plane", target)

    code, raw = await asyncio.to_thread(
        on_terminal, "run", "sleeper", "--input", '{"seconds": 2}', *flag
    )
    text = plain_text(raw)
    assert code == 0, text
    # The panel, which LiveView never prints: its frame and title, its rows, the bar.
    run_id = re.search(r"queued run (\w+)", text).group(1)  # type: ignore[union-attr]
    assert f"╭─ sleeper · run {run_id} · attempt 1 " in text, text
    assert f"╭─ sleeper · run {run_id} · attempt 2 " in text, text  # resumed after the sleep
    assert re.search(r"state\s+sleeping until \d\d:\d\d:\d\d", text), text
    assert re.search(r"progress\s+[━╺╸]+ +1/2 \(50%\)", text), text
    assert re.search(r"elapsed\s+\d+:\d\d\s+tokens 0 in, 0 out\s+retries 0", text), text
    # The story above it, as LiveView words it; progress is the bar's, not a line.
    assert "⏸ sleeping for 2.0 s" in text
    assert "· progress" not in text
    # At the end: the result, then the panel drawn a last time, and nothing after it.
    story, final = text.rsplit("✓ succeeded; result:", 1)
    assert '"slept": 2' in final
    assert re.search(r"state\s+succeeded", final), final
    assert re.search(r"steps\s+2 done, 0 running", final), final
    assert re.search(r"progress\s+━+ +2/2 \(100%\)", final), final
    assert re.search(r"elapsed\s+0:0[2-9]", final), final  # the sleep was in it
    assert final.rstrip().endswith("╯"), final

    # Not a terminal: LiveView's plain lines, no escape sequence, no panel.
    done = await asyncio.to_thread(piped, "run", "sleeper", "--input", '{"seconds": 0.1}', *flag)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "· progress 1/2" in done.stdout and "· progress 2/2" in done.stdout
    assert "✓ succeeded; result:" in done.stdout
    assert "elapsed" not in done.stdout and "╭" not in done.stdout

    # --plain on a terminal: the same plain lines.
    code, raw = await asyncio.to_thread(
        on_terminal, "run", "sleeper", "--input", '{"seconds": 0.1}', "--plain", *flag
    )
    assert code == 0, raw
    assert "\x1b" not in raw
    assert "· progress 2/2" in raw and "✓ succeeded; result:" in raw
    assert "elapsed" not in raw and "╭" not in raw


def _event(n: int, type: EventType, message: str = "", data: object = None, **body: str) -> Event:
    data_json = body.pop("data_json", json.dumps(data) if data is not None else "")
    return Event(
        event_id=f"1-{n}",
        run_id="r1",
        type=type,
        time=None,
        attempt=int(body.pop("attempt", "1")),
        message=message,
        data_json=data_json,
        **body,
    )


def test_the_panel_keeps_output_whole_and_untrusted_text_inert() -> None:
    """Output chunks split mid-line come out as whole lines; markup and escape sequences a
    run writes are printed as text; events it cannot read change nothing."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system="truecolor")
    view = PanelView(workflow="w", console=console)
    events = [
        _event(1, EventType.RUN_STARTED, "attempt 1 started"),
        _event(2, EventType.OUTPUT, "hello wo"),
        _event(3, EventType.OUTPUT, "rld\n[red]not red[/red] \x1b[2Jgone"),
        _event(4, EventType.UNSPECIFIED, "from a newer version", [1, 2]),
        _event(5, EventType.PROGRESS, "?", ["not", "a", "dict"]),
        _event(6, EventType.STATUS, "broken data", data_json="{not json"),
        _event(7, EventType.COMPONENT_STARTED, component="draft", span_id="s1"),
        _event(8, EventType.COMPONENT_FINISHED, "", {"step": "draft#1", "tries": 3}, span_id="s1"),
    ]
    for event in events:
        view.show(event)
    assert view.last_event_id == "1-8"
    with view.paused():  # a prompt: the unfinished line is out first
        out.write("PROMPT\n")
    view.show(_event(9, EventType.RUN_FAILED, "ValueError: no"))
    view.close()
    view.close()  # again: nothing
    text = plain_text(out.getvalue())
    assert "hello world\n" in text
    assert "[red]not red[/red] ?[2Jgone\n" in text
    assert text.index("gone\n") < text.index("PROMPT\n")
    assert "\x1b[2J" not in out.getvalue()  # the run's escape never reached the terminal
    assert "✗ failed: ValueError: no" in text
    assert re.search(r"state\s+failed: ValueError: no", text), text
    assert re.search(r"steps\s+1 done, 0 running", text), text
    assert re.search(r"retries 2", text), text
    assert "progress" not in text  # no PROGRESS it could read
