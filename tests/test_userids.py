"""The engine's iid -> user id table (what turns search results into users)."""

from __future__ import annotations

import numpy as np
import pytest

from audience.index._userids import UserIdTable


def test_set_take_pop_and_growth() -> None:
    t = UserIdTable()
    assert len(t) == 0 and 0 not in t and list(t.iids()) == []
    t.set(5, "e")
    t.set(0, "a")
    t.set(5000, "ü-5000")  # grows past the first allocation
    t.set(5, "e2")  # replaced, not counted twice
    assert len(t) == 3
    assert t[5] == "e2" and t[5000] == "ü-5000"
    assert t.take(np.array([5000, 0, 5], np.int64)) == ["ü-5000", "a", "e2"]
    assert list(t.iids()) == [0, 5, 5000]
    assert t.items() == [(0, "a"), (5, "e2"), (5000, "ü-5000")]
    t.pop(5)
    t.pop(5)  # twice: no-op
    t.pop(10**9)  # never set: no-op
    assert len(t) == 2 and 5 not in t and -1 not in t and 10**9 not in t
    for missing in (5, -1, 10**9):
        with pytest.raises(KeyError):
            t[missing]
    assert list(t.iids()) == [0, 5000]
    probe = np.array([5000, 5, 0, -1, 10**9, 4999], np.int64)
    assert t.contains(probe).tolist() == [True, False, True, False, False, False]
    assert t.contains(np.zeros(0, np.int64)).tolist() == []


def test_set_many_counts_new_ids_once_and_keeps_python_strings() -> None:
    t = UserIdTable()
    t.set_many(np.array([3, 70_000, 1], np.int64), ["c", "big", "a"])
    t.set_many(np.array([3, 2], np.int64), ["c2", "b"])  # one replaced, one new
    assert len(t) == 4 and t[3] == "c2" and t[70_000] == "big"
    assert t.items() == [(1, "a"), (2, "b"), (3, "c2"), (70_000, "big")]
    assert all(type(u) is str for u in t.take(np.array([1, 2, 3], np.int64)))
