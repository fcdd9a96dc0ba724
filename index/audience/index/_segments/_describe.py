"""Segment descriptions for marketers: keywords (_keywords.py), a name, and an attribute
profile per segment and per group of segments (an inner node of the segment tree).

A segment is a cluster label >= 0 given to each user; -1 marks an outlier, which gets no
description of its own but still counts in every share and population statistic.

    profile    `attribute_profile`: for each attribute, numbers summarised by quartiles and
               texts/flags by their shares, next to the whole population's (lift = share /
               population share). Segments below `min_group_size` members, and values held
               by fewer members than that, are withheld (k-anonymity).

Everything returned is plain JSON (ints, floats rounded to 4 decimals, strs, bools, None,
lists, dicts).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._keywords import Embed, check_labels, segment_keywords, segment_name, tokenize

log = logging.getLogger("audience.index")

__all__ = [
    "SegmentDescription",
    "attribute_profile",
    "describe_segments",
    "segment_keywords",
    "tokenize",
]


@dataclass(frozen=True)
class SegmentDescription:
    """What a marketer reads about one segment."""

    label: Any
    """The cluster label (>= 0), or a group's key."""
    size: int
    """Number of users with this label."""
    share: float
    """size / number of users given, outliers included in the denominator (not rounded)."""
    keywords: list[str]
    """Top c-TF-IDF keywords, best first; empty when withheld or the segment has no words."""
    attribute_profile: dict
    """JSON-serialisable profile, as `attribute_profile` returns it for this label."""
    name: str = ""
    """A short name from the top keywords ("bash / script / command")."""


# --------------------------------------------------------------------------------------------
# Attribute profile

_NUMERIC_MIN_SHARE = 0.9  # an attribute is numeric when >= 90% of its present values are numbers
_OTHER = "(other)"
_WITHHELD_SEGMENT = {"withheld": True, "reason": "segment smaller than min_group_size"}


def attribute_profile(
    labels: np.ndarray,
    attributes: Sequence[Mapping[str, float | str | bool]],
    *,
    min_group_size: int = 0,
    max_values: int = 10,
) -> dict[int, dict]:
    """Per segment (label >= 0), a profile of every attribute any user has.

    numeric      {"type": "numeric", "count", "mean", "median", "q1", "q3", "min", "max",
                  "population_mean", "population_median"}; quartiles interpolate linearly
                  (numpy's default). Stats are None when no member has the attribute, or
                  withheld (None, plus "withheld": True) when fewer than `min_group_size` do.
    categorical  {"type": "categorical", "count", "values": [{"value", "share",
                  "population_share", "lift"}, ...]} by share, at most `max_values` entries.
                  Flags read "true"/"false". Values held by fewer than `min_group_size`
                  members are pooled into one "(other)" entry (last, inside the limit) when the
                  pool reaches `min_group_size`, and left out otherwise.

    count is the number of members that have the attribute; shares are among those. The
    population is every user given, outliers included. A segment smaller than
    `min_group_size` gets only {"withheld": True, "reason": ...}. None and NaN/inf values
    count as missing. An attribute is numeric when at least 90% of its present values are
    numbers (the other values are then ignored), else every value is read as text.
    """
    labels = check_labels(labels, len(attributes), "attributes")
    if max_values < 1:
        raise ValueError(f"max_values: must be >= 1, got {max_values}")
    if min_group_size < 0:
        raise ValueError(f"min_group_size: must be >= 0, got {min_group_size}")
    groups = _segment_members(labels)
    profiles: dict[int, dict] = {
        seg: ({} if len(m) >= min_group_size else dict(_WITHHELD_SEGMENT))
        for seg, m in groups.items()
    }
    open_groups = {seg: m for seg, m in groups.items() if len(m) >= min_group_size}
    if not open_groups:
        return profiles
    names = sorted({k for a in attributes if a for k in a}, key=str)
    for name in names:
        column = [_present(a.get(name)) if a else None for a in attributes]
        n_present = sum(v is not None for v in column)
        if n_present == 0:
            continue
        n_numeric = sum(_is_number(v) for v in column)
        if n_numeric >= _NUMERIC_MIN_SHARE * n_present:
            entries = _numeric_profiles(column, open_groups, min_group_size)
        else:
            entries = _categorical_profiles(column, open_groups, min_group_size, max_values)
        for seg, entry in entries.items():
            profiles[seg][str(name)] = entry
    return profiles


def _numeric_profiles(
    column: list[Any], groups: dict[int, np.ndarray], min_group_size: int
) -> dict[int, dict]:
    values = np.array([float(v) if _is_number(v) else np.nan for v in column], dtype=np.float64)
    population = values[~np.isnan(values)]
    pop = {
        "population_mean": _r(population.mean()),
        "population_median": _r(np.median(population)),
    }
    out: dict[int, dict] = {}
    for seg, members in groups.items():
        vals = values[members]
        vals = vals[~np.isnan(vals)]
        entry: dict[str, Any] = {"type": "numeric", "count": int(len(vals))}
        withheld = 0 < len(vals) < min_group_size
        if len(vals) == 0 or withheld:
            entry.update(dict.fromkeys(("mean", "median", "q1", "q3", "min", "max")))
        else:
            q1, median, q3 = np.percentile(vals, [25.0, 50.0, 75.0])
            entry.update(
                mean=_r(vals.mean()),
                median=_r(median),
                q1=_r(q1),
                q3=_r(q3),
                min=_r(vals.min()),
                max=_r(vals.max()),
            )
        entry.update(pop)
        if withheld:
            entry["withheld"] = True
        out[seg] = entry
    return out


