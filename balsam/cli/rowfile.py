"""Read the rows of ``balsam job --from-file``: CSV with a header line, or JSON lines.

The format is told by the first character that is not white space: ``{`` means JSON lines (one
object per line, blank lines skipped), anything else CSV (the first line names the columns;
blank lines skipped; a UTF-8 byte-order mark ignored). Every row comes with its line number in
the file (for CSV, the line its record ends on), so a bad row can be named. ``-`` reads stdin.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

from balsam.errors import BalsamError

Record = tuple[int, dict[str, Any]]
"""(line number, {column: value}): CSV values are text, JSON values as parsed."""


def read_text(path: str) -> str:
    """The whole file (``-``: stdin) as text; BalsamError if it cannot be read or is not UTF-8."""
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8-sig")
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8-sig")
    except OSError as exc:
        raise BalsamError(f"--from-file {path}: cannot read it: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        raise BalsamError(f"--from-file {path}: not UTF-8 text (byte {exc.start})")


def read_records(path: str) -> tuple[list[str], list[Record]]:
    """(column names in order of first appearance, the rows) of a CSV or JSON-lines file."""
    text = read_text(path)
    if text.lstrip()[:1] == "{":
        return _json_lines(path, text)
    return _csv(path, text)


def _csv(path: str, text: str) -> tuple[list[str], list[Record]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    records: list[Record] = []
    try:
        for cells in reader:
            if not cells or cells == [""]:
                continue
            line = reader.line_num
            if not header:
                header = [c.strip() for c in cells]
                _check_header(path, line, header)
                continue
            if len(cells) != len(header):
                raise BalsamError(f"{path}, line {line}: {len(cells)} values for {len(header)} "
                                  "columns")
            records.append((line, dict(zip(header, cells))))
    except csv.Error as exc:
        raise BalsamError(f"{path}, line {reader.line_num}: not valid CSV: {exc}")
    if not header:
        raise BalsamError(f"--from-file {path}: empty; expected a header line naming the columns")
    return header, records


def _check_header(path: str, line: int, header: list[str]) -> None:
    for i, name in enumerate(header):
        if not name:
            raise BalsamError(f"{path}, line {line}: column {i + 1} of the header has no name")
        if name in header[:i]:
            raise BalsamError(f"{path}, line {line}: column {name!r} appears twice in the header")


def _json_lines(path: str, text: str) -> tuple[list[str], list[Record]]:
    columns: dict[str, None] = {}
    records: list[Record] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BalsamError(f"{path}, line {line}: not valid JSON: {exc}")
        if not isinstance(obj, dict):
            raise BalsamError(f"{path}, line {line}: a JSON object is expected on each line, not "
                              f"{type(obj).__name__}")
        for key, value in obj.items():
            if value is None:
                raise BalsamError(f"{path}, line {line}: {key!r} is null; leave it out instead")
            columns.setdefault(key)
        records.append((line, obj))
    return list(columns), records


def as_text(value: Any) -> str:
    """A value as substituted into a template: text as it is, anything else as JSON
    (``true``, ``3``, ``0.5``, ``{"a": 1}``)."""
    return value if isinstance(value, str) else json.dumps(value)
