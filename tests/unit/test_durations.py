"""Duration flags and the settings that take them refuse what cannot be meant."""

from __future__ import annotations

import argparse

import pytest

from longline._options import duration as _duration
from longline.control_plane import ControlPlaneSettings


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800.0), ("12h", 43200.0), ("90s", 90.0), ("2.5", 2.5), ("0", 0.0)],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "7w", "", "d"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)


@pytest.mark.parametrize(
    "settings",
    [
        {"retention": float("inf")},
        {"retention": 3651 * 86400.0},
        {"retention": -1.0},
        {"ack_timeout": float("nan")},
        {"ack_timeout": 0.0},
    ],
)
def test_settings_refuse_retention_and_ack_timeouts_out_of_range(settings: dict) -> None:
    with pytest.raises(ValueError):
        ControlPlaneSettings(redis_url="redis://127.0.0.1:6379/0", **settings)
