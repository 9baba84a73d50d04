"""PostgreSQL COPY text format: the pure-Python reference encoder and the loader of the Cython one.

``encode_rows(rows)`` turns a list of tuples into COPY text (tab-separated, ``\\N`` for NULL,
backslash escapes for backslash, tab, newline and carriage return; booleans as ``t``/``f``).
The Cython kernel ``balsam.core._copyfmt`` is built by every normal install and gives identical
output (``tests/test_copyfmt.py`` checks that on random inputs); this module falls back to the
reference, and says so in :data:`KERNEL`, if the kernel was not built.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def encode_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    return str(value).translate(_ESCAPES)


def encode_rows_py(rows: Iterable[Iterable[Any]]) -> str:
    """Reference encoder: one line per row."""
    return "".join("\t".join(encode_value(v) for v in row) + "\n" for row in rows)


def _load_kernel() -> tuple[Callable[[list[tuple]], str], str]:
    try:
        from balsam.core import _copyfmt  # type: ignore[attr-defined]
    except ImportError:
        return encode_rows_py, "python (the Cython kernel balsam.core._copyfmt is not built)"
    return _copyfmt.encode_rows, "cython"


encode_rows, KERNEL = _load_kernel()
