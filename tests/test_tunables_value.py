"""Tunables stay a value after they stopped being a dataclass (issue 16, session 20: the
launcher and every serial rank import them before their first task, and ``dataclasses`` cost
each ~5 ms): equal and hashed by value, immutable, copied with changes by ``replace``, built
only with every tunable, and picklable (they travel to transition workers)."""
from __future__ import annotations

import pickle

import pytest

from balsam.core.tunables import Tunables


def test_tunables_are_a_value_changed_only_by_replace() -> None:
    a, b = Tunables.from_settings({"lease_seconds": 90}), Tunables.from_settings({})
    assert a != b and a == Tunables.from_settings({"lease_seconds": 90})
    assert len({a, Tunables.from_settings({"lease_seconds": 90}), b}) == 2
    with pytest.raises(AttributeError):
        a.lease_seconds = 1
    c = a.replace(lease_seconds=60)
    assert c == b and a.lease_seconds == 90 and "lease_seconds=60" in repr(c)
    assert pickle.loads(pickle.dumps(a)) == a


def test_tunables_are_built_only_with_every_tunable() -> None:
    values = {n: getattr(Tunables.from_settings({}), n) for n in Tunables.names()}
    assert Tunables(**values) == Tunables.from_settings({})
    with pytest.raises(TypeError):
        Tunables(**{**values, "lease_secs": 5})
    values.pop("lease_seconds")
    with pytest.raises(TypeError):
        Tunables(**values)
