"""Expand Slurm hostlist expressions (``nid[001-003,007],login1``) into host names.

The grammar is the one ``scontrol show hostnames`` accepts: items separated by commas outside
brackets; an item is literal text with any number of bracket groups; a group holds
comma-separated numbers or ``lo-hi`` ranges. Zero padding follows the written lower bound
(``[008-010]`` gives ``008 009 010``). Several groups in one item give every combination, the
last group varying fastest (``a[1-2]b[3-4]`` gives ``a1b3 a1b4 a2b3 a2b4``), as Slurm does.
"""
from __future__ import annotations

import itertools
import re

MAX_HOSTS = 1_000_000
"""Refuse expressions naming more hosts than this (a typo like ``[0-99999999]``)."""

_NUMBER = re.compile(r"[0-9]+")


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` at commas that are outside brackets; check brackets pair up."""
    items, depth, start = [], 0, 0
    for pos, char in enumerate(text):
        if char == "[":
            if depth:
                raise ValueError(f"nested '[' at position {pos} in {text!r}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"unmatched ']' at position {pos} in {text!r}")
            depth = 0
        elif char == "," and not depth:
            items.append(text[start:pos])
            start = pos + 1
    if depth:
        raise ValueError(f"unclosed '[' in {text!r}")
    items.append(text[start:])
    return items


def _expand_group(group: str, item: str) -> list[str]:
    """The strings one bracket group stands for (``001-003,7`` -> ``001 002 003 7``)."""
    values: list[str] = []
    for part in group.split(","):
        lo, dash, hi = part.partition("-")
        if not _NUMBER.fullmatch(lo) or (dash and not _NUMBER.fullmatch(hi)):
            raise ValueError(f"bad range {part!r} in {item!r}")
        if not dash:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {part!r} in {item!r}")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise ValueError(f"range {part!r} in {item!r} names more than {MAX_HOSTS} hosts")
        values.extend(f"{n:0{len(lo)}d}" for n in range(int(lo), int(hi) + 1))
    return values


def _expand_item(item: str) -> list[str]:
    """The host names of one top-level item (literal text and bracket groups)."""
    if not item:
        raise ValueError("empty host name")
    pieces: list[list[str]] = []
    for literal_or_group in re.split(r"(\[[^\]]*\])", item):
        if literal_or_group.startswith("["):
            pieces.append(_expand_group(literal_or_group[1:-1], item))
        elif literal_or_group:
            pieces.append([literal_or_group])
    count = 1
    for values in pieces:
        count *= len(values)
    if count > MAX_HOSTS:
        raise ValueError(f"{item!r} names more than {MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand(text: str) -> list[str]:
    """Every host name in the Slurm hostlist expression ``text``, in order.

    Raises :class:`ValueError` with a one-line reason when ``text`` is empty or malformed
    (unbalanced or nested brackets, empty items, non-numeric or descending ranges, whitespace
    inside a name). Duplicates are kept as written.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty host list")
    if any(char.isspace() for char in text):
        raise ValueError(f"whitespace inside host list {text!r}")
    hosts: list[str] = []
    for item in _split_top_level(text):
        hosts.extend(_expand_item(item))
        if len(hosts) > MAX_HOSTS:
            raise ValueError(f"host list names more than {MAX_HOSTS} hosts")
    return hosts
