# cython: language_level=3
"""Cython kernel of balsam.core.copyfmt: COPY text encoding and row checks.

Every function here has a pure-Python reference of the same name with a ``_py`` suffix in
``copyfmt.py`` and gives byte-for-byte the same output (``tests/test_copyfmt.py`` checks it on
random inputs). Output is written straight into one growing C buffer as UTF-8: no per-field
Python strings are created for text, integers, booleans, UUIDs or UTC datetimes.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.datetime cimport (
    PyDateTime_DATE_GET_HOUR,
    PyDateTime_DATE_GET_MICROSECOND,
    PyDateTime_DATE_GET_MINUTE,
    PyDateTime_DATE_GET_SECOND,
    PyDateTime_GET_DAY,
    PyDateTime_GET_MONTH,
    PyDateTime_GET_YEAR,
    datetime_tzinfo,
    import_datetime,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdio cimport snprintf
from libc.string cimport memcpy

import datetime as _dt
import json as _json
import uuid as _uuid

cdef extern from "Python.h":
    ctypedef struct PyObject
    void PyObject_GC_UnTrack(object o)
    void PyObject_GC_Track(object o)
    bint PyObject_GC_IsTracked(object o)
    bint _PyObject_GC_IS_TRACKED "PyObject_GC_IsTracked" (PyObject* o)
    bint _PyObject_IS_GC "PyObject_IS_GC" (PyObject* o)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    int PyObject_GenericSetAttr(object o, object name, object value) except -1
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_IS_ASCII(object s)
    object PyUnicode_AsUTF8String(object s)
    char* PyBytes_AS_STRING(object b)
    Py_ssize_t PyBytes_GET_SIZE(object b)
    long long PyLong_AsLongLongAndOverflow(object v, int* overflow) except? -1

import_datetime()

cdef object _UUID = _uuid.UUID
cdef object _DATETIME = _dt.datetime
cdef object _UTC = _dt.timezone.utc
cdef object _dumps = _json.dumps
cdef object _UNKNOWN = _uuid.SafeUUID.unknown
cdef object _from_bytes = int.from_bytes
cdef object _V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
cdef object _V4_BITS = (0x8000 << 48) | (0x4000 << 64)
cdef const char* _HEX = b"0123456789abcdef"


cdef class _Buffer:
    """A growable byte buffer (the COPY text being built)."""

    cdef char* data
    cdef Py_ssize_t size
    cdef Py_ssize_t cap

    def __cinit__(self, Py_ssize_t cap=65536):
        self.data = <char*>PyMem_Malloc(cap)
        if self.data == NULL:
            raise MemoryError()
        self.size = 0
        self.cap = cap

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t want = self.size + extra
        cdef Py_ssize_t cap = self.cap
        cdef char* grown
        if want <= cap:
            return 0
        while cap < want:
            cap *= 2
        grown = <char*>PyMem_Realloc(self.data, cap)
        if grown == NULL:
            raise MemoryError()
        self.data = grown
        self.cap = cap
        return 0

    cdef inline int put(self, const char* s, Py_ssize_t n) except -1:
        self.reserve(n)
        memcpy(self.data + self.size, s, n)
        self.size += n
        return 0

    cdef inline int put_char(self, char c) except -1:
        self.reserve(1)
        self.data[self.size] = c
        self.size += 1
        return 0

    cdef int put_escaped(self, const char* s, Py_ssize_t n) except -1:
        """UTF-8 bytes with COPY escapes (the escaped bytes are ASCII, so never inside a
        multi-byte sequence)."""
        cdef Py_ssize_t i
        cdef char c
        cdef char* out
        self.reserve(2 * n)
        out = self.data + self.size
        for i in range(n):
            c = s[i]
            if c == b'\\':
                out[0] = b'\\'; out[1] = b'\\'; out += 2
            elif c == b'\t':
                out[0] = b'\\'; out[1] = b't'; out += 2
            elif c == b'\n':
                out[0] = b'\\'; out[1] = b'n'; out += 2
            elif c == b'\r':
                out[0] = b'\\'; out[1] = b'r'; out += 2
            else:
                out[0] = c; out += 1
        self.size = out - self.data
        return 0

    cdef bytes value(self):
        return PyBytes_FromStringAndSize(self.data, self.size)


cdef int _put_str(_Buffer buf, str s) except -1:
    cdef Py_ssize_t n = 0
    cdef const char* p
    cdef object encoded
    if PyUnicode_IS_ASCII(s):
        p = PyUnicode_AsUTF8AndSize(s, &n)  # an ASCII str's own data: no copy, no cache
        return buf.put_escaped(p, n)
    encoded = PyUnicode_AsUTF8String(s)  # a temporary, so the str does not keep a UTF-8 copy
    return buf.put_escaped(PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))


cdef int _put_uuid(_Buffer buf, object u) except -1:
    cdef bytes raw = (<object>u.int).to_bytes(16, "big")
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef char text[36]
    cdef int i, j = 0
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            text[j] = b'-'
            j += 1
        text[j] = _HEX[b[i] >> 4]
        text[j + 1] = _HEX[b[i] & 15]
        j += 2
    return buf.put(text, 36)


cdef inline void _digits(char* out, int value, int width):
    """``value`` as exactly ``width`` decimal digits, zero-padded (0 <= value < 10**width)."""
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(48 + value % 10)
        value //= 10


cdef int _put_utc_datetime(_Buffer buf, object d) except -1:
    """str() of an aware UTC datetime: ``YYYY-MM-DD HH:MM:SS[.ffffff]+00:00``."""
    cdef char text[32]
    cdef int micro = PyDateTime_DATE_GET_MICROSECOND(d)
    cdef int n = 19
    _digits(text, PyDateTime_GET_YEAR(d), 4)  # years are 1..9999
    text[4] = b'-'
    _digits(text + 5, PyDateTime_GET_MONTH(d), 2)
    text[7] = b'-'
    _digits(text + 8, PyDateTime_GET_DAY(d), 2)
    text[10] = b' '
    _digits(text + 11, PyDateTime_DATE_GET_HOUR(d), 2)
    text[13] = b':'
    _digits(text + 14, PyDateTime_DATE_GET_MINUTE(d), 2)
    text[16] = b':'
    _digits(text + 17, PyDateTime_DATE_GET_SECOND(d), 2)
    if micro:
        text[19] = b'.'
        _digits(text + 20, micro, 6)
        n = 26
    memcpy(text + n, b"+00:00", 6)
    return buf.put(text, n + 6)


cdef int _put_value(_Buffer buf, object v) except -1:
    cdef type t = type(v)
    cdef long long number
    cdef int overflow = 0
    cdef char text[32]
    cdef int n
    if v is None:
        return buf.put(b"\\N", 2)
    if v is True:
        return buf.put_char(b't')
    if v is False:
        return buf.put_char(b'f')
    if t is str:
        return _put_str(buf, <str>v)
    if t is int:
        number = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            return _put_str(buf, str(v))
        if 0 <= number <= 9:  # most job integers (nodes, ranks, threads) are single digits
            return buf.put_char(<char>(48 + number))
        n = snprintf(text, 32, "%lld", number)
        return buf.put(text, n)
    if t is _UUID:
        return _put_uuid(buf, v)
    if t is _DATETIME and datetime_tzinfo(v) is _UTC:
        return _put_utc_datetime(buf, v)
    if isinstance(v, (dict, list)):
        if not v:  # json.dumps of an empty dict or list, the common ``data``, without the call
            return buf.put(b"{}", 2) if isinstance(v, dict) else buf.put(b"[]", 2)
        return _put_str(buf, _dumps(v))
    if isinstance(v, int):
        return _put_str(buf, str(int(v)))
    return _put_str(buf, str(v))


def encode_rows(rows):
    """COPY text (UTF-8 bytes) of an iterable of row sequences, one line per row."""
    cdef _Buffer buf = _Buffer()
    cdef bint first
    for row in rows:
        first = True
        for v in row:
            if not first:
                buf.put_char(b'\t')
            first = False
            _put_value(buf, v)
        buf.put_char(b'\n')
    return buf.value()


def encode_dicts(list dicts, tuple columns, Py_ssize_t start=0, stop=None):
    """COPY text (UTF-8 bytes) of ``dicts[start:stop]``, each row the values of ``columns``."""
    cdef _Buffer buf = _Buffer()
    cdef Py_ssize_t ncols = len(columns)
    cdef Py_ssize_t end = len(dicts) if stop is None else min(<Py_ssize_t>stop, len(dicts))
    cdef Py_ssize_t r, i
    cdef dict d
    if ncols == 0:
        raise ValueError("no columns")
    if start < 0 or end < 0:
        raise ValueError("start and stop must be >= 0")
    for r in range(start, end):
        d = dicts[r]
        _put_value(buf, d[columns[0]])
        for i in range(1, ncols):
            buf.put_char(b'\t')
            _put_value(buf, d[columns[i]])
        buf.put_char(b'\n')
    return buf.value()


cdef bint _canonical(object v, object check) except -1:
    cdef type t = type(v)
    if check is str:
        return t is str and "\x00" not in <str>v
    if check is bool:
        return t is bool
    if check is dict:
        return t is dict
    if type(check) is tuple:
        return t is int and check[0] <= v <= check[1]
    if type(check) is frozenset:
        return t is str and v in <frozenset>check
    raise TypeError(f"unknown column check {check!r}")


def check_rows(list dicts, tuple columns, tuple checks, fix):
    """Call ``fix(d)`` on each dict with a value not already in canonical form; return how many.

    ``checks[i]`` says what canonical means for ``columns[i]``: None (anything), ``str`` (a str
    without NUL), ``bool``, ``dict``, ``(low, high)`` (an int in that range) or a frozenset (a
    str in it). Values are looked up in column order; the first non-canonical one triggers
    ``fix`` (which normalises the dict in place or raises) and ends that row's check.
    """
    cdef Py_ssize_t ncols = len(columns)
    cdef Py_ssize_t i, fixed = 0
    cdef dict d
    cdef object check
    if len(checks) != ncols:
        raise ValueError("checks and columns differ in length")
    for d in dicts:
        for i in range(ncols):
            check = checks[i]
            v = d[columns[i]]
            if check is not None and not _canonical(v, check):
                fix(d)
                fixed += 1
                break
    return fixed


def uuids_from_bytes(bytes raw):
    """Version-4 UUIDs made from each 16 bytes of ``raw`` (version and variant bits set, as
    :func:`uuid.uuid4` does with 16 random bytes).

    The UUIDs are not tracked by the cyclic garbage collector: a UUID holds only an int and an
    enum member and refuses new attributes, so it can never be part of a reference cycle (the
    same reasoning lets CPython untrack tuples of atoms). 100,000 new jobs each holding a tracked
    UUID cost the collector ~0.1 s in repeated scans.
    """
    cdef Py_ssize_t i, count = len(raw) // 16
    cdef list out = []
    cdef object u
    if len(raw) % 16:
        raise ValueError("raw must be a whole number of 16-byte blocks")
    for i in range(count):
        u = _UUID.__new__(_UUID)
        PyObject_GenericSetAttr(u, "int", _from_bytes(raw[16 * i:16 * i + 16], "big") & _V4_MASK | _V4_BITS)
        PyObject_GenericSetAttr(u, "is_safe", _UNKNOWN)
        PyObject_GC_UnTrack(u)
        out.append(u)
    return out


def untrack_atom_dict(dict d):
    """Stop the cyclic garbage collector tracking ``d`` if none of its values is tracked (each is
    an atom -- str, int, bool, None, datetime -- or a container the collector does not track:
    an empty dict, a UUID from :func:`uuids_from_bytes`); returns whether that was so.

    Such a dict cannot be part of a reference cycle now, and CPython tracks it again itself as
    soon as a tracked value is stored in it. What it cannot see is a value that is a container
    (an empty dict) being filled later in place; :func:`track_dicts` undoes this when the dicts
    are saved (see ``BalsamJob.__init__``).
    """
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* value
    while PyDict_Next(d, &pos, &key, &value):
        if _PyObject_IS_GC(value) and _PyObject_GC_IS_TRACKED(value):
            return False
    if PyObject_GC_IsTracked(d):
        PyObject_GC_UnTrack(d)
    return True


def track_dicts(list dicts):
    """Let the cyclic garbage collector track again each dict of ``dicts`` (undoes
    :func:`untrack_atom_dict`); returns how many were untracked."""
    cdef Py_ssize_t count = 0
    cdef object d
    for d in dicts:
        if type(d) is not dict:
            raise TypeError(f"track_dicts() needs dicts, got {type(d).__name__}")
        if not PyObject_GC_IsTracked(d):
            PyObject_GC_Track(d)
            count += 1
    return count
