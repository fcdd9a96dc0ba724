"""Lookalike scoring: seeds -> query -> eligible users -> search -> re-rank -> audience.

    seeds        `SeedSet`: the seeds' vectors in the order given (stored users' from the
                 index, texts encoded like a one-text user), their weights, the negatives'
    strategy     how seeds become scored candidates (`_strategies`: centroid by default,
                 sum-scores, best-score, classifier, multi-interest, auto), chosen per query.
                 A strategy searches through a `Search`, so filters, segments, exclusions,
                 `fraction`, streaming and every index kind work with any strategy without
                 it knowing of them; some measure the seeds against a background sample
    eligibility  who may be returned (`Eligibility`): a bitmap over iids from filters,
                 segments and exclusions; or, with only a few users excluded and nothing
                 else, a set of iids dropped from a slightly longer result (no bitmap)
    search       the index, at the query's effort (or exact); a lossy index's candidates
                 are re-ranked with the exact stored vectors
    audience     excluded users dropped, `min_score` applied, cut at k
    quality      on request, the held-out estimate (`_seedquality`), and with `explain` the
                 seed diagnostics and each user's closest seed

`LookalikeScorer.find` runs these in order. It reads the catalog and the encoder: call it
under the engine's read lock, so a query never mixes vectors from before and after a rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from . import _seedquality as quality
from ._background import Background, BackgroundCache
from ._catalog import Catalog
from ._encode import ProfileEncoder
from ._errors import LimitExceeded
from ._search import Eligibility, Search, SeedSet
from ._strategies import SeedStrategy, strategy_named, used_name
from ._types import (
    LookalikeQuery,
    LookalikeResult,
    LookalikeStream,
    ScoredUsers,
    SeedDiagnostics,
)

# A query excluding at most this many users (and no filter) drops them from a longer result
# instead of searching with a bitmap of all users.
POST_FILTER_MAX = 1000


class LookalikeScorer:
    """`strategy`: the engine's own default (a strategy plugged in from outside); a query
    naming a strategy gets that one."""

    def __init__(
        self,
        catalog: Catalog,
        encoder: ProfileEncoder,
        strategy: SeedStrategy | None = None,
    ) -> None:
        self.catalog = catalog
        self.encoder = encoder
        self.strategy = strategy
        self.backgrounds = BackgroundCache()  # a new encoder comes with a new index: redrawn

    def find(
        self, query: LookalikeQuery, k_limit: int, *, with_attributes: bool = False
    ) -> LookalikeResult:
        """The audience, best first, and how many users were eligible. A `fraction` that asks
        for more than `k_limit` users is RESOURCE_EXHAUSTED. with_attributes: the users carry
        the stored attributes the query asks for (a stream reads them chunk by chunk)."""
        strategy = self._strategy(query.strategy)
        seeds, seed_ids = self.seeds(query)
        background = self.backgrounds.get(self.catalog)
        prepared = strategy.prepare(seeds, background)
        eligible = self.eligibility(query, seed_ids)
        k = self.audience_size(query, eligible.count, k_limit)
        used = used_name(strategy, prepared)
        if k == 0:
            users = ScoredUsers([], [])
        else:
            search = Search(self.catalog, eligible, effort=query.search_effort, exact=query.exact)
            scores, ids = strategy.rank(prepared, search, k)
            users = self.audience(scores, ids, eligible, query.min_score, k)
        if with_attributes:
            users = self.catalog.with_attributes(users, query.include_attributes)
        if not (query.estimate_quality or query.explain):
            return LookalikeResult(users, eligible.count, eligible.warnings, used)
        bg = background.restricted(eligible.mask, seeds.stored_iids())
        share = len(users) / max(eligible.count, 1)
        estimate = quality.estimate(strategy, seeds, bg, share)
        if estimate is None and not query.explain:
            return LookalikeResult(users, eligible.count, eligible.warnings, used)
        iid_of = self.catalog.iid_of
        vectors = self.catalog.user_vectors(np.array([iid_of[u] for u in users.user_ids], np.int64))
        if estimate is not None:
            estimate = quality.with_audience(estimate, vectors, seeds, bg, background)
        diagnostics = None
        if query.explain:
            diagnostics = self._diagnose(seeds, background, strategy, estimate)
            closest = quality.closest_seeds(seeds, vectors)
            users = ScoredUsers(users.user_ids, users.scores, users.attributes, closest)
        return LookalikeResult(
            users, eligible.count, eligible.warnings, used, estimate, diagnostics
        )

    def chunked(
        self, found: LookalikeResult, attributes: Sequence[str], size: int
    ) -> LookalikeStream:
        """The audience found as chunks of `size`, each read with its stored `attributes` when
        it is asked for (outside the engine's lock)."""
        with_attrs = partial(self.catalog.with_attributes, names=attributes)
        return LookalikeStream.of(found, map(with_attrs, found.users.chunks(size)))

    def diagnose(self, query: LookalikeQuery) -> SeedDiagnostics:
        """What the seeds are, and the held-out estimate of the query's strategy at its size."""
        strategy = self._strategy(query.strategy)
        seeds, seed_ids = self.seeds(query)
        background = self.backgrounds.get(self.catalog)
        eligible = self.eligibility(query, seed_ids)
        k = self.audience_size(query, eligible.count, max(eligible.count, 1))
        bg = background.restricted(eligible.mask, seeds.stored_iids())
        estimate = quality.estimate(strategy, seeds, bg, k / max(eligible.count, 1))
        return self._diagnose(seeds, background, strategy, estimate)

    def _diagnose(
        self, seeds: SeedSet, background: Background, strategy: SeedStrategy, estimate: Any
    ) -> SeedDiagnostics:
        docs = self._seed_docs(seeds)
        return quality.diagnose(seeds, background, self._docs, docs, strategy, estimate)

    def _strategy(self, name: str) -> SeedStrategy:
        if not name and self.strategy is not None:
            return self.strategy
        return strategy_named(name)

    def _docs(self, iids: np.ndarray) -> list[str]:
        """One document per user: their texts joined (for keywords)."""
        stored = self.catalog.store.texts_and_attributes([int(i) for i in iids])
        return ["\n".join(t[0] for t in stored.get(int(i), ([], {}))[0]) for i in iids]

    def _seed_docs(self, seeds: SeedSet) -> list[str]:
        iids = seeds.iids if seeds.iids is not None else np.full(len(seeds), -1)
        stored = iter(self._docs(iids[iids >= 0]))
        texts = seeds.texts or ("",) * len(seeds)
        return [next(stored) if iid >= 0 else text for iid, text in zip(iids, texts)]

    def seeds(self, query: LookalikeQuery) -> tuple[SeedSet, list[str]]:
        """The seed and negative vectors; UnknownUser names ids that are not stored."""
        catalog = self.catalog
        seed_ids = [s.user_id for s in query.seeds if s.user_id is not None]
        seed_iids = catalog.known_iids(seed_ids, "seeds")
        negative_iids = catalog.known_iids(query.negative_user_ids, "negative_user_ids")
        stored = catalog.user_vectors(np.array(seed_iids, np.int64)).astype(np.float64)
        iids = np.array(seed_iids, np.int64)
        names: list[str] = list(seed_ids)
        texts: tuple[str, ...] = ()
        if len(seed_ids) < len(query.seeds):  # text seeds too: in the order given
            rows, n_stored, ids, names, text_of = [], 0, [], [], []
            for number, seed in enumerate(query.seeds, 1):
                if seed.user_id is not None:
                    rows.append(stored[n_stored])
                    ids.append(seed_iids[n_stored])
                    names.append(seed.user_id)
                    text_of.append("")
                    n_stored += 1
                else:
                    rows.append(self.encoder.query_vector(seed.text or ""))
                    ids.append(-1)
                    names.append(f"#{number}")
                    text_of.append(seed.text or "")
            stored = np.stack(rows).astype(np.float64)
            iids, texts = np.array(ids, np.int64), tuple(text_of)
        negatives = (
            catalog.user_vectors(np.array(negative_iids, np.int64))
            if negative_iids
            else np.zeros((0, stored.shape[1]), np.float32)
        )
        weights = np.array([s.weight for s in query.seeds], dtype=np.float64)
        seeds = SeedSet(
            stored, weights, negatives, query.negative_weight, iids, tuple(names), texts
        )
        return seeds, seed_ids

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
