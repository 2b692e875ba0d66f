"""e2e tests start the planes as subprocesses; every process is killed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test started; stopped (and their logs shown on failure) afterwards."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        # pytest shows this only when the test failed
        print(f"----- {proc.name} log -----\n{proc.output()[-4000:]}")
