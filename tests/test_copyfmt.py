"""The COPY kernel: built and used, byte-identical to the pure-Python reference on random inputs,
and what it encodes comes back out of a real PostgreSQL COPY exactly."""
from __future__ import annotations

import datetime as dt
import gc
import io
import json
import math
import os
import uuid
from decimal import Decimal
from enum import IntEnum

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balsam.core import copyfmt

SPECIAL = st.sampled_from(["\\", "\t", "\n", "\r", "\\N", "é", "☃", "😀", " ", "\x01", '"', "'"])
TEXT = st.lists(st.one_of(st.text(max_size=8), SPECIAL), max_size=6).map("".join)
ZONES = st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=-5)),
                         dt.timezone(dt.timedelta(hours=5, minutes=30))])
AWARE = st.datetimes(timezones=ZONES)
ROUND_TRIP_AWARE = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                                timezones=ZONES)
"""Instants whose UTC date Python can hold when the server sends them back (0001-01-01 at
+05:30 is year 0 in UTC: psycopg2 then fails to build it)."""
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8)


class Level(IntEnum):
    LOW = 1
    HIGH = 12


VALUE = st.one_of(
    st.none(), st.booleans(), TEXT,
    st.integers(), st.integers(-(2**63), 2**63 - 1), st.integers(-20, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.uuids(), st.datetimes(), AWARE, st.dates(),
    st.dictionaries(TEXT, JSONISH, max_size=3), st.lists(JSONISH, max_size=3),
    st.decimals(allow_nan=False), st.sampled_from(list(Level)),
)
ROWS = st.lists(st.lists(VALUE, min_size=1, max_size=8), max_size=12)


# ---- the kernel is built and used ------------------------------------------------------------

def test_the_cython_kernel_is_built_and_used() -> None:
    from balsam.core import _copyfmt  # type: ignore[attr-defined]

    assert copyfmt.KERNEL == "cython"
    assert copyfmt.encode_rows is _copyfmt.encode_rows
    assert copyfmt.encode_dicts is _copyfmt.encode_dicts
    assert copyfmt.check_rows is _copyfmt.check_rows
    assert copyfmt.uuids_from_bytes is _copyfmt.uuids_from_bytes
    assert copyfmt.untrack_atom_dict is _copyfmt.untrack_atom_dict
    assert copyfmt.track_dicts is _copyfmt.track_dicts
    assert _copyfmt.__file__.endswith(".so")


# ---- identical output ------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(ROWS)
@pytest.mark.slow
def test_kernel_encodes_random_rows_exactly_as_the_reference(rows: list) -> None:
    assert copyfmt.encode_rows(rows) == copyfmt.encode_rows_py(rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), VALUE, min_size=6), max_size=10),
       st.integers(0, 12), st.one_of(st.none(), st.integers(0, 12)))
@pytest.mark.slow
def test_kernel_encodes_dict_slices_exactly_as_the_reference(dicts, start, stop) -> None:
    columns = ("c", "a", "f")
    assert (copyfmt.encode_dicts(dicts, columns, start, stop)
            == copyfmt.encode_dicts_py(dicts, columns, start, stop))


CHECKS = st.sampled_from([None, str, bool, dict, (0, 10), (1, 2**31 - 1),
                          frozenset({"CREATED", "READY"})])
CHECK_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 20), TEXT,
                        st.sampled_from(["CREATED", "READY", "x\x00y", 3.0]),
                        st.dictionaries(TEXT, st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(CHECK_VALUE, CHECK_VALUE, CHECK_VALUE), max_size=10),
       st.tuples(CHECKS, CHECKS, CHECKS))
def test_kernel_checks_rows_exactly_as_the_reference(values, checks) -> None:
    columns = ("x", "y", "z")
    results = []
    for check_rows in (copyfmt.check_rows, copyfmt.check_rows_py):
        dicts = [dict(zip(columns, v), row=i) for i, v in enumerate(values)]
        fixed: list[int] = []
        count = check_rows(dicts, columns, checks, lambda d, into=fixed: into.append(d["row"]))
        results.append((count, fixed))
    assert results[0] == results[1]


