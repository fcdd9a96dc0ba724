"""Segment descriptions for marketers: top keywords and an attribute profile per segment.

A segment is a cluster label >= 0 given to each user; -1 marks an outlier, which gets no
description of its own but still counts in every share and population statistic.

    keywords   class-based TF-IDF (c-TF-IDF, as BERTopic defines it). The documents of each
               segment (at most `max_docs_per_segment` of them, sampled with `seed`) form one
               class document; for term t and class c
                   tf(t, c) = count(t, c) / count(., c)        (L1 per class)
                   idf(t)   = log(1 + A / f(t))                (A = mean terms per class,
                                                                f(t) = count of t in all classes)
               and the `top_n` terms by tf x idf are the keywords (ties broken by the term).
    tokens     `tokenize`: lowercased Latin words of 2+ characters (c++, c#, asp.net kept
               whole, pure numbers and English stopwords dropped) and, in runs of Chinese
               characters, jieba words of 2+ characters minus Chinese stopwords, so that a
               Chinese segment is described by words, never by single characters.
    profile    `attribute_profile`: for each attribute, numbers summarised by quartiles and
               texts/flags by their shares, next to the whole population's (lift = share /
               population share). Segments below `min_group_size` members, and values held
               by fewer members than that, are withheld (k-anonymity).

Everything returned is plain JSON (ints, floats rounded to 4 decimals, strs, bools, None,
lists, dicts). jieba is imported on the first Chinese text only, so importing this module
and describing English-only segments stays cheap.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

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

    label: int
    """The cluster label (>= 0)."""
    size: int
    """Number of users with this label."""
    share: float
    """size / number of users given, outliers included in the denominator (not rounded)."""
    keywords: list[str]
    """Top c-TF-IDF keywords, best first; empty when withheld or the segment has no words."""
    attribute_profile: dict
    """JSON-serialisable profile, as `attribute_profile` returns it for this label."""


# --------------------------------------------------------------------------------------------
# Tokens

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A Han run, or a word: letters/digits (dotted parts like asp.net, node.js allowed) with an
# optional ++ or # suffix (c++, c#; the # only when no letter follows, so "#tag" is "tag").
_TOKEN = re.compile(
    rf"[{_HAN}]+"
    rf"|[^\W_{_HAN}]+(?:\.[^\W_{_HAN}]+)*(?:\+\+|#(?![^\W_]))?"
)

# Common English function words, contraction fragments (don't -> don, t) and the words that
# dominate question titles ("how to use ...") without saying what the question is about.
_EN_STOPWORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and any
    anyone anything are aren around as at be became because become been before being below
    between both but by can cannot could couldn did didn do does doesn doing don done down
    during each either else enough etc even ever every everything few for from further get
    gets getting go goes going gone got had hadn has hasn have haven having he her here hers
    herself him himself his how however i.e e.g if in into is isn it its itself just least
    less let like ll made make makes many may me might more most much must mustn my myself
    need needs neither no nor not now of off often on once one only or other others otherwise
    our ours ourselves out over own per please put quite rather re really same say says
    see seem seems several shall shan she should shouldn since so some someone something
    still such than that the their theirs them themselves then there these they thing things
    this those though through thus to too under until up upon us use used uses using ve very
    via was wasn way ways we well were weren what whatever when where whether which while who
    whom whose why will with within without won would wouldn yet you your yours yourself
    yourselves able anyway want wants trying try know
    """.split()
)

