"""Stored attributes as in-memory columns over iids, for filters evaluated as bitmaps.

Every attribute any user has is filterable, declared in the encoder's schema or not.
Numbers (and flags, as 1/0) live in a float column (NaN = missing); texts in a code column
(-1 = missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._errors import InvalidQuery
from ._types import AttrValue, Filter, category_key


class _Column:
    __slots__ = ("numbers", "codes", "lookup")

    def __init__(self, capacity: int) -> None:
        self.numbers = np.full(capacity, np.nan)
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.lookup: dict[str, int] = {}

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.numbers)
        self.numbers = np.concatenate([self.numbers, np.full(extra, np.nan)])
        self.codes = np.concatenate([self.codes, np.full(extra, -1, dtype=np.int32)])

    def equals(self, value: AttrValue) -> np.ndarray:
        if isinstance(value, (bool, int, float)):
            return self.numbers == float(value)
        code = self.lookup.get(category_key(value))
        return self.codes == code if code is not None else np.zeros(len(self.codes), dtype=bool)


class AttributeTable:
    def __init__(self) -> None:
        self.alive = np.zeros(1024, dtype=bool)
        self._columns: dict[str, _Column] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._columns)

    def _ensure(self, iid: int) -> None:
        if iid < len(self.alive):
            return
        capacity = max(iid + 1, 2 * len(self.alive))
        self.alive = np.concatenate([self.alive, np.zeros(capacity - len(self.alive), bool)])
        for col in self._columns.values():
            col.grow(capacity)

    def set(self, iid: int, attributes: Mapping[str, AttrValue]) -> None:
        self._ensure(iid)
        self.alive[iid] = True
        for col in self._columns.values():
            col.numbers[iid] = np.nan
            col.codes[iid] = -1
        for name, value in attributes.items():
            col = self._columns.get(name)
            if col is None:
                col = self._columns[name] = _Column(len(self.alive))
            if isinstance(value, (bool, int, float)):
                col.numbers[iid] = float(value)
            else:
                key = category_key(value)
                col.codes[iid] = col.lookup.setdefault(key, len(col.lookup))

    def remove(self, iid: int) -> None:
        if iid < len(self.alive):
            self.alive[iid] = False

    def count(self) -> int:
        return int(self.alive.sum())

    def mask(self, filters: Sequence[Filter]) -> np.ndarray:
        """Bool mask over iids of living users that pass every filter."""
        mask = self.alive.copy()
        for i, f in enumerate(filters):
            col = self._columns.get(f.attribute)
            if col is None:
                raise InvalidQuery(
                    f"filters[{i}].attribute", f"no stored user has attribute {f.attribute!r}"
                )
            if f.equals is not None:
                hit = col.equals(f.equals)
            elif f.any_of is not None:
                hit = np.zeros(len(mask), dtype=bool)
                for value in f.any_of:
                    hit |= col.equals(value)
            else:
                x = col.numbers
                hit = ~np.isnan(x)
                with np.errstate(invalid="ignore"):
                    if f.gte is not None:
                        hit &= x >= f.gte
                    if f.gt is not None:
                        hit &= x > f.gt
                    if f.lte is not None:
                        hit &= x <= f.lte
                    if f.lt is not None:
                        hit &= x < f.lt
            mask &= ~hit if f.negate else hit
        return mask
