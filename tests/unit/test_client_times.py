"""Times the SDK returns are the server's instants, whatever the local time zone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from longline._client import _time


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_timestamp_is_read_as_utc_on_a_machine_in_another_zone(new_york: None) -> None:
    ts = Timestamp()
    ts.FromMilliseconds(1_796_000_000_123)
    when = _time(ts)
    assert when is not None and when.tzinfo is not None
    assert round(when.timestamp() * 1000) == 1_796_000_000_123
