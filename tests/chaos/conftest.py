"""Chaos tests: real subprocesses, real signals. Marked slow: `--skip-slow` skips them
locally; CI (CI=true) always runs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import Proc

LEASE = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test started; killed (and their logs shown on failure) afterwards."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        print(f"----- {proc.name} log -----\n{proc.output()[-4000:]}")
