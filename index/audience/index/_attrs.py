"""Stored attributes as in-memory columns over iids, for filters evaluated as bitmaps.

Every attribute any user has is filterable, declared in the encoder's schema or not.
Numbers (and flags, as 1/0) live in a float column (NaN = missing); texts in a code column
(-1 = missing).

Predicted values (_predict/) live in columns of their own, never in the stored ones, with the
confidence of each: a filter on `predicted.NAME` reads only them; a filter on NAME with
`predicted` set reads the stored value and, for users without one, the predicted value whose
confidence is at least `min_confidence`.

The stored columns are saved with each index generation (`write_stored`, plain arrays, no
pickle) and read back at start (`read_stored`) instead of every user's attributes.
"""

from __future__ import annotations

import difflib
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ._errors import InvalidQuery
from ._types import AttrValue, Filter, category_key

PREDICTED = "predicted."  # the prefix that names a predicted column in a filter
_LOOKS_LIKE_RANGE = re.compile(r"^\s*\d+(?:\.\d+)?\s*-\s*\d+(?:\.\d+)?\s*$")


class _Column:
    __slots__ = ("numbers", "codes", "lookup", "confidence", "in_range")

    def __init__(self, capacity: int, predicted: bool = False) -> None:
        self.numbers = np.full(capacity, np.nan)
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.lookup: dict[str, int] = {}
        # a predicted column: each value's confidence, and for numbers P(in a range)
        self.confidence = np.full(capacity, np.nan, np.float32) if predicted else None
        self.in_range: InRange | None = None

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.numbers)
        self.numbers = np.concatenate([self.numbers, np.full(extra, np.nan)])
        self.codes = np.concatenate([self.codes, np.full(extra, -1, dtype=np.int32)])
        if self.confidence is not None:
            more = np.full(extra, np.nan, np.float32)
            self.confidence = np.concatenate([self.confidence, more])

    def has_value(self) -> np.ndarray:
        return (self.codes >= 0) | ~np.isnan(self.numbers)

    def equals(self, value: AttrValue) -> np.ndarray:
        if isinstance(value, (bool, int, float)):
            return self.numbers == float(value)
        code = self.lookup.get(category_key(value))
        return self.codes == code if code is not None else np.zeros(len(self.codes), dtype=bool)


InRange = Callable[[np.ndarray, "float | None", "float | None"], np.ndarray]