# Common Chinese function words. Single characters are dropped anyway; they are listed so the
# list reads as a whole. The multi-character ones are what matter.
_ZH_STOPWORDS = frozenset(
    """
    的 了 是 在 和 与 及 等 将 对 为 中 上 下 年 月 日 这 那 就 都 也 还 又 而 并 或 被 把 从
    一个 一些 一种 一样 一直 一定 一下 一起 一切 我们 你们 他们 她们 它们 自己 大家 别人
    什么 怎么 怎么样 怎样 为什么 如何 哪里 哪些 哪个 这个 那个 这些 那些 这样 那样 这里
    那里 这么 那么 这种 那种 没有 可以 已经 因为 所以 但是 不过 而且 或者 如果 虽然 然后
    还是 就是 不是 只是 还有 以及 其中 通过 进行 关于 对于 由于 之后 之前 以后 以前 时候
    现在 今天 今年 去年 明年 非常 比较 可能 应该 需要 觉得 知道 不会 不能 能够 一般 其他
    其它 其实 而是 并且 以上 以下 之间 包括 按照 根据 甚至 正在 作为 成为 出来 起来 问题
    请问 有没有 是不是 是否 还要 只要 只有 不要 不用 有些 有点 有人 这是 那是 就要 之一
    一次 一场 一点 每个 每次 一天 很多 许多 所有 任何 各种
    """.split()
)

_jieba: Any = None
_jieba_lock = threading.Lock()


def _load_jieba() -> Any:
    """Import and initialise jieba once (thread-safe), with its start-up chatter silenced."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba = jieba
    return _jieba


def tokenize(text: str) -> list[str]:
    """Keyword candidates of one text, in order: Latin words and Chinese words (see above)."""
    out: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        tok = match.group()
        if _is_han(tok[0]):
            for word in _load_jieba().lcut(tok, HMM=True):
                if len(word) > 1 and word not in _ZH_STOPWORDS:
                    out.append(word)
        elif len(tok) > 1 and not tok.replace(".", "").isdigit() and tok not in _EN_STOPWORDS:
            out.append(tok)
    return out


def _is_han(ch: str) -> bool:
    return "\u3400" <= ch <= "\u4dbf" or "\u4e00" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


# --------------------------------------------------------------------------------------------
# Keywords


def segment_keywords(
    labels: np.ndarray,
    docs: Sequence[str],
    *,
    top_n: int = 10,
    max_docs_per_segment: int = 5000,
    seed: int = 0,
) -> dict[int, list[str]]:
    """Top `top_n` c-TF-IDF keywords of every segment (label >= 0), best first.

    docs: one document per user (their texts joined by newlines); None counts as empty.
    max_docs_per_segment: larger segments are described from a sample of this many documents,
    drawn per segment from `seed` and the label (so one segment's sample does not depend on
    the others). A segment without any token gets an empty list.
    """
    labels = _check_labels(labels, len(docs), "docs")
    if top_n < 0:
        raise ValueError(f"top_n: must be >= 0, got {top_n}")
    if max_docs_per_segment < 1:
        raise ValueError(f"max_docs_per_segment: must be >= 1, got {max_docs_per_segment}")
    segments, terms, counts = _class_counts(labels, docs, max_docs_per_segment, seed)
    scores = _ctfidf(counts)
    # Rank of each term in sorted order, to break score ties the same way every time.
    rank = np.empty(len(terms), dtype=np.int64)
    rank[np.argsort(np.array(terms, dtype=object), kind="stable")] = np.arange(len(terms))
    out: dict[int, list[str]] = {}
    for row, seg in enumerate(segments):
        lo, hi = scores.indptr[row], scores.indptr[row + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        order = np.lexsort((rank[cols], -vals))[:top_n]
        out[seg] = [terms[c] for c in cols[order]]
    return out


def _class_counts(
    labels: np.ndarray, docs: Sequence[str], max_docs: int, seed: int
) -> tuple[list[int], list[str], sp.csr_matrix]:
    """Term counts of each segment's class document: (segment labels, terms, segments x terms)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    segments, starts = np.unique(sorted_labels, return_index=True)
    bounds = list(starts) + [len(order)]
    vocab: dict[str, int] = {}
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    seg_list: list[int] = []
    for i, seg in enumerate(segments):
        if seg < 0:
            continue
        members = order[bounds[i] : bounds[i + 1]]
        if len(members) > max_docs:
            rng = np.random.default_rng([seed % 2**64, int(seg)])
            members = np.sort(rng.choice(members, size=max_docs, replace=False))
        counter: Counter[str] = Counter()
        for m in members:
            doc = docs[m]
            if doc:
                counter.update(tokenize(doc))
        row = len(seg_list)
        seg_list.append(int(seg))
        if counter:
            cols.append(
                np.fromiter(
                    (vocab.setdefault(t, len(vocab)) for t in counter),
                    dtype=np.int64,
                    count=len(counter),
                )
            )
            vals.append(np.fromiter(counter.values(), dtype=np.float64, count=len(counter)))
            rows.append(np.full(len(counter), row, dtype=np.int64))
    terms = [""] * len(vocab)
    for t, j in vocab.items():
        terms[j] = t
    if rows:
        counts = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(seg_list), len(terms)),
        )
    else:
        counts = sp.csr_matrix((len(seg_list), 0), dtype=np.float64)
    return seg_list, terms, counts


