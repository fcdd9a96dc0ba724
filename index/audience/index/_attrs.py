"""Stored attributes as in-memory columns over iids, for filters evaluated as bitmaps.

Every attribute any user has is filterable, declared in the encoder's schema or not.
Numbers (and flags, as 1/0) live in a float column (NaN = missing); texts in a code column
(-1 = missing).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from ._errors import InvalidQuery
from ._types import AttrValue, Filter, category_key

_LOOKS_LIKE_RANGE = re.compile(r"^\s*\d+(?:\.\d+)?\s*-\s*\d+(?:\.\d+)?\s*$")


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

    def mask(self, filters: Sequence[Filter], warnings: list[str] | None = None) -> np.ndarray:
        """Bool mask over iids of living users that pass every filter. A value that no stored
        user has is said in `warnings` (with the values there are); text compared with an
        attribute that holds only numbers is an InvalidQuery (naming the range syntax)."""
        mask = self.alive.copy()
        for i, f in enumerate(filters):
            col = self._columns.get(f.attribute)
            if col is None:
                raise InvalidQuery(
                    f"filters[{i}].attribute", f"no stored user has attribute {f.attribute!r}"
                )
            if f.equals is not None or f.any_of is not None:
                field = f"filters[{i}].{'equals' if f.equals is not None else 'any_of'}"
                hit = np.zeros(len(mask), dtype=bool)
                for value in [f.equals] if f.equals is not None else list(f.any_of or ()):
                    self._check_kind(col, f.attribute, value, field)
                    one = col.equals(value)
                    if warnings is not None and not one[self.alive].any():
                        warnings.append(self._unknown_value(col, f.attribute, value, field))
                    hit |= one
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

    @staticmethod
    def _check_kind(col: _Column, name: str, value: AttrValue, field: str) -> None:
        if isinstance(value, str) and not col.lookup:  # only numbers were ever stored
            hint = ""
            if _LOOKS_LIKE_RANGE.match(value):
                lo, hi = (part.strip() for part in value.split("-", 1))
                hint = f"; for a range write {name}={lo}..{hi} (or {name}>={lo} and {name}<={hi})"
            raise InvalidQuery(field, f"{name} holds numbers, not text like {value!r}{hint}")

    def _unknown_value(self, col: _Column, name: str, value: AttrValue, field: str) -> str:
        """The warning for a value no stored user has: the values (or the range) there are."""
        if isinstance(value, str):
            known = sorted(col.lookup)
            close = difflib.get_close_matches(category_key(value), known, n=3, cutoff=0.6)
            shown = close or known[:8]
            more = "" if close or len(known) <= 8 else f" and {len(known) - 8} more"
            label = "closest" if close else "known"
            listed = ", ".join(repr(v) for v in shown)
            return f"{field}: no stored user has {name} {value!r} ({label}: {listed}{more})"
        values = col.numbers[self.alive]
        values = values[~np.isnan(values)]
        if not len(values):
            return f"{field}: no stored user has a number for {name}"
        lo, hi = float(values.min()), float(values.max())
        return f"{field}: no stored user has {name} {value:g} (values {lo:g}..{hi:g})"
