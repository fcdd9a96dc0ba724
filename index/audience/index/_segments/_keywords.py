"""Segment keywords: what a marketer reads first, so no word that every segment shares.

    tokens     `tokenize`: markup left out first (URLs, HTML tags and entities such as
               &nbsp;), then lowercased Latin words of 2+ characters (c++, c#, asp.net kept
               whole; pure numbers and scikit-learn's English stop words dropped) and, in
               runs of Chinese characters, jieba words of 2+ characters minus Chinese
               function words (no library here ships a Chinese list), so a Chinese segment
               is described by words, never by single characters.
    counts     each segment's documents (at most `max_docs_per_segment`, sampled with
               `seed`) form one class document, each user's words counted once (a word one
               blogger repeats fifty times is one user's word, not a segment's); a group of
               segments (an inner node of the segment tree) is the sum of its segments' rows
    scores     class-based TF-IDF (c-TF-IDF, as BERTopic defines it): for term t, class c
                   tf(t, c) = count(t, c) / count(., c)     idf(t) = log(1 + A / f(t))
               (A = mean terms per segment, f(t) = count of t in all segments)
    distinct   a keyword must be over-represented in its class: lift = tf(t, c) / tf(t, all)
               at least 1 + (1 - share) / 2 (1.5 for a small segment, 1 for everyone). Terms
               that every segment uses alike ("said", "nbsp", "urllink", "how") never
               qualify: the corpus's own stop terms, found from the data (`stop_terms` lists
               them)
    diverse    from the best 3 x top_n candidates, maximal marginal relevance (MMR): the next
               keyword maximises 0.7 x score - 0.3 x its similarity to those already taken,
               similarity being 1 for a term inside another ("file", "files") and, when an
               `embed` function is given (the product's encoder), the terms' cosine
    names      `segment_name`: the top three keywords, e.g. "bash / script / command"

Everything returned is plain JSON. jieba is imported on the first Chinese text only, so
importing this module and describing English-only segments stays cheap.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["segment_keywords", "segment_name", "stop_terms", "term_gram", "tokenize"]

Embed = Callable[[Sequence[str]], np.ndarray]  # terms -> unit rows, one per term

MMR_LAMBDA = 0.7
CANDIDATES = 3  # x top_n candidates per class go through MMR
NAME_TERMS = 3

# --------------------------------------------------------------------------------------------
# Tokens

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A Han run, or a word: letters/digits (dotted parts like asp.net, node.js allowed) with an
# optional ++ or # suffix (c++, c#; the # only when no letter follows, so "#tag" is "tag").
_TOKEN = re.compile(
    rf"[{_HAN}]+"
    rf"|[^\W_{_HAN}]+(?:\.[^\W_{_HAN}]+)*(?:\+\+|#(?![^\W_]))?"
)

# URLs, HTML tags and character entities (&nbsp; &amp; &#39;) are markup, not words; so are
# their remains once a corpus was stripped of the punctuation ("nbsp", "http") and the
# placeholders corpora put where a link was (the blog authorship corpus writes "urlLink").
_MARKUP = re.compile(r"(?:https?://|www\.)\S+|<[^<>]{1,200}>|&#?[a-z0-9]{2,8};", re.IGNORECASE)
_MARKUP_WORDS = frozenset("nbsp amp quot apos http https www href html urllink".split())

# The fragments scikit-learn's token pattern never meets, added to its English stop words:
# the parts of a contraction split at the apostrophe (don't -> don, t; we'll -> ll).
_CONTRACTION_PARTS = frozenset(
    "don doesn didn isn aren wasn weren hasn haven hadn won wouldn couldn shouldn mustn "
    "shan ll ve re".split()
)


@functools.cache
def _english_stopwords() -> frozenset[str]:
    """Imported on first use: scikit-learn takes a second to import, which a server start
    (that may never describe a segment) should not pay."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS | _CONTRACTION_PARTS


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
    english_stopwords = _english_stopwords()
    for match in _TOKEN.finditer(_MARKUP.sub(" ", text).lower()):
        tok = match.group()
        if _is_han(tok[0]):
            for word in _load_jieba().lcut(tok, HMM=True):
                if len(word) > 1 and word not in _ZH_STOPWORDS:
                    out.append(word)
        elif (
            len(tok) > 1
            and not tok.replace(".", "").isdigit()
            and tok not in english_stopwords
            and tok not in _MARKUP_WORDS
        ):
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
    groups: Mapping[Hashable, Sequence[int]] | None = None,
    embed: Embed | None = None,
) -> dict[Any, list[str]]:
    """Top `top_n` keywords of every segment (label >= 0), best first; and of every group
    in `groups` (key -> the segment labels it holds), under its key.

    docs: one document per user (their texts joined by newlines); None counts as empty.
    max_docs_per_segment: larger segments are described from a sample of this many documents,
    drawn per segment from `seed` and the label (so one segment's sample does not depend on
    the others). A segment without any token gets an empty list.
    """
    labels = check_labels(labels, len(docs), "docs")
    if top_n < 0:
        raise ValueError(f"top_n: must be >= 0, got {top_n}")
    if max_docs_per_segment < 1:
        raise ValueError(f"max_docs_per_segment: must be >= 1, got {max_docs_per_segment}")
    segments, terms, counts = _class_counts(labels, docs, max_docs_per_segment, seed)
    row_of = {seg: i for i, seg in enumerate(segments)}
    rows: dict[Any, list[int]] = {seg: [i] for i, seg in enumerate(segments)}
    for key, members in (groups or {}).items():
        rows[key] = [row_of[m] for m in members if m in row_of]
    picked = {key: _candidates(counts, r, top_n, terms) for key, r in rows.items()}
    similar = _similarity(terms, {t for cand in picked.values() for t, _ in cand}, embed)
    return {key: _mmr(cand, top_n, similar) for key, cand in picked.items()}