@given(st.binary(min_size=0, max_size=16 * 20).map(lambda b: b[:len(b) // 16 * 16]))
def test_kernel_makes_the_same_version4_uuids_as_the_reference(raw: bytes) -> None:
    made = copyfmt.uuids_from_bytes(raw)
    assert made == copyfmt.uuids_from_bytes_py(raw)
    assert all(type(u) is uuid.UUID and u.version == 4 and u.variant == uuid.RFC_4122
               for u in made)
    assert [str(u) for u in made] == [str(u) for u in copyfmt.uuids_from_bytes_py(raw)]


def test_kernel_uuids_are_untracked_by_gc_and_behave_as_uuids() -> None:
    import copy
    import pickle

    made = copyfmt.uuids_from_bytes(os.urandom(16 * 3))
    assert not any(gc.is_tracked(u) for u in made)
    u = made[0]
    assert pickle.loads(pickle.dumps(u)) == u and copy.deepcopy(u) == u
    assert uuid.UUID(str(u)) == u and hash(uuid.UUID(str(u))) == hash(u)
    with pytest.raises(TypeError):
        u.int = 5  # immutable, as every UUID
    del made, u
    gc.collect()


ATOM_OR_NOT = st.one_of(VALUE, st.just({}), st.just(()), st.builds(lambda: []),
                        st.builds(lambda: copyfmt.uuids_from_bytes(os.urandom(16))[0]))


@given(st.dictionaries(TEXT, ATOM_OR_NOT, max_size=10))
def test_kernel_untracks_a_dict_exactly_when_the_reference_finds_no_tracked_value(d) -> None:
    d = dict(d)
    expected = copyfmt.untrack_atom_dict_py(d)
    assert expected == all(not gc.is_tracked(v) for v in d.values())
    was_tracked = gc.is_tracked(d)
    assert copyfmt.untrack_atom_dict(d) == expected
    assert gc.is_tracked(d) == (was_tracked and not expected)
    untracked = copyfmt.track_dicts_py([d])
    assert untracked == (not gc.is_tracked(d))
    assert copyfmt.track_dicts([d]) == untracked  # tracked again
    assert gc.is_tracked(d)


def test_an_untracked_dict_is_tracked_again_when_a_container_is_stored_or_by_track_dicts() -> None:
    d = {"job_id": copyfmt.uuids_from_bytes(os.urandom(16))[0], "data": {}, "n": 1, "s": "x"}
    assert gc.is_tracked(d)  # CPython tracks a dict holding any container
    assert copyfmt.untrack_atom_dict(d) and not gc.is_tracked(d)
    d["more"] = "text"
    assert not gc.is_tracked(d)
    d["cycle"] = [d]  # CPython tracks it again: the cycle is collectable
    assert gc.is_tracked(d)
    assert not copyfmt.untrack_atom_dict(d) and gc.is_tracked(d)
    e = {"a": 1}
    copyfmt.untrack_atom_dict(e)
    assert copyfmt.track_dicts_py([e, d]) == 1  # the reference counts, cannot track
    assert copyfmt.track_dicts([e, d]) == 1 and gc.is_tracked(e)
    with pytest.raises(TypeError, match="needs dicts"):
        copyfmt.track_dicts([e, ["not a dict"]])
    with pytest.raises(TypeError, match="needs dicts"):
        copyfmt.track_dicts_py([["not a dict"]])
    with pytest.raises(TypeError):
        copyfmt.untrack_atom_dict(["not a dict"])
    with pytest.raises(TypeError, match="needs a dict"):
        copyfmt.untrack_atom_dict_py(["not a dict"])


def test_kernel_and_reference_agree_on_errors() -> None:
    for fn in (copyfmt.encode_dicts, copyfmt.encode_dicts_py):
        with pytest.raises(KeyError):
            fn([{"a": 1}], ("a", "b"))
        with pytest.raises(ValueError):
            fn([{"a": 1}], ())
        with pytest.raises(ValueError):
            fn([{"a": 1}], ("a",), -1)
    for fn in (copyfmt.encode_rows, copyfmt.encode_rows_py):
        with pytest.raises(UnicodeEncodeError):
            fn([["lone \udc80 surrogate"]])
        with pytest.raises(TypeError):
            fn([[{"not json": object()}]])
    for fn in (copyfmt.uuids_from_bytes, copyfmt.uuids_from_bytes_py):
        with pytest.raises(ValueError):
            fn(b"x" * 17)


def test_encoding_of_each_kind_of_value_is_the_documented_one() -> None:
    when = dt.datetime(2024, 2, 29, 23, 5, 7, 42, tzinfo=dt.timezone.utc)
    row = [None, True, False, "a\tb\nc\rd\\e", "é", 7, -12, 2**70, 0.5, {}, [], {"k": "\t"},
           uuid.UUID(int=1), when, when.replace(microsecond=0), Level.HIGH, Decimal("1.50")]
    assert copyfmt.encode_rows([row]) == (
        b"\\N\tt\tf\ta\\tb\\nc\\rd\\\\e\t\xc3\xa9\t7\t-12\t1180591620717411303424\t0.5\t{}\t[]\t"
        b'{"k": "\\\\t"}\t00000000-0000-0000-0000-000000000001\t2024-02-29 23:05:07.000042+00:00\t'
        b"2024-02-29 23:05:07+00:00\t12\t1.50\n")


# ---- real COPY round trip ----------------------------------------------------------------------

COLUMNS = ("t", "i", "b", "f", "u", "ts", "j", "n")
ROUND_TRIP_TEXT = TEXT.filter(lambda s: "\x00" not in s)  # PostgreSQL text cannot hold NUL
ROUND_TRIP_ROW = st.tuples(
    st.one_of(st.none(), ROUND_TRIP_TEXT),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.uuids()),
    st.one_of(st.none(), ROUND_TRIP_AWARE),
    st.one_of(st.none(), st.dictionaries(TEXT, JSONISH, max_size=3).filter(
        lambda d: "\\u0000" not in json.dumps(d))),  # nor can jsonb
    st.one_of(st.none(), st.integers(-10**30, 10**30)),
)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(ROUND_TRIP_ROW, max_size=15))
def test_encoded_rows_round_trip_through_a_real_copy_exactly(cursor, rows) -> None:
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS rt (seq serial, t text, i bigint, b boolean, "
                   "f double precision, u uuid, ts timestamptz, j jsonb, n numeric)")
    cursor.execute("TRUNCATE rt")
    for encode in (copyfmt.encode_rows, copyfmt.encode_rows_py):
        cursor.execute("TRUNCATE rt RESTART IDENTITY")
        cursor.copy_expert(f"COPY rt ({', '.join(COLUMNS)}) FROM STDIN WITH (ENCODING 'UTF8')",
                           io.BytesIO(encode(rows)))
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM rt ORDER BY seq")
        back = cursor.fetchall()
        assert len(back) == len(rows)
        for sent, got in zip(rows, back):
            t, i, b, f, u, ts, j, n = got
            assert same(t, sent[0]) and same(i, sent[1]) and same(b, sent[2]) and same(f, sent[3])
            assert (uuid.UUID(str(u)) if u else u) == sent[4]
            assert ts == sent[5]  # the same instant (PostgreSQL returns it in UTC)
            assert j == sent[6]
            assert (int(n) if n is not None else None) == sent[7]
