"""PostgreSQL COPY text format: the pure-Python reference encoder and the loader of the Cython one.

COPY text is one line per row, fields separated by tabs, ``\\N`` for NULL, and backslash escapes
for backslash, tab, newline and carriage return. Encoding of a value:

- None -> ``\\N``; True/False -> ``t``/``f``; str -> itself, escaped;
- dict or list -> its JSON (``json.dumps``), escaped;
- an int (or int subclass, e.g. an IntEnum) -> its decimal digits;
- anything else (float, UUID, datetime, Decimal ...) -> ``str(value)``, escaped.

The output is UTF-8 bytes, to be sent with ``COPY ... FROM STDIN WITH (ENCODING 'UTF8')``.

The Cython kernel ``balsam.core._copyfmt`` is built by every install that finds a working C
compiler; each of its functions gives byte-for-byte the output of the ``*_py`` reference here
(``tests/test_copyfmt.py`` checks that on random inputs). :data:`KERNEL` says which one is in
use: ``"cython"``, or a sentence explaining the fallback to the reference when the kernel was
not built.
"""
from __future__ import annotations

import gc
import json
import uuid
from collections.abc import Iterable
from typing import Any, Callable, Optional

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def encode_value(value: Any) -> str:
    """The COPY text of one value (see the module docstring)."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if type(value) is str:
        return value.translate(_ESCAPES)
    if isinstance(value, (dict, list)):
        return json.dumps(value).translate(_ESCAPES)
    if isinstance(value, int):
        return str(int(value))
    return str(value).translate(_ESCAPES)


def encode_rows_py(rows: Iterable[Iterable[Any]]) -> bytes:
    """Reference: COPY text (UTF-8) of row sequences, one line per row."""
    return "".join("\t".join(encode_value(v) for v in row) + "\n" for row in rows).encode()


def encode_dicts_py(dicts: list[dict[str, Any]], columns: tuple[str, ...], start: int = 0,
                    stop: Optional[int] = None) -> bytes:
    """Reference: COPY text of ``dicts[start:stop]``, each row the values of ``columns``."""
    if not columns:
        raise ValueError("no columns")
    if start < 0 or (stop is not None and stop < 0):
        raise ValueError("start and stop must be >= 0")
    return encode_rows_py([d[c] for c in columns] for d in dicts[start:stop])


def _canonical(value: Any, check: Any) -> bool:
    if check is str:
        return type(value) is str and "\x00" not in value
    if check is bool:
        return type(value) is bool
    if check is dict:
        return type(value) is dict
    if type(check) is tuple:
        return type(value) is int and check[0] <= value <= check[1]
    if type(check) is frozenset:
        return type(value) is str and value in check
    raise TypeError(f"unknown column check {check!r}")


def check_rows_py(dicts: list[dict[str, Any]], columns: tuple[str, ...], checks: tuple[Any, ...],
                  fix: Callable[[dict[str, Any]], Any]) -> int:
    """Reference: call ``fix(d)`` on each dict holding a value not in canonical form; return how many.

    ``checks[i]`` says what canonical means for ``columns[i]``: None (anything), ``str`` (a str
    without NUL), ``bool``, ``dict``, ``(low, high)`` (an int in that range) or a frozenset (a
    str in it). Values are looked up in column order; the first non-canonical one triggers
    ``fix`` (which normalises the dict in place or raises) and ends that row's check.
    """
    if len(checks) != len(columns):
        raise ValueError("checks and columns differ in length")
    fixed = 0
    for d in dicts:
        for column, check in zip(columns, checks):
            value = d[column]
            if check is not None and not _canonical(value, check):
                fix(d)
                fixed += 1
                break
    return fixed


_V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_BITS = (0x8000 << 48) | (0x4000 << 64)


def uuids_from_bytes_py(raw: bytes) -> list[uuid.UUID]:
    """Reference: version-4 UUIDs made from each 16 bytes of ``raw`` (version and variant bits
    set, as :func:`uuid.uuid4` does with 16 random bytes)."""
    if len(raw) % 16:
        raise ValueError("raw must be a whole number of 16-byte blocks")
    return [uuid.UUID(int=int.from_bytes(raw[i:i + 16], "big") & _V4_MASK | _V4_BITS)
            for i in range(0, len(raw), 16)]


def _untracked(value: Any) -> bool:
    return not gc.is_tracked(value)


def untrack_atom_dict_py(d: dict[str, Any]) -> bool:
    """Reference: whether no value of ``d`` is tracked by the cyclic garbage collector. The kernel
    then stops tracking ``d`` itself; pure Python cannot, so this leaves ``d`` as it is."""
    if type(d) is not dict:
        raise TypeError(f"untrack_atom_dict() needs a dict, got {type(d).__name__}")
    return all(map(_untracked, d.values()))


def track_dicts_py(dicts: list[dict[str, Any]]) -> int:
    """Reference: the number of dicts of ``dicts`` the collector does not track (the kernel
    tracks them again; pure Python never untracked them, and cannot track them)."""
    for d in dicts:
        if type(d) is not dict:
            raise TypeError(f"track_dicts() needs dicts, got {type(d).__name__}")
    return sum(1 for d in dicts if not gc.is_tracked(d))


def _load_kernel() -> tuple[str, Any]:
    try:
        from balsam.core import _copyfmt  # type: ignore[attr-defined]
    except ImportError:
        return "python (the Cython kernel balsam.core._copyfmt is not built)", None
    return "cython", _copyfmt


KERNEL, _kernel = _load_kernel()
encode_rows: Callable[..., bytes] = _kernel.encode_rows if _kernel else encode_rows_py
encode_dicts: Callable[..., bytes] = _kernel.encode_dicts if _kernel else encode_dicts_py
check_rows: Callable[..., int] = _kernel.check_rows if _kernel else check_rows_py
uuids_from_bytes: Callable[[bytes], list[uuid.UUID]] = (_kernel.uuids_from_bytes if _kernel
                                                       else uuids_from_bytes_py)
untrack_atom_dict: Callable[[dict[str, Any]], bool] = (_kernel.untrack_atom_dict if _kernel
                                                       else untrack_atom_dict_py)
track_dicts: Callable[[list[dict[str, Any]]], int] = (_kernel.track_dicts if _kernel
                                                      else track_dicts_py)