def term_gram(
    labels: np.ndarray, docs: Sequence[str], n: int, *, max_docs_per_segment: int = 5000
) -> np.ndarray | None:
    """Dot products (n x n) of the unit c-TF-IDF rows of segments 0..n-1, what the segment
    tree compares them by; None when a segment has no words."""
    labels = check_labels(labels, len(docs), "docs")
    segments, _, counts = _class_counts(labels, docs, max_docs_per_segment, 0)
    if segments != list(range(n)) or counts.shape[1] == 0:
        return None
    counts = sp.csr_matrix(counts, dtype=np.float64)
    rows = counts.sum(axis=1).A1
    if (rows == 0).any():
        return None
    idf = np.log1p((counts.sum() / n) / np.maximum(counts.sum(axis=0).A1, 1e-300))
    scores = sp.csr_matrix(sp.diags(1.0 / rows) @ counts @ sp.diags(idf))
    norms = np.sqrt(scores.multiply(scores).sum(axis=1).A1)
    unit = sp.diags(1.0 / np.maximum(norms, 1e-300)) @ scores
    return np.asarray((unit @ unit.T).todense())


def segment_name(keywords: Sequence[str]) -> str:
    """A short name from the top keywords ("bash / script / command"); "" without any."""
    return " / ".join(keywords[:NAME_TERMS])


def stop_terms(labels: np.ndarray, docs: Sequence[str], *, top: int = 20) -> list[str]:
    """The corpus's own stop terms: the most frequent terms used by more than half of the
    segments and over-represented (lift 1.5) in none, so never a small segment's keyword; for
    looking into a corpus (the build does not need the list: the lift rule is the filter)."""
    labels = check_labels(labels, len(docs), "docs")
    segments, terms, counts = _class_counts(labels, docs, 5000, 0)
    if len(segments) < 2 or not terms:
        return []
    dense = counts.toarray()
    tf = dense / np.maximum(dense.sum(axis=1, keepdims=True), 1)
    overall = dense.sum(axis=0) / dense.sum()
    used = (dense > 0).sum(axis=0) > len(segments) / 2
    flat = (tf / overall).max(axis=0) < 1.5
    found = np.flatnonzero(used & flat)
    return [terms[j] for j in found[np.argsort(-overall[found], kind="stable")][:top]]


def _candidates(
    counts: sp.csr_matrix, rows: list[int], top_n: int, terms: list[str]
) -> list[tuple[str, float]]:
    """(term, score) of the best CANDIDATES x top_n distinct terms of the class `rows` form."""
    if not rows or counts.shape[1] == 0 or top_n == 0:
        return []
    total = counts.sum(axis=0).A1  # f(t)
    n_all = float(total.sum())
    mine = counts[rows].sum(axis=0).A1
    n_mine = float(mine.sum())
    if n_mine == 0:
        return []
    idf = np.log1p((n_all / counts.shape[0]) / np.maximum(total, 1e-300))
    tf = mine / n_mine
    share = n_mine / n_all
    lift = tf / np.maximum(total / n_all, 1e-300)
    ok = np.flatnonzero((mine > 0) & (lift >= 1.0 + (1.0 - share) / 2 - 1e-9))
    score = tf[ok] * idf[ok]
    names = np.array([terms[j] for j in ok], dtype=object)
    order = np.lexsort((names, -score))[: CANDIDATES * top_n]  # ties broken by the term
    return [(terms[ok[j]], float(score[j])) for j in order]


def _similarity(
    terms: list[str], wanted: set[str], embed: Embed | None
) -> Callable[[str, str], float]:
    """Term similarity for MMR: containment, and the encoder's cosine when given."""
    vectors: dict[str, np.ndarray] = {}
    if embed is not None and wanted:
        ordered = sorted(wanted)
        for t, v in zip(ordered, np.asarray(embed(ordered), dtype=np.float32)):
            vectors[t] = v

    def similar(a: str, b: str) -> float:
        if a in b or b in a:
            return 1.0
        va, vb = vectors.get(a), vectors.get(b)
        return float(va @ vb) if va is not None and vb is not None else 0.0

    return similar


def _mmr(
    candidates: list[tuple[str, float]], top_n: int, similar: Callable[[str, str], float]
) -> list[str]:
    """Maximal marginal relevance over candidates best first (scores scaled to [0, 1])."""
    if not candidates:
        return []
    best = candidates[0][1] or 1.0
    left = [(t, s / best) for t, s in candidates]
    chosen: list[str] = []
    while left and len(chosen) < top_n:
        gains = [
            MMR_LAMBDA * s - (1 - MMR_LAMBDA) * max((similar(t, c) for c in chosen), default=0)
            for t, s in left
        ]
        i = int(np.argmax(gains))  # the first of equal gains: the better-ranked term
        chosen.append(left.pop(i)[0])
    return chosen


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
                counter.update(set(tokenize(doc)))  # users, not repetitions
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


def check_labels(labels: np.ndarray, n: int, other: str) -> np.ndarray:
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
