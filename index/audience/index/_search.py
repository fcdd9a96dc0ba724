"""One query's view of the index (`Search`), who may be returned (`Eligibility`) and the
seeds as vectors (`SeedSet`): what every seed strategy works with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._catalog import Catalog

# A lossy index (ivf-pq) returns this many times the candidates asked for; they are re-ranked
# with the exact vectors from the store (up to REFINE_MAX_K results; larger audiences keep
# the index's approximate order and scores).
REFINE_FACTOR = 4
REFINE_MAX_K = 2500


@dataclass(frozen=True)
class SeedSet:
    """The seeds of one query as vectors (unit norm each)."""

    vectors: np.ndarray  # (n, dim) float64, in the order the seeds were given
    weights: np.ndarray  # (n,) float64
    negatives: np.ndarray  # (m, dim) float32 as stored, m may be 0
    negative_weight: float
    iids: np.ndarray | None = None  # (n,) int64: the seed users' iids, -1 for text seeds
    names: tuple[str, ...] = ()  # how each seed is called in answers: its id, or "#N"
    texts: tuple[str, ...] = ()  # per seed: the text of a text seed, "" for a stored user

    def __len__(self) -> int:
        return len(self.vectors)

    def subset(self, rows: np.ndarray) -> SeedSet:
        """These seeds only (a fold of the held-out estimate); the negatives stay."""
        iids = None if self.iids is None else self.iids[rows]
        names = tuple(self.names[i] for i in rows) if self.names else ()
        texts = tuple(self.texts[i] for i in rows) if self.texts else ()
        return SeedSet(
            self.vectors[rows], self.weights[rows], self.negatives, self.negative_weight,
            iids, names, texts,
        )  # fmt: skip

    def stored_iids(self) -> np.ndarray:
        if self.iids is None:
            return np.zeros(0, np.int64)
        return self.iids[self.iids >= 0]


@dataclass(frozen=True)
class Eligibility:
    """Who may be returned: `mask` over iids, or (mask None) everyone but `dropped`."""

    mask: np.ndarray | None
    dropped: frozenset[int]
    count: int  # eligible users
    removed: int  # eligible users excluded (post-filtering fetches this many more)
    warnings: tuple[str, ...] = ()  # filter values no stored user has


class Search:
    """One query's view of the index: eligibility, effort and exactness applied, lossy
    candidates re-ranked. What a strategy calls; it returns (scores, iids), best first."""

    def __init__(
        self, catalog: Catalog, eligible: Eligibility, *, effort: int = 0, exact: bool = False
    ) -> None:
        self.catalog = catalog
        self.eligible = eligible
        self.effort = effort
        self.exact = exact

    def top(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` eligible users for a unit query vector (plus the users that will be
        dropped afterwards, when post-filtering), by inner product."""
        index = self.catalog.index
        fetch = k + self.eligible.removed if self.eligible.mask is None else k
        refine = index.lossy and fetch <= REFINE_MAX_K
        scores, ids = index.search(
            query[None, :],
            fetch * REFINE_FACTOR if refine else fetch,
            self.eligible.mask,
            effort=self.effort,
            exact=self.exact,
        )
        if refine:
            return self._rerank(query, ids[0])
        return scores[0], ids[0]

    def top_many(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """`top` for several query vectors (rows) in one index call."""
        index = self.catalog.index
        fetch = k + self.eligible.removed if self.eligible.mask is None else k
        refine = index.lossy and fetch <= REFINE_MAX_K
        scores, ids = index.search(
            np.ascontiguousarray(queries, np.float32),
            fetch * REFINE_FACTOR if refine else fetch,
            self.eligible.mask,
            effort=self.effort,
            exact=self.exact,
        )
        if refine:
            return [self._rerank(q, row) for q, row in zip(queries, ids)]
        return [(s[i >= 0], i[i >= 0]) for s, i in zip(scores, ids)]

    def vectors(self, iids: np.ndarray) -> np.ndarray:
        """Exact vectors of these users (to score candidates with every seed)."""
        return self.catalog.user_vectors(iids)

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        """A bool mask over `ids`: those that may be returned (not dropped by post-filtering;
        the mask of a filter is applied in the index already)."""
        dropped = self.eligible.dropped
        if not dropped:
            return np.ones(len(ids), bool)
        return np.array([i not in dropped for i in ids.tolist()], bool)

    def _rerank(self, q: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of a lossy index scored again with their exact stored vectors."""
        iids, vectors = self.catalog.stored_vectors(i for i in candidates if i >= 0)
        if not iids:  # deleted meanwhile: gone
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = vectors @ q
        order = np.argsort(-scores, kind="stable")
        return scores[order], np.array(iids, np.int64)[order]
