"""The reviewed_post example end to end: a person answers the outline review at the CLI's
prompt in a pseudo-terminal, or from anywhere with `longline input`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

import longline
from longline._devstack import DevStack
from tests.conftest import ROOT, eventually

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture
async def examples(redis_url: str) -> AsyncIterator[str]:
    """The bundled examples on the offline model, as `longline dev` serves them."""
    async with DevStack(
        "longline.examples",
        redis_url=redis_url,
        offline_model=True,
        offline_token_delay=0.0,
        control_plane={"listen": "127.0.0.1:0"},
        worker={"slots": 4},
        connect_timeout=10,
    ) as dev:
        yield dev.target


class Terminal:
    """A `longline` command on a pseudo-terminal: what it printed so far, and typing."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "longline._cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env={**env, "TERM": "dumb", "COLUMNS": "100"},
            close_fds=True,
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.text = ""

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self.text += _ANSI.sub("", chunk.decode(errors="replace"))

    async def expect(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read()
            if re.search(pattern, self.text):
                return
            if self.proc.poll() is not None:
                self._read()
                if re.search(pattern, self.text):
                    return
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the terminal:\n{self.text}")

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    async def exit_code(self, timeout: float = 30) -> int:
        code = await asyncio.to_thread(self.proc.wait, timeout)
        self._read()
        os.close(self.master)
        return code


async def test_the_review_is_asked_for_at_the_terminal_with_a_form_from_the_schema(
    examples: str,
) -> None:
    term = Terminal(
        "run",
        "reviewed_post",
        "--input",
        '{"topic": "tides", "sections": 2}',
        "--control-plane",
        examples,
    )
    try:
        await term.expect(r"The run asks for input outline")
        assert 'The outline of "tides"' in term.text
        await term.expect(r"approved \(write the post\) \[yes/no\]: ")
        term.type("perhaps")  # not a yes or no: asked again
        await term.expect(r"answer yes or no; try again")
        term.type("yes")
        await term.expect(r"one per line, an empty line ends")
        term.type("Why tides happen")
        term.type("Spring and neap tides")
        term.type("")
        await term.expect(r"✓ succeeded; result:")
        assert await term.exit_code() == 0, term.text
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "✉ input outline received" in term.text
    assert '"Why tides happen"' in term.text and '"Spring and neap tides"' in term.text


async def test_without_a_terminal_the_view_says_how_to_answer_and_longline_input_does(
    examples: str,
) -> None:
    async with longline.Client(examples) as client:
        handle = await client.start("reviewed_post", {"topic": "tides", "sections": 3})

        async def waiting() -> bool:
            run = await handle.describe()
            return run.wait is not None and run.wait.input_name == "outline"

        await eventually(waiting, what="the run to wait for its review")
        watch = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "longline._cli",
            "watch",
            handle.run_id,
            "--control-plane",
            examples,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        answer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "longline._cli",
            "input",
            handle.run_id,
            "outline",
            "--data",
            json.dumps({"approved": False}),
            "--control-plane",
            examples,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        said, _ = await asyncio.wait_for(answer.communicate(), 60)
        assert answer.returncode == 0, said.decode()
        assert f"run {handle.run_id}: input outline sent" in said.decode()
        shown, _ = await asyncio.wait_for(watch.communicate(), 60)
        out = shown.decode()
        assert watch.returncode == 0, out
        assert f"answer with: longline input {handle.run_id} outline --data" in out
        assert "⏸ waiting for input outline" in out
        assert '"rejected": true' in out
        result = await handle.result()
        assert result["rejected"] is True and len(result["outline"]) == 3
        # A second, different answer is refused, saying why, and the command fails.
        again = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "longline._cli",
            "input",
            handle.run_id,
            "outline",
            "--data",
            '{"approved": true}',
            "--control-plane",
            examples,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode == 1
        assert "FAILED_PRECONDITION" in err.decode()
        assert "already received another payload for input 'outline'" in err.decode()
