"""The one walltime helper (balsam.platform.schedulers.walltime): HH:MM:SS out, every form the
schedulers print in."""
from __future__ import annotations

import pytest

from balsam.platform.schedulers.walltime import (
    format_minutes,
    minutes_or_none,
    parse_minutes,
    parse_seconds,
)


@pytest.mark.parametrize("minutes, text", [
    (0, "00:00:00"), (1, "00:01:00"), (30, "00:30:00"), (90, "01:30:00"), (1.5, "00:01:30"),
    (1440, "24:00:00"), (7200, "120:00:00"), (0.01, "00:00:01"), (59.999, "01:00:00"),
])
def test_format_minutes_writes_hh_mm_ss_with_hours_past_99(minutes, text):
    assert format_minutes(minutes) == text


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_format_minutes_refuses_negative_and_non_finite(bad):
    with pytest.raises(ValueError, match="finite number of minutes"):
        format_minutes(bad)


@pytest.mark.parametrize("text, minutes", [
    ("30", 30.0),                 # Slurm --time=30, a bare number of minutes
    ("60.0", 60.0),               # LSF RUNTIMELIMIT without its host
    ("30:00", 30.0),              # Slurm MM:SS
    ("0:45", 0.75),
    ("01:30:00", 90.0),           # HH:MM:SS (Slurm, PBS, Cobalt)
    ("168:00:00", 10080.0),
    ("1-00:00:00", 1440.0),       # Slurm D-HH:MM:SS
    ("2-12", 3600.0),             # Slurm D-HH
    ("1-06:30", 1830.0),          # Slurm D-HH:MM
    ("120 second(s)", 2.0),       # LSF run_time
    ("90s", 1.5),
    ("30 sec", 0.5),
    ("  00:10:00\n", 10.0),
])
def test_parse_minutes_reads_every_scheduler_form(text, minutes):
    assert parse_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "UNLIMITED", "INVALID", "N/A", "NOT_SET", "-", "--:--:--",
                                  "infinite", "(null)", "  "])
def test_parse_minutes_gives_none_for_no_limit_or_unknown(text):
    assert parse_minutes(text) is None


def test_two_fields_read_as_hours_and_minutes_for_lsf_time_left():
    assert parse_minutes("1:43 L", pair="hh:mm") == 103.0
    assert parse_minutes("0:05 E", pair="hh:mm") == 5.0
    assert parse_minutes("1:43", pair="mm:ss") == pytest.approx(1 + 43 / 60)
    assert parse_minutes("01:00:00", pair="hh:mm") == 60.0  # three fields are never ambiguous
    with pytest.raises(ValueError, match="pair must be"):
        parse_minutes("1:00", pair="ss")


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "1-", "-5", "12 minutes", "1h"])
def test_unreadable_text_raises_naming_it(text):
    with pytest.raises(ValueError, match="cannot read a walltime from"):
        parse_minutes(text)
    assert minutes_or_none(text) is None


def test_parse_seconds_and_round_trip():
    assert parse_seconds("1-00:00:01") == 86401.0
    assert parse_seconds("UNLIMITED") is None
    for minutes in (1, 59, 61, 1439, 1441, 10000):
        assert parse_minutes(format_minutes(minutes)) == minutes