def _categorical_profiles(
    column: list[Any], groups: dict[int, np.ndarray], min_group_size: int, max_values: int
) -> dict[int, dict]:
    lookup: dict[str, int] = {}
    codes = np.array(
        [-1 if v is None else lookup.setdefault(_as_text(v), len(lookup)) for v in column],
        dtype=np.int64,
    )
    texts = [""] * len(lookup)
    for t, j in lookup.items():
        texts[j] = t
    pop_counts = np.bincount(codes[codes >= 0], minlength=len(texts))
    pop_share = pop_counts / pop_counts.sum()
    out: dict[int, dict] = {}
    for seg, members in groups.items():
        seg_codes = codes[members]
        seg_codes = seg_codes[seg_codes >= 0]
        n = int(len(seg_codes))
        entry: dict[str, Any] = {"type": "categorical", "count": n, "values": []}
        out[seg] = entry
        if n == 0:
            continue
        counts = np.bincount(seg_codes, minlength=len(texts))
        held = np.flatnonzero(counts)
        kept = [int(j) for j in held if counts[j] >= min_group_size]
        pooled = [int(j) for j in held if counts[j] < min_group_size]
        kept.sort(key=lambda j: (-counts[j], texts[j]))
        other_count = int(counts[pooled].sum()) if pooled else 0
        show_other = other_count > 0 and other_count >= min_group_size
        kept = kept[: max_values - 1] if show_other else kept[:max_values]
        values = [_value_entry(texts[j], counts[j] / n, float(pop_share[j])) for j in kept]
        if show_other:
            values.append(_value_entry(_OTHER, other_count / n, float(pop_share[pooled].sum())))
        entry["values"] = values
    return out


def _value_entry(value: str, share: float, population_share: float) -> dict[str, Any]:
    return {
        "value": value,
        "share": _r(share),
        "population_share": _r(population_share),
        "lift": _r(share / population_share),  # > 0: every member is in the population
    }


def _present(value: Any) -> Any:
    """The value as a plain Python scalar, or None when it is missing (None, NaN, inf)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 3.0 and 3 are one category
    return str(value)


def _r(x: float) -> float:
    return round(float(x), 4)


# --------------------------------------------------------------------------------------------
# Both


def describe_segments(
    labels: np.ndarray,
    docs: Sequence[str],
    attributes: Sequence[Mapping[str, float | str | bool]],
    *,
    top_n: int = 10,
    min_group_size: int = 0,
    groups: Mapping[Hashable, Sequence[int]] | None = None,
    embed: Embed | None = None,
) -> dict[Any, SegmentDescription]:
    """One `SegmentDescription` per segment (label >= 0), in label order, then one per group
    in `groups` (key -> the segment labels it holds), under its key.

    A segment smaller than `min_group_size` gets a withheld profile and no keywords: its
    keywords would be words from a handful of people's own texts. `embed` (terms -> unit
    vectors) lets the keywords be diversified by meaning (see _keywords.py).
    """
    labels = check_labels(labels, len(docs), "docs")
    check_labels(labels, len(attributes), "attributes")
    started = time.perf_counter()
    log.info("Describe - Start (%d users)", len(labels))
    groups = dict(groups or {})
    keywords = segment_keywords(labels, docs, top_n=top_n, groups=groups, embed=embed)
    profiles: dict[Any, dict] = dict(
        attribute_profile(labels, attributes, min_group_size=min_group_size)
    )
    members_of: dict[Any, np.ndarray] = dict(_segment_members(labels))
    for key, held in groups.items():
        inside = np.isin(labels, np.asarray(list(held), np.int64))
        members_of[key] = np.flatnonzero(inside)
        one = np.where(inside, 0, -1)
        profiles[key] = attribute_profile(one, attributes, min_group_size=min_group_size).get(
            0, dict(_WITHHELD_SEGMENT)
        )
    n_users = len(labels)
    out: dict[Any, SegmentDescription] = {}
    for key, members in members_of.items():
        size = int(len(members))
        words = keywords.get(key, []) if size >= min_group_size else []
        out[key] = SegmentDescription(
            label=key,
            size=size,
            share=size / n_users if n_users else 0.0,
            keywords=words,
            attribute_profile=profiles[key],
            name=segment_name(words),
        )
    log.info("Describe - Completed (%d segments, %.2f s)", len(out), time.perf_counter() - started)
    return out


def _segment_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Member indices of each segment (label >= 0), in label order."""
    order = np.argsort(labels, kind="stable")
    segments, starts = np.unique(labels[order], return_index=True)
    bounds = list(starts) + [len(order)]
    return {
        int(seg): order[bounds[i] : bounds[i + 1]] for i, seg in enumerate(segments) if seg >= 0
    }