class AttributeTable:
    def __init__(self) -> None:
        self.alive = np.zeros(1024, dtype=bool)
        self._columns: dict[str, _Column] = {}
        self._predicted: dict[str, _Column] = {}  # stored attribute name -> its predictions

    @property
    def predicted_names(self) -> list[str]:
        return sorted(self._predicted)

    @property
    def names(self) -> list[str]:
        return sorted(self._columns)

    def _ensure(self, iid: int) -> None:
        if iid < len(self.alive):
            return
        capacity = max(iid + 1, 2 * len(self.alive))
        self.alive = np.concatenate([self.alive, np.zeros(capacity - len(self.alive), bool)])
        for col in [*self._columns.values(), *self._predicted.values()]:
            col.grow(capacity)

    def set_many(self, iids: np.ndarray, values: Sequence[tuple[int, str, AttrValue]]) -> None:
        """These users (each once) hold exactly these (iid, name, value)s from now: a column
        at a time, not a user at a time (at start, a million users load in ~1 s, not 4)."""
        if not len(iids):
            return
        self._ensure(int(np.max(iids)))
        self.alive[iids] = True
        for col in self._columns.values():
            col.numbers[iids] = np.nan
            col.codes[iids] = -1
        numbers: dict[str, tuple[list[int], list[float]]] = {}
        texts: dict[str, tuple[list[int], list[str]]] = {}
        for iid, name, value in values:
            if isinstance(value, (bool, int, float)):
                at, got = numbers.setdefault(name, ([], []))
                at.append(iid)
                got.append(float(value))
            else:
                at, keys = texts.setdefault(name, ([], []))
                at.append(iid)
                keys.append(category_key(value))
        for name in numbers.keys() | texts.keys():
            col = self._columns.get(name)
            if col is None:
                col = self._columns[name] = _Column(len(self.alive))
            if name in numbers:
                col.numbers[numbers[name][0]] = numbers[name][1]
            if name in texts:
                at, keys = texts[name]
                lookup = col.lookup
                col.codes[at] = [lookup.setdefault(key, len(lookup)) for key in keys]

    def remove(self, iid: int) -> None:
        if iid < len(self.alive):
            self.alive[iid] = False

    def write_stored(self, f: BinaryIO) -> None:
        """The stored columns (not the predicted ones, not `alive`) as one .npz of plain
        arrays: per column its numbers, its codes and its values in code order."""
        names = self.names
        arrays: dict[str, np.ndarray] = {"names": np.array(names, dtype=str)}
        for i, name in enumerate(names):
            col = self._columns[name]
            arrays[f"numbers{i}"] = col.numbers
            arrays[f"codes{i}"] = col.codes
            arrays[f"values{i}"] = np.array(sorted(col.lookup, key=col.lookup.get), dtype=str)
        np.savez(f, **arrays)

    def read_stored(self, path: Path, alive: np.ndarray) -> None:
        """Stored columns from `write_stored`'s file, replacing the ones held, for the users
        marked in `alive` (a bool mask over iids: those the store has now). ValueError when
        the file is not such a file."""
        columns: dict[str, _Column] = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]]
                capacity = max(len(alive), *(len(z[f"codes{i}"]) for i in range(len(names))), 1)
                for i, name in enumerate(names):
                    col = _Column(capacity)
                    numbers, codes = z[f"numbers{i}"], z[f"codes{i}"]
                    if numbers.dtype != np.float64 or codes.dtype != np.int32:
                        raise ValueError(f"column {name!r}: {numbers.dtype}, {codes.dtype}")
                    col.numbers[: len(numbers)] = numbers
                    col.codes[: len(codes)] = codes
                    col.lookup = {str(v): c for c, v in enumerate(z[f"values{i}"])}
                    columns[name] = col
        except (KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not an attribute file ({exc})") from exc
        self.alive = np.zeros(capacity, bool)
        self.alive[: len(alive)] = alive
        self._columns = columns
        for col in self._predicted.values():
            if len(col.numbers) < capacity:
                col.grow(capacity)

    def stored(self, name: str, iids: np.ndarray) -> list[AttrValue | None]:
        """The stored values of one attribute for these iids (None where missing)."""
        col = self._columns.get(name)
        if col is None:
            return [None] * len(iids)
        key_of = {code: key for key, code in col.lookup.items()}
        out: list[AttrValue | None] = []
        for iid in iids:
            code, number = int(col.codes[iid]), float(col.numbers[iid])
            out.append(key_of[code] if code >= 0 else None if np.isnan(number) else number)
        return out

    def set_predicted(
        self,
        name: str,
        iids: np.ndarray,
        *,
        classes: Sequence[str] = (),
        codes: np.ndarray | None = None,
        numbers: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        in_range: InRange | None = None,
    ) -> None:
        """Predicted values of `name` for these iids: class codes into `classes` with their
        confidence, or numbers with `in_range(values, lo, hi)` giving P(true value in range)."""
        if len(iids):
            self._ensure(int(np.max(iids)))
        col = self._predicted.get(name)
        if col is None or list(col.lookup) != list(classes):
            col = self._predicted[name] = _Column(len(self.alive), predicted=True)
            col.lookup = {c: i for i, c in enumerate(classes)}
        col.in_range = in_range
        assert col.confidence is not None
        if codes is not None:
            col.codes[iids] = codes
        if numbers is not None:
            col.numbers[iids] = numbers
        col.confidence[iids] = confidence if confidence is not None else np.nan

    def predicted_of(self, iids: Sequence[int]) -> dict[int, dict[str, AttrValue]]:
        """{iid: {"predicted.NAME": the model's answer}} for the users among `iids` that have
        no stored NAME: what a segment profile shows beside the stored shares."""
        out: dict[int, dict[str, AttrValue]] = {}
        ids = np.asarray([i for i in iids if 0 <= i < len(self.alive)], np.int64)
        for name, col in self._predicted.items():
            stored = self._columns.get(name)
            lacking = ids if stored is None else ids[~stored.has_value()[ids]]
            classes = list(col.lookup)
            for iid in lacking.tolist():
                code, number = int(col.codes[iid]), float(col.numbers[iid])
                if code >= 0:
                    out.setdefault(iid, {})[PREDICTED + name] = classes[code]
                elif not np.isnan(number):
                    out.setdefault(iid, {})[PREDICTED + name] = number
        return out

    def drop_predicted(self, name: str) -> None:
        self._predicted.pop(name, None)

    def count(self) -> int:
        return int(self.alive.sum())

    def mask(self, filters: Sequence[Filter], warnings: list[str] | None = None) -> np.ndarray:
        """Bool mask over iids of living users that pass every filter. A value that no stored
        user has is said in `warnings` (with the values there are); text compared with an
        attribute that holds only numbers is an InvalidQuery (naming the range syntax)."""
        mask = self.alive.copy()
        for i, f in enumerate(filters):
            name = f.attribute
            only_predicted = name.startswith(PREDICTED) and name not in self._columns
            if only_predicted or f.predicted:
                name = name[len(PREDICTED) :] if only_predicted else name
                guessed = self._predicted_hit(i, f, name)
                if only_predicted:
                    hit = guessed
                else:
                    col = self._columns.get(name)
                    stored = self._hit(i, f, col, warnings) if col is not None else guessed & False
                    known = col.has_value() if col is not None else stored
                    hit = stored | (~known & guessed)
            else:
                col = self._columns.get(name)
                if col is None:
                    raise InvalidQuery(
                        f"filters[{i}].attribute", f"no stored user has attribute {name!r}"
                    )
                hit = self._hit(i, f, col, warnings)
            mask &= ~hit if f.negate else hit
        return mask

    def _hit(self, i: int, f: Filter, col: _Column, warnings: list[str] | None) -> np.ndarray:
        if f.equals is not None or f.any_of is not None:
            field = f"filters[{i}].{'equals' if f.equals is not None else 'any_of'}"
            hit = np.zeros(len(self.alive), dtype=bool)
            for value in [f.equals] if f.equals is not None else list(f.any_of or ()):
                self._check_kind(col, f.attribute, value, field)
                one = col.equals(value)
                if warnings is not None and not one[self.alive].any():
                    warnings.append(self._unknown_value(col, f.attribute, value, field))
                hit |= one
            return hit
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
        return hit

    def _predicted_hit(self, i: int, f: Filter, name: str) -> np.ndarray:
        """Users whose predicted `name` meets the condition with confidence >= the floor."""
        col = self._predicted.get(name)
        if col is None:
            raise InvalidQuery(
                f"filters[{i}].attribute",
                f"no model predicts {name!r}; fit one first (audience predict fit {name})",
            )
        assert col.confidence is not None
        if col.in_range is None:  # a category: its answer, as sure as asked
            if f.is_range:
                raise InvalidQuery(f"filters[{i}]", f"predicted {name} is a category, not a number")
            values = [f.equals] if f.equals is not None else list(f.any_of or ())
            hit = np.zeros(len(self.alive), dtype=bool)
            for value in values:
                code = col.lookup.get(category_key(value))
                if code is not None:
                    hit |= col.codes == code
            with np.errstate(invalid="ignore"):
                return hit & (col.confidence >= f.min_confidence)
        if not f.is_range:
            raise InvalidQuery(
                f"filters[{i}]",
                f"predicted {name} is a number: ask for a range (e.g. {name}=18..30)",
            )
        lo = f.gte if f.gte is not None else f.gt
        hi = f.lte if f.lte is not None else f.lt
        has = ~np.isnan(col.numbers)
        sure = np.zeros(len(self.alive), dtype=bool)
        sure[has] = col.in_range(col.numbers[has], lo, hi) >= max(f.min_confidence, 0.5)
        return sure

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
