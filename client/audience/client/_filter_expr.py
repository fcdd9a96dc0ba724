"""The small filter language behind ``Filter.parse``.

::

    region=EU            equality            region!=EU        negated equality
    age>=30  age>30      lower bounds        age<=65  age<65   upper bounds
    age=18..65           inclusive range     age=18..  age=..65  open-ended ranges
    region in EU,US      set membership      region not in EU,US
    gender=female@0.8    stored, or predicted with confidence >= 0.8 for users without one
    predicted.gender=female@0.8              predicted only (any confidence without @)

Values that look like decimal numbers (``31``, ``-2.5``, ``1e3``) become floats; everything
else stays text. Quote a value (``"31"`` or ``'a, b'``) to keep it text and to use commas or
spaces inside it. ``nan`` and ``inf`` stay text.
"""

from __future__ import annotations

import re
from typing import Any

from ._errors import InvalidArgument

_NAME = r"[^\s=!<>]+"
_IN = re.compile(
    rf"^\s*(?P<name>{_NAME})\s+(?P<neg>not\s+)?in(?:\s+(?P<values>.*?))?\s*$", re.I | re.S
)
_CMP = re.compile(rf"^\s*(?P<name>{_NAME})\s*(?P<op>==|!=|>=|<=|=|>|<)\s*(?P<value>.*?)\s*$", re.S)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_RANGE_OPS = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
_CONFIDENCE = re.compile(r"@\s*(?P<floor>(?:0|1)(?:\.\d*)?|\.\d+)\s*$")
PREDICTED = "predicted."


def parse_filter(expr: str) -> dict[str, Any]:
    """Parse one expression into ``Filter`` keyword arguments; raise InvalidArgument."""
    if not isinstance(expr, str):
        raise InvalidArgument(f"filter expression must be a str, not {type(expr).__name__}")
    floor = _CONFIDENCE.search(expr)
    if floor is None:
        return _parse(expr)
    confidence = float(floor["floor"])
    if confidence > 1:
        raise InvalidArgument(f"filter {expr!r}: a confidence is in 0..1")
    parsed = _parse(expr[: floor.start()])
    predicted_only = parsed["attribute"].startswith(PREDICTED)
    return {**parsed, "predicted": not predicted_only, "min_confidence": confidence}


def _parse(expr: str) -> dict[str, Any]:
    match = _IN.match(expr)
    if match:
        values = _split_list(expr, match["values"] or "")
        return {"attribute": match["name"], "any_of": values, "negate": bool(match["neg"])}
    match = _CMP.match(expr)
    if not match:
        raise InvalidArgument(
            f"cannot parse filter {expr!r}: expected NAME=VALUE, NAME!=VALUE, NAME>=X, NAME>X, "
            "NAME<=X, NAME<X, NAME=LO..HI, NAME in A,B or NAME not in A,B"
        )
    name, op, raw = match["name"], match["op"], match["value"]
    if op in _RANGE_OPS:
        return {"attribute": name, _RANGE_OPS[op]: _bound(expr, raw)}
    if not _is_quoted(raw) and ".." in raw:
        return {"attribute": name, **_range(expr, raw)}
    return {"attribute": name, "equals": _value(expr, raw), "negate": op == "!="}


def _range(expr: str, raw: str) -> dict[str, float]:
    lo, sep, hi = raw.partition("..")
    lo, hi = lo.strip(), hi.strip()
    if not lo and not hi:
        raise InvalidArgument(f"filter {expr!r}: a range needs at least one bound (LO..HI)")
    bounds = {}
    if lo:
        bounds["gte"] = _bound(expr, lo)
    if hi:
        bounds["lte"] = _bound(expr, hi)
    return bounds


def _bound(expr: str, raw: str) -> float:
    if not _NUMBER.match(raw):
        raise InvalidArgument(f"filter {expr!r}: range bound {raw!r} is not a number")
    return float(raw)


def _value(expr: str, raw: str) -> float | str:
    if _is_quoted(raw):
        return raw[1:-1]
    if not raw:
        raise InvalidArgument(f"filter {expr!r}: missing value (quote it for empty text: '')")
    return float(raw) if _NUMBER.match(raw) else raw


def _is_quoted(raw: str) -> bool:
    return len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"


def _split_list(expr: str, raw: str) -> tuple[float | str, ...]:
    """Split ``a, "b,c", 3`` on commas outside quotes."""
    items: list[str] = []
    current: list[str] = []
    quote = ""
    for char in raw:
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current.append(char)
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if quote:
        raise InvalidArgument(f"filter {expr!r}: unterminated quote")
    items.append("".join(current).strip())
    if items == [""]:
        raise InvalidArgument(f"filter {expr!r}: empty value list")
    if "" in items:
        raise InvalidArgument(f"filter {expr!r}: empty item in value list")
    return tuple(_value(expr, item) for item in items)
