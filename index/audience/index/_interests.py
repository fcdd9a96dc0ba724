"""The interests within a seed list: which seeds belong together, and which fit none.

A seed list is often several audiences at once (last quarter's buyers of shoes and of
tents). `find_interests` groups the seeds:

    smooth     each seed is averaged with its `NEIGHBOURS` nearest background users, and the
               background mean is taken off: a single short text is a noisy point, its
               neighbourhood says which region of the population it stands in
    group      average-linkage (cosine) over the smoothed seeds, cut into 2..MAX_INTERESTS
               groups; groups smaller than MIN_SHARE of the seeds are not interests
    choose     the cut with the best silhouette (a seed in no group counts 0), if above
               SILHOUETTE_FLOOR; else one interest
    outliers   seeds in groups too small, and seeds that score no better than half of the
               background against every interest (leave-one-out): they "fit none"

Deterministic: the same seeds and background give the same interests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from ._background import Background

MAX_INTERESTS = 4
MIN_SHARE = 0.15  # an interest holds at least this share of the seeds (and 2 of them)
SILHOUETTE_FLOOR = 0.15  # a split must be at least this clear to count
NEIGHBOURS = 10  # background users averaged into each seed
OUTLIER_RANK = 0.5  # a seed ranking below this share of the background fits nowhere


@dataclass(frozen=True)
class Interests:
    labels: np.ndarray  # (n,) int: the interest of each seed, -1 = an outlier
    count: int  # interests found (>= 1 when any seed fits)
    silhouette: float  # how clearly the seeds split (0.0 for one interest)

    def members(self, j: int) -> np.ndarray:
        return np.flatnonzero(self.labels == j)


def unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


def smoothed(
    vectors: np.ndarray, background: Background, sims: np.ndarray, neighbours: int = NEIGHBOURS
) -> np.ndarray:
    """Each seed averaged with its nearest background users, the background mean taken off.
    sims: vectors @ background.vectors.T."""
    m = min(neighbours, len(background))
    if m:
        near = np.argpartition(-sims, m - 1, axis=1)[:, :m]
        vectors = (vectors + background.vectors[near].sum(axis=1)) / (m + 1)
    return unit_rows(vectors - background.mean)


def find_interests(
    vectors: np.ndarray,
    background: Background,
    *,
    max_interests: int = MAX_INTERESTS,
    min_share: float = MIN_SHARE,
) -> Interests:
    """Group seed vectors (unit rows, n >= 1) into interests; see the module docstring."""
    vectors = np.asarray(vectors, np.float32)
    sims = vectors @ background.vectors.T
    n = len(vectors)
    labels, score = np.zeros(n, np.int64), 0.0
    min_size = max(2, int(np.ceil(min_share * n)))
    if n >= 2 * min_size and len(background):
        v = smoothed(vectors, background, sims)
        tree = linkage(v.astype(np.float64), "average", metric="cosine")
        best = SILHOUETTE_FLOOR
        for k in range(2, max_interests + 1):
            cut = fcluster(tree, k, "maxclust") - 1
            sizes = np.bincount(cut)
            big = np.flatnonzero(sizes >= min_size)
            if len(big) < 2:
                continue
            inside = np.isin(cut, big)
            # seeds left out of every interest count as 0: leaving them out is no gain
            s = _silhouette(v[inside], cut[inside]) * inside.mean()
            if s > best:
                best, score = s, s
                labels = np.where(inside, np.searchsorted(big, cut), -1)
    labels = _drop_misfits(vectors, sims, labels)
    count = int(labels.max()) + 1 if (labels >= 0).any() else 0
    return Interests(labels, count, score)


def _drop_misfits(vectors: np.ndarray, sims: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Seeds that rank in the lower half of the background against every interest (their
    own without them) become outliers, unless that would leave no seed at all.
    sims: seeds x background similarities."""
    if sims.shape[1] < 20:
        return labels
    gram = vectors @ vectors.T
    best = np.ones(len(vectors))
    for j in range(int(labels.max()) + 1):
        members = labels == j
        bg_total = sims[members].sum(axis=0)  # background . (sum of the interest's seeds)
        seed_total = gram[:, members].sum(axis=1)  # each seed . (the same sum)
        own = members.astype(np.float32)
        # without the seed itself when it is a member (leave-one-out)
        bg_scores = bg_total[None, :] - own[:, None] * sims
        scores = seed_total - own * np.diag(gram)
        if members.sum() == 1:  # a lone seed has nothing to be compared with
            scores = np.where(members, np.inf, scores)
        rank = (bg_scores > scores[:, None]).mean(axis=1)
        best = np.minimum(best, rank)
    out = np.where(best > OUTLIER_RANK, -1, labels)
    if (out < 0).all():
        return labels
    # renumber the interests left, in order
    kept = np.unique(out[out >= 0])
    return np.where(out >= 0, np.searchsorted(kept, out), -1)


def _silhouette(v: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (cosine distance) of unit rows; every label has 2+ members."""
    dist = 1.0 - v @ v.T
    groups = np.unique(labels)
    mean_to = np.stack([dist[:, labels == g].sum(axis=1) for g in groups], axis=1)
    sizes = np.array([(labels == g).sum() for g in groups], float)
    own = np.searchsorted(groups, labels)
    rows = np.arange(len(v))
    a = mean_to[rows, own] / (sizes[own] - 1)
    other = mean_to / sizes
    other[rows, own] = np.inf
    b = other.min(axis=1)
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))
