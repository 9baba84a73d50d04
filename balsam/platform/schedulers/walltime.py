"""Walltimes: the one place that formats and parses the durations schedulers print.

:func:`format_minutes` writes ``HH:MM:SS`` (hours may exceed 99), which every scheduler accepts
for a limit. :func:`parse_minutes` reads every form they print back:

=====================  ==========================================================
``MM``                 Slurm ``--time=30``, a bare number (also ``60.0``)
``MM:SS``              Slurm under an hour (``30:00``); ``pair="hh:mm"`` reads
                       LSF's ``time_left`` (``0:43 L``) as hours and minutes
``HH:MM:SS``           Slurm, PBS, Cobalt (``168:00:00`` too)
``D-HH``, ``D-HH:MM``,
``D-HH:MM:SS``         Slurm over a day
``N second(s)``        LSF ``run_time`` (also ``Ns``, ``N sec``)
``""``, ``UNLIMITED``,
``INVALID``, ``N/A``,
``NOT_SET``, ``-``...  no limit / not known: None
=====================  ==========================================================

Anything else raises :class:`ValueError` naming the text, so a scheduler printing a new format is
noticed rather than misread.
"""
from __future__ import annotations

import re
from typing import Optional

NO_VALUE = frozenset({"", "UNLIMITED", "INFINITE", "INVALID", "N/A", "NA", "NOT_SET", "NONE",
                      "(NULL)", "-"})
"""Words (upper-cased) meaning "no limit" or "not known"."""

_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s|sec|secs|second|seconds|second\(s\))", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DAYS = re.compile(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+))?")
_CLOCK = re.compile(r"\d+(?::\d+){1,2}")


def format_minutes(minutes: float) -> str:
    """``minutes`` as ``HH:MM:SS`` (rounded to the second); negative values raise ValueError."""
    if not minutes >= 0 or minutes == float("inf"):
        raise ValueError(f"a walltime must be a finite number of minutes >= 0, not {minutes!r}")
    total = int(round(minutes * 60))
    hours, rest = divmod(total, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def parse_minutes(text: str, pair: str = "mm:ss") -> Optional[float]:
    """Minutes in ``text`` (any form in the module docstring); None for no limit / unknown.

    ``pair`` says how a two-field clock reads: ``"mm:ss"`` (Slurm) or ``"hh:mm"`` (LSF).
    A trailing LSF marker (`` L``, `` E``, `` X``) is ignored.
    """
    if pair not in ("mm:ss", "hh:mm"):
        raise ValueError(f"pair must be 'mm:ss' or 'hh:mm', not {pair!r}")
    value = text.strip()
    if re.fullmatch(r".*\d\s+[LEX]", value):
        value = value[:-1].strip()
    if value.upper() in NO_VALUE or re.fullmatch(r"[-:]+", value):
        return None
    if _NUMBER.fullmatch(value):
        return float(value)
    seconds = _SECONDS.fullmatch(value)
    if seconds:
        return float(seconds.group(1)) / 60
    days = _DAYS.fullmatch(value)
    if days:
        d, h, m, s = (int(g) if g else 0 for g in days.groups())
        return d * 1440 + h * 60 + m + s / 60
    if _CLOCK.fullmatch(value):
        fields = [int(f) for f in value.split(":")]
        if len(fields) == 2:
            fields = fields + [0] if pair == "hh:mm" else [0] + fields
        hours, mins, secs = fields
        return hours * 60 + mins + secs / 60
    raise ValueError(f"cannot read a walltime from {text!r}")


def parse_seconds(text: str, pair: str = "mm:ss") -> Optional[float]:
    """Like :func:`parse_minutes`, in seconds."""
    minutes = parse_minutes(text, pair)
    return None if minutes is None else minutes * 60


def minutes_or_none(text: str, pair: str = "mm:ss") -> Optional[float]:
    """:func:`parse_minutes`, with unreadable text also giving None (for optional columns
    whose garbling must not lose the rest of a status report)."""
    try:
        return parse_minutes(text, pair)
    except ValueError:
        return None