def _ctfidf(counts: sp.csr_matrix) -> sp.csr_matrix:
    """c-TF-IDF scores of a classes x terms count matrix (same sparsity pattern)."""
    counts = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    counts.sum_duplicates()
    n_classes = counts.shape[0]
    total = float(counts.data.sum())
    if n_classes == 0 or total == 0.0:
        return counts
    term_freq = np.asarray(counts.sum(axis=0)).ravel()  # f(t) > 0 for every stored term
    avg_terms = total / n_classes  # A
    idf = np.log1p(avg_terms / np.maximum(term_freq, np.finfo(float).tiny))
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    row_of = np.repeat(np.arange(n_classes), np.diff(counts.indptr))
    counts.data *= idf[counts.indices] / row_sums[row_of]
    return counts


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
    labels = _check_labels(labels, len(attributes), "attributes")
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
) -> dict[int, SegmentDescription]:
    """One `SegmentDescription` per segment (label >= 0), in label order.

    A segment smaller than `min_group_size` gets a withheld profile and no keywords: its
    keywords would be words from a handful of people's own texts.
    """
    labels = _check_labels(labels, len(docs), "docs")
    _check_labels(labels, len(attributes), "attributes")
    started = time.perf_counter()
    log.info("Describe - Start (%d users)", len(labels))
    keywords = segment_keywords(labels, docs, top_n=top_n)
    profiles = attribute_profile(labels, attributes, min_group_size=min_group_size)
    n_users = len(labels)
    out: dict[int, SegmentDescription] = {}
    for seg, members in _segment_members(labels).items():
        size = int(len(members))
        out[seg] = SegmentDescription(
            label=seg,
            size=size,
            share=size / n_users,
            keywords=keywords.get(seg, []) if size >= min_group_size else [],
            attribute_profile=profiles[seg],
        )
    log.info("Describe - Completed (%d segments, %.2f s)", len(out), time.perf_counter() - started)
    return out


def _check_labels(labels: np.ndarray, n: int, other: str) -> np.ndarray:
    """Labels as a 1-D int64 array of length n (the length of `other`), or ValueError."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels: must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "fc" or arr.dtype == object:
        try:
            as_int = arr.astype(np.int64)
        except (TypeError, ValueError) as exc:
            raise ValueError("labels: must be integers") from exc
        if arr.size and not np.array_equal(as_int, arr):
            raise ValueError("labels: must be integers")
        arr = as_int
    elif arr.dtype.kind not in "iu":
        if arr.size:
            raise ValueError(f"labels: must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if len(arr) != n:
        raise ValueError(f"labels: {len(arr)} labels for {n} {other}")
    if arr.size and arr.min() < -1:
        raise ValueError("labels: must be >= -1 (-1 marks an outlier)")
    return arr


def _segment_members(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Member indices of each segment (label >= 0), in label order."""
    order = np.argsort(labels, kind="stable")
    segments, starts = np.unique(labels[order], return_index=True)
    bounds = list(starts) + [len(order)]
    return {
        int(seg): order[bounds[i] : bounds[i + 1]] for i, seg in enumerate(segments) if seg >= 0
    }
