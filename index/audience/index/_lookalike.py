"""Lookalike scoring: seeds -> query -> eligible users -> search -> re-rank -> audience.

    seeds        `SeedSet`: the seeds' vectors in the order given (stored users' from the
                 index, texts encoded like a one-text user), their weights, the negatives'
    strategy     how seeds become scored candidates (`SeedStrategy`); today `Centroid`:
                 the cosine to the weighted mean of the seeds, less `negative_weight` times
                 the negatives' mean. A strategy searches through a `Search`, so filters,
                 segments, exclusions, `fraction`, streaming and every index kind work
                 with any strategy without it knowing of them
    eligibility  who may be returned (`Eligibility`): a bitmap over iids from filters,
                 segments and exclusions; or, with only a few users excluded and nothing
                 else, a set of iids dropped from a slightly longer result (no bitmap)
    search       the index, at the query's effort (or exact); a lossy index's candidates
                 are re-ranked with the exact stored vectors
    audience     excluded users dropped, `min_score` applied, cut at k

`LookalikeScorer.find` runs these in order. It reads the catalog and the encoder: call it
under the engine's read lock, so a query never mixes vectors from before and after a rebuild.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._catalog import Catalog
from ._encode import ProfileEncoder
from ._errors import InvalidQuery, LimitExceeded
from ._types import LookalikeQuery, LookalikeResult, ScoredUsers

# A query excluding at most this many users (and no filter) drops them from a longer result
# instead of searching with a bitmap of all users.
POST_FILTER_MAX = 1000
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

    def _rerank(self, q: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of a lossy index scored again with their exact stored vectors."""
        iids, vectors = self.catalog.stored_vectors(i for i in candidates if i >= 0)
        if not iids:  # deleted meanwhile: gone
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = vectors @ q
        order = np.argsort(-scores, kind="stable")
        return scores[order], np.array(iids, np.int64)[order]


class SeedStrategy(Protocol):
    """How the seeds of a query become scored candidates, in two steps:

    prepare(seeds)          what the strategy derives from the seeds alone (the centroid:
                            the query vector); raises InvalidQuery for seeds it cannot use.
                            Runs before eligibility, so a bad seed list is reported first.
    rank(prepared, search, k)  (scores, iids), best first, through `search`: at least `k`
                            of them when that many are eligible.
    """

    name: str

    def prepare(self, seeds: SeedSet) -> Any: ...

    def rank(self, prepared: Any, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class Centroid:
    """The cosine to the weighted mean of the seeds, less `negative_weight` x the mean of the
    negative users (then normalised)."""

    name = "centroid"

    def prepare(self, seeds: SeedSet) -> np.ndarray:
        """The query vector."""
        q = (seeds.weights @ seeds.vectors) / seeds.weights.sum()
        if len(seeds.negatives):
            q = q - seeds.negative_weight * seeds.negatives.mean(axis=0)
        norm = float(np.linalg.norm(q))
        if not norm > 1e-6:
            raise InvalidQuery("seeds", "the seeds (less the negative users) have no direction")
        return (q / norm).astype(np.float32)

    def rank(self, prepared: np.ndarray, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search.top(prepared, k)


class LookalikeScorer:
    def __init__(
        self, catalog: Catalog, encoder: ProfileEncoder, strategy: SeedStrategy | None = None
    ) -> None:
        self.catalog = catalog
        self.encoder = encoder
        self.strategy = strategy or Centroid()

    def find(self, query: LookalikeQuery, k_limit: int) -> LookalikeResult:
        """The audience, best first, and how many users were eligible. A `fraction` that asks
        for more than `k_limit` users is RESOURCE_EXHAUSTED."""
        seeds, seed_ids = self.seeds(query)
        prepared = self.strategy.prepare(seeds)
        eligible = self.eligibility(query, seed_ids)
        k = self.audience_size(query, eligible.count, k_limit)
        if k == 0:
            return LookalikeResult(ScoredUsers([], []), eligible.count, eligible.warnings)
        search = Search(self.catalog, eligible, effort=query.search_effort, exact=query.exact)
        scores, ids = self.strategy.rank(prepared, search, k)
        users = self.audience(scores, ids, eligible, query.min_score, k)
        return LookalikeResult(users, eligible.count, eligible.warnings)

    def seeds(self, query: LookalikeQuery) -> tuple[SeedSet, list[str]]:
        """The seed and negative vectors; UnknownUser names ids that are not stored."""
        catalog = self.catalog
        seed_ids = [s.user_id for s in query.seeds if s.user_id is not None]
        seed_iids = catalog.known_iids(seed_ids, "seeds")
        negative_iids = catalog.known_iids(query.negative_user_ids, "negative_user_ids")
        stored = catalog.user_vectors(np.array(seed_iids, np.int64)).astype(np.float64)
        if len(seed_ids) < len(query.seeds):  # text seeds too: in the order given
            rows, n_stored = [], 0
            for seed in query.seeds:
                if seed.user_id is not None:
                    rows.append(stored[n_stored])
                    n_stored += 1
                else:
                    rows.append(self.encoder.query_vector(seed.text or ""))
            stored = np.stack(rows).astype(np.float64)
        negatives = (
            catalog.user_vectors(np.array(negative_iids, np.int64))
            if negative_iids
            else np.zeros((0, stored.shape[1]), np.float32)
        )
        weights = np.array([s.weight for s in query.seeds], dtype=np.float64)
        return SeedSet(stored, weights, negatives, query.negative_weight), seed_ids

    def eligibility(self, query: LookalikeQuery, seed_ids: list[str]) -> Eligibility:
        catalog = self.catalog
        excluded = [*query.exclude_user_ids, *query.negative_user_ids]
        if not query.include_seeds:
            excluded += seed_ids
        # Only a few users excluded (the seeds, say) and no filter: search k + that many and
        # drop them after, rather than filtering a bitmap of every user.
        few = not (query.filters or query.segment_ids or query.exclude_segment_ids) and (
            len(excluded) <= POST_FILTER_MAX
        )
        if few:
            iid_of = catalog.iid_of
            dropped = frozenset(iid_of[u] for u in excluded if u in iid_of)
            return Eligibility(None, dropped, len(iid_of) - len(dropped), len(dropped))
        warnings: list[str] = []
        mask = catalog.attrs.mask(query.filters, warnings)
        catalog.restrict_to_segments(mask, query.segment_ids, query.exclude_segment_ids)
        removed = catalog.clear(mask, excluded)
        return Eligibility(mask, frozenset(), int(mask.sum()), removed, tuple(warnings))

    @staticmethod
    def audience_size(query: LookalikeQuery, eligible: int, k_limit: int) -> int:
        if query.k is not None:
            k = query.k
        else:
            k = math.ceil((query.fraction or 0.0) * eligible)
            if k > k_limit:
                raise LimitExceeded("fraction", k, k_limit)
        return min(k, eligible)

    def audience(
        self,
        scores: np.ndarray,
        ids: np.ndarray,
        eligible: Eligibility,
        min_score: float | None,
        k: int,
    ) -> ScoredUsers:
        keep = ids >= 0
        dropped = eligible.dropped
        if dropped:  # a set lookup each: np.isin costs 6x as much at this size
            keep[[j for j, i in enumerate(ids.tolist()) if i in dropped]] = False
        if min_score is not None:
            keep &= scores >= min_score
        scores, ids = scores[keep][:k], ids[keep][:k]
        return ScoredUsers(self.catalog.uid_of.take(ids), scores.tolist())
