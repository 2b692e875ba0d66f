"""Cron ticks in a time zone, across daylight-saving changes (control_plane._schedules.Cron)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from longline._store import InvalidArgumentError
from longline.control_plane._schedules import Cron

BERLIN = ZoneInfo("Europe/Berlin")


def _ticks(cron: Cron, start: datetime, end: datetime) -> list[datetime]:
    out = []
    ms = int(start.timestamp() * 1000)
    while True:
        nxt = cron.next_after(ms)
        if nxt is None or nxt > end.timestamp() * 1000:
            return out
        out.append(datetime.fromtimestamp(nxt / 1000, BERLIN))
        ms = nxt


def test_a_daily_tick_in_the_hour_clocks_skip_runs_when_it_ends() -> None:
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    ticks = _ticks(
        cron, datetime(2026, 3, 28, 12, tzinfo=BERLIN), datetime(2026, 3, 30, 12, tzinfo=BERLIN)
    )
    assert [t.strftime("%m-%d %H:%M %Z") for t in ticks] == ["03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_a_daily_tick_in_the_hour_clocks_repeat_runs_once() -> None:
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    ticks = _ticks(
        cron, datetime(2026, 10, 24, 12, tzinfo=BERLIN), datetime(2026, 10, 26, 12, tzinfo=BERLIN)
    )
    assert [t.strftime("%m-%d %H:%M %Z") for t in ticks] == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_a_tick_every_ten_minutes_runs_through_the_repeated_hour() -> None:
    cron = Cron.parse("*/10 * * * *", "Europe/Berlin")
    start = datetime(2026, 10, 25, 1, 55, tzinfo=BERLIN)
    ticks = _ticks(cron, start, datetime(2026, 10, 25, 3, 5, tzinfo=BERLIN))
    # 02:00 to 02:50 twice (CEST, then CET), then 03:00: every ten real minutes.
    assert len(ticks) == 13
    assert all(b.timestamp() - a.timestamp() == 600 for a, b in zip(ticks, ticks[1:], strict=False))


@pytest.mark.parametrize(
    ("cron", "zone", "reason"),
    [
        ("61 * * * *", "", "INVALID_CRON"),
        ("* * *", "", "INVALID_CRON"),
        ("0 0 30 2 *", "", "INVALID_CRON"),
        ("", "", "CRON_REQUIRED"),
        ("@daily", "Mars/Olympus", "UNKNOWN_TIME_ZONE"),
        ("@daily", "../../etc/passwd", "UNKNOWN_TIME_ZONE"),
        ("@daily", "x" * 300, "UNKNOWN_TIME_ZONE"),  # (a file name too long: no INTERNAL)
        ("0," * 200 + "0 * * * *", "", "INVALID_CRON"),  # too long to read every tick
    ],
)
def test_bad_crons_and_zones_are_refused(cron: str, zone: str, reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        Cron.parse(cron, zone)
    assert caught.value.reason == reason


def test_an_hourly_tick_runs_in_both_copies_of_the_repeated_hour() -> None:
    cron = Cron.parse("30 * * * *", "Europe/Berlin")
    start = datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN)
    ticks = _ticks(cron, start, datetime(2026, 10, 25, 3, 45, tzinfo=BERLIN))
    # 02:30 CEST, 02:30 CET, 03:30 CET: one an hour of real time.
    assert [t.strftime("%H:%M %Z") for t in ticks] == ["02:30 CEST", "02:30 CET", "03:30 CET"]
