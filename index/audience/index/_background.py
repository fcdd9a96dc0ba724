"""A uniform sample of the indexed users, kept in memory: what a seed list is measured against.

The seed strategies that need to know "what an ordinary user looks like" use it: the
classifier learns seeds against it, multi-interest centres its queries on its mean and finds
interests with it, and the quality estimate ranks held-out seeds among it (the share of
background users scoring above a held-out seed estimates the reach at which that seed would
be found). A sample of `SIZE` users answers all of that in a few matrix products, never a
search of the whole index.

`BackgroundCache.get(catalog)` draws the sample once per index (a rebuild makes a new index)
and again when the index has grown or shrunk by a quarter since.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ._catalog import Catalog

SIZE = 2000  # users in the sample (all of them below that)
REDRAW_CHANGE = 0.25  # redraw when the index size moved this much since the last draw
PARTITIONS = 3  # partitions of the sample into regions
KMEANS_STARTS = 3  # each partition: the best of this many k-means runs
KMEANS_ROUNDS = 30


@dataclass(frozen=True)
class Background:
    iids: np.ndarray  # (b,) int64, sorted
    vectors: np.ndarray  # (b, dim) float32, unit norm as stored
    mean: np.ndarray  # (dim,) float32: the mean user vector of the sample
    mean_scores: np.ndarray | None = None  # (b,) vectors @ mean, computed once
    gram: np.ndarray | None = None  # (b, b) vectors @ vectors.T, made on first use
    _regions: dict | None = None  # k -> partitions (see `regions`), made on first use

    def __post_init__(self) -> None:
        if self.mean_scores is None:
            object.__setattr__(self, "mean_scores", self.vectors @ self.mean)

    def gram_matrix(self) -> np.ndarray:
        """Every pair's inner product (16 MB for 2,000 users), made once: the mean of any
        set of background users is then known by its norm without gathering vectors."""
        if self.gram is None:
            object.__setattr__(self, "gram", self.vectors @ self.vectors.T)
        assert self.gram is not None
        return self.gram

    def regions(self, k: int) -> tuple[np.ndarray, ...]:
        """PARTITIONS partitions of the sample into `k` regions, each as (k, dim) unit rows:
        the centres of spherical k-means on the users less the average user (each the best of
        KMEANS_STARTS k-means++ starts). Made once per k for this sample; several partitions,
        so that a figure read against them does not hang on one draw of k-means."""
        if self._regions is None:
            object.__setattr__(self, "_regions", {})
        assert self._regions is not None
        k = max(1, min(k, len(self.vectors)))
        if not len(self.vectors):
            return ()
        if k not in self._regions:
            centred = centred_unit(self.vectors, self.mean, np.float32)
            self._regions[k] = tuple(
                max(
                    (
                        _spherical_kmeans(centred, k, p * KMEANS_STARTS + s)
                        for s in range(KMEANS_STARTS)
                    ),
                    key=lambda centres: float((centred @ centres.T).max(axis=1).sum()),
                )
                for p in range(PARTITIONS)
            )
        return self._regions[k]

    def __len__(self) -> int:
        return len(self.iids)

    def restricted(self, mask: np.ndarray | None, drop: np.ndarray | None = None) -> Background:
        """The users of the sample that `mask` allows (None: all), less the iids in `drop`
        (the seeds themselves). The mean stays that of the whole sample."""
        keep = np.ones(len(self.iids), bool)
        if mask is not None:
            inside = self.iids < len(mask)
            keep &= inside
            keep[inside] &= mask[self.iids[inside]]
        if drop is not None and len(drop):
            keep &= ~np.isin(self.iids, drop)
        if keep.all():
            return self
        scores = self.mean_scores[keep] if self.mean_scores is not None else None
        gram = self.gram[np.ix_(keep, keep)] if self.gram is not None else None
        return Background(self.iids[keep], self.vectors[keep], self.mean, scores, gram)


def centred_unit(vectors: np.ndarray, mean: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The rows less the average user `mean`, each scaled to unit norm."""
    centred = np.asarray(vectors, dtype) - mean
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def _spherical_kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, dim) unit centres of k-means by cosine over the unit rows `x` (k-means++ start;
    an emptied region restarts at the row farthest from its centre)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    gap = 1.0 - (x @ centres[0]).astype(np.float64)  # to the nearest centre so far
    for j in range(1, k):
        weights = np.maximum(gap, 0.0)
        total = float(weights.sum())
        pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centres[j] = x[pick]
        gap = np.minimum(gap, 1.0 - x @ centres[j])
    labels = np.full(n, -1)
    for _ in range(KMEANS_ROUNDS):
        sims = x @ centres.T
        new = sims.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        member = np.zeros((k, n), np.float32)
        member[labels, np.arange(n)] = 1.0
        sums = member @ x
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        if len(empty):
            far = np.argsort(sims[np.arange(n), labels])[: len(empty)]
            for j, i in zip(empty, far):
                sums[labels[i]] -= x[i]
                sums[j], labels[i] = x[i], j
        centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centres


class BackgroundCache:
    def __init__(self, size: int = SIZE, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self._lock = threading.Lock()
        self._index: object = None
        self._drawn_at = 0
        self._background: Background | None = None

    def get(self, catalog: Catalog) -> Background:
        """(under the engine's read lock) The sample for the catalog's current index."""
        index = catalog.index
        n = len(index)
        with self._lock:
            bg = self._background
            stale = bg is None or self._index is not index
            stale = stale or abs(n - self._drawn_at) > REDRAW_CHANGE * max(self._drawn_at, 1)
            if stale:
                bg = self._draw(catalog)
                self._background, self._index, self._drawn_at = bg, index, n
            assert bg is not None
            return bg

    def _draw(self, catalog: Catalog) -> Background:
        ids = np.sort(catalog.index.ids().astype(np.int64))
        if len(ids) > self.size:
            rng = np.random.default_rng(self.seed)
            ids = np.sort(rng.choice(ids, self.size, replace=False))
        vectors = np.ascontiguousarray(catalog.user_vectors(ids), dtype=np.float32)
        mean = vectors.mean(axis=0) if len(ids) else np.zeros(catalog.dim, np.float32)
        return Background(ids, vectors, mean.astype(np.float32))
