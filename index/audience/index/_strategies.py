"""Seed strategies: how the seeds of a lookalike query become a ranked audience.

    centroid        the cosine to the weighted mean of the seeds, less `negative_weight` x the
                    negatives' mean (the default)
    sum-scores      the sum over seeds of the cosine (weighted), less `negative_weight` x the
                    sum over negatives (Qdrant's sum_scores): ranks as the centroid does when
                    there are no negatives; scores are sums, not cosines
    best-score      the best cosine to any one seed (max-sim); a user nearer to a negative than
                    to every seed is demoted below all others (Qdrant's best_score): reaches a
                    seed's own neighbours, outlier seeds included
    classifier      logistic regression of the seeds against the background sample (negatives
                    weighted more); its linear score is answered by the index (inner-product
                    search on the weight vector, lossy candidates re-ranked exactly); the score
                    is the probability of "like the seeds"
    multi-interest  the interests within the seeds (`_interests`), one query each (its seeds'
                    mean less the background mean, shrunk toward all seeds' mean as far as its
                    own seeds are too few and too spread to say: `shrunk_means`), the audience
                    filled from each in proportion to its seeds, interleaved best first;
                    outlier seeds left out
    auto            multi-interest when the seeds hold several interests (a held-out test in
                    `_interests`: k interests explain seeds they were found without clearly
                    better than one), else the centroid

Each strategy: `prepare(seeds, background)` (what it derives from the seeds alone; raises
InvalidQuery for seeds it cannot use), `rank(prepared, search, k)` ((scores, iids) best first
through `Search`, so filters, segments, exclusions and every index kind work the same) and
`score(prepared, vectors)` (the same score by brute force over given vectors: what the quality
estimate ranks held-out seeds with). `reach` is where each held-out seed would be found.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._background import Background
from ._config import STRATEGY_NAMES
from ._errors import InvalidQuery
from ._interests import Interests, find_interests
from ._search import Search, SeedSet

FOLDS = 5  # of the held-out estimate
CLASSIFIER_BACKGROUND = 1000  # background users the classifier learns against
NEGATIVE_SAMPLE_WEIGHT = 5.0  # an explicit negative counts as this many background users


class SeedStrategy(Protocol):
    name: str

    def prepare(self, seeds: SeedSet, background: Background) -> Any: ...

    def rank(self, prepared: Any, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def score(self, prepared: Any, vectors: np.ndarray) -> np.ndarray: ...

    def reach(self, prepared: Any, background: Background, held: np.ndarray) -> np.ndarray: ...


def reach_by_score(scores_bg: np.ndarray, scores_held: np.ndarray) -> np.ndarray:
    """Share of the background scoring above each held-out score (half a user added, so a
    seed above all of them is found at a reach of 1/(2b), not 0)."""
    ordered = np.sort(scores_bg)
    above = len(ordered) - np.searchsorted(ordered, scores_held, side="right")
    return (above + 0.5) / max(len(ordered), 1)


class _ByScore:
    """`reach` from `score`: the rank of a held-out seed among the background."""

    def score(self, prepared: Any, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reach(self, prepared: Any, background: Background, held: np.ndarray) -> np.ndarray:
        return reach_by_score(self.score(prepared, background.vectors), self.score(prepared, held))


def _direction(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not norm > 1e-6:
        raise InvalidQuery("seeds", f"{what} have no direction")
    return (v / norm).astype(np.float32)


class Centroid(_ByScore):
    name = "centroid"

    def prepare(self, seeds: SeedSet, background: Background | None = None) -> np.ndarray:
        q = (seeds.weights @ seeds.vectors) / seeds.weights.sum()
        if len(seeds.negatives):
            q = q - seeds.negative_weight * seeds.negatives.mean(axis=0)
        return _direction(q, "the seeds (less the negative users)")

    def rank(self, prepared: np.ndarray, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search.top(prepared, k)

    def score(self, prepared: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        return vectors @ prepared


class SumScores(_ByScore):
    name = "sum-scores"

    def prepare(self, seeds: SeedSet, background: Background | None = None) -> np.ndarray:
        q = seeds.weights @ seeds.vectors
        if len(seeds.negatives):
            q = q - seeds.negative_weight * seeds.negatives.sum(axis=0)
        _direction(q, "the seeds (less the negative users)")
        return q.astype(np.float32)

    def rank(self, prepared: np.ndarray, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        norm = float(np.linalg.norm(prepared))
        scores, ids = search.top(prepared / norm, k)
        return scores * norm, ids

    def score(self, prepared: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        return vectors @ prepared


@dataclass(frozen=True)
class _Best:
    seeds: np.ndarray  # (n, dim) float32
    negatives: np.ndarray  # (m, dim) float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class BestScore(_ByScore):
    name = "best-score"

    def prepare(self, seeds: SeedSet, background: Background | None = None) -> _Best:
        return _Best(seeds.vectors.astype(np.float32), seeds.negatives.astype(np.float32))

    def score(self, prepared: _Best, vectors: np.ndarray) -> np.ndarray:
        """sigmoid(best cosine to a seed) where that beats the best cosine to a negative,
        else -sigmoid(best cosine to a negative)."""
        pos = (vectors @ prepared.seeds.T).max(axis=1)
        if not len(prepared.negatives):
            return _sigmoid(pos)
        neg = (vectors @ prepared.negatives.T).max(axis=1)
        return np.where(pos > neg, _sigmoid(pos), -_sigmoid(neg))

    def rank(self, prepared: _Best, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each seed's own top users, rescored with every seed and negative. Exact (threshold
        algorithm): a user outside every seed's top K scores at most the best K-th score, so
        once k rescored users are at least that, no other user can enter; else K doubles."""
        fetch, eligible = k, search.eligible.count + search.eligible.removed
        while True:
            lists = search.top_many(prepared.seeds, fetch)
            ids = np.unique(np.concatenate([i for _, i in lists]))
            ids = ids[search.allowed(ids)]
            scores = self.score(prepared, search.vectors(ids)) if len(ids) else np.zeros(0)
            order = np.argsort(-scores, kind="stable")
            scores, ids = scores[order], ids[order]
            full = [s for s, i in lists if len(i) >= fetch]
            bound = _sigmoid(max((float(s[-1]) for s in full), default=-np.inf))
            if len(full) < len(lists) or fetch >= eligible:
                return scores, ids  # some seed saw every eligible user: nothing is unseen
            if len(scores) >= k and scores[k - 1] >= bound:
                return scores, ids
            fetch *= 2


@dataclass(frozen=True)
class _Linear:
    weights: np.ndarray  # (dim,) float32
    bias: float


class Classifier(_ByScore):
    name = "classifier"

    def prepare(self, seeds: SeedSet, background: Background) -> _Linear:
        from sklearn.linear_model import LogisticRegression

        bg = background.restricted(None, seeds.stored_iids())
        if len(bg) < 10:
            raise InvalidQuery("strategy", "classifier: fewer than 10 other users to learn from")
        rows = bg.vectors[:CLASSIFIER_BACKGROUND]
        x = np.vstack([seeds.vectors, rows, seeds.negatives]).astype(np.float64)
        y = np.r_[np.ones(len(seeds)), np.zeros(len(rows) + len(seeds.negatives))]
        # seeds (by their weights) and the rest weigh the same in all; negatives count more
        w_seed = seeds.weights / seeds.weights.sum() * len(rows)
        w_neg = np.full(len(seeds.negatives), NEGATIVE_SAMPLE_WEIGHT * (1 + seeds.negative_weight))
        weight = np.r_[w_seed, np.ones(len(rows)), w_neg]
        model = LogisticRegression(C=1.0, max_iter=100, tol=1e-3)
        model.fit(x, y, sample_weight=weight)
        return _Linear(model.coef_[0].astype(np.float32), float(model.intercept_[0]))

    def rank(self, prepared: _Linear, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        norm = float(np.linalg.norm(prepared.weights))
        if not norm > 0:
            raise InvalidQuery("seeds", "classifier: the seeds do not differ from other users")
        scores, ids = search.top(prepared.weights / norm, k)
        return _sigmoid(scores * norm + prepared.bias), ids

    def score(self, prepared: _Linear, vectors: np.ndarray) -> np.ndarray:
        return _sigmoid(vectors @ prepared.weights + prepared.bias)


@dataclass(frozen=True)
class _Multi:
    queries: np.ndarray  # (j, dim) float32 unit: one per interest
    shares: np.ndarray  # (j,) share of the audience of each interest


def quotas(shares: np.ndarray, k: int) -> np.ndarray:
    """k split by shares, largest remainders first (ties to the earlier interest)."""
    raw = shares * k
    q = np.floor(raw).astype(np.int64)
    order = np.lexsort((np.arange(len(raw)), -(raw - q)))
    q[order[: k - int(q.sum())]] += 1
    return q


class MultiInterest:
    name = "multi-interest"

    def prepare(
        self, seeds: SeedSet, background: Background, interests: Interests | None = None
    ) -> _Multi:
        if interests is None:
            interests = find_interests(seeds.vectors, background)
        if interests.count == 0:
            interests = Interests(np.zeros(len(seeds), np.int64), 1, 0.0)
        negative = seeds.negative_weight * seeds.negatives.mean(axis=0) if len(
            seeds.negatives
        ) else 0.0  # fmt: skip
        groups = [rows for j in range(interests.count) if len(rows := interests.members(j))]
        # (an interest may have no seeds left: all of them held out in a fold of the estimate)
        centred = seeds.vectors - background.mean.astype(np.float64)
        means = shrunk_means(centred, seeds.weights, groups)
        queries = [_direction(m - negative, "an interest (less the negatives)") for m in means]
        weights = [seeds.weights[rows].sum() for rows in groups]
        shares = np.array(weights) / np.sum(weights)
        return _Multi(np.stack(queries), shares)

    def rank(self, prepared: _Multi, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        lists = search.top_many(prepared.queries, k)
        lists = [(s[keep], i[keep]) for s, i in lists for keep in [search.allowed(i)]]
        return interleave(lists, quotas(prepared.shares, k), k)

    def score(self, prepared: _Multi, vectors: np.ndarray) -> np.ndarray:
        return (vectors @ prepared.queries.T).max(axis=1)

    def reach(self, prepared: _Multi, background: Background, held: np.ndarray) -> np.ndarray:
        """Each interest fills its share of the audience: a seed ranked r-th by an interest
        with share s is reached once the audience is r/s users long."""
        bg = background.vectors @ prepared.queries.T
        scores = held @ prepared.queries.T
        each = [reach_by_score(bg[:, j], scores[:, j]) / s for j, s in enumerate(prepared.shares)]
        return np.minimum(np.min(each, axis=0), 1.0)


def shrunk_means(x: np.ndarray, w: np.ndarray, groups: list[np.ndarray]) -> list[np.ndarray]:
    """Each group's weighted mean of the rows of x, shrunk toward the mean of every grouped
    row by how little its own seeds can say (empirical Bayes, as James-Stein): a group mean
    from n seeds spread sigma^2 around it has noise sigma^2 / n, the groups' true means
    spread tau^2 around the common one, and the estimate keeps tau^2 / (tau^2 + sigma^2 / n)
    of the group's own departure. Short texts, where two seeds of one interest are hardly
    alike (large sigma^2), lean on the common direction; well-separated interests of
    cohesive seeds keep their own. sigma^2 and tau^2 come from the seeds themselves."""
    rows = np.concatenate(groups)
    overall = np.average(x[rows], axis=0, weights=w[rows])
    if len(groups) == 1:
        return [overall]
    means = [np.average(x[g], axis=0, weights=w[g]) for g in groups]
    spread = np.concatenate([((x[g] - m) ** 2).sum(axis=1) for g, m in zip(groups, means)])
    sigma2 = float(np.average(spread, weights=w[rows]))
    n = [float(w[g].sum() ** 2 / (w[g] ** 2).sum()) for g in groups]  # effective seeds
    n_all = float(w[rows].sum() ** 2 / (w[rows] ** 2).sum())
    # E|mean_j - overall|^2 = tau^2 + sigma^2 (1/n_j - 1/n): less the noise, what is left
    tau2 = float(np.mean([
        max(float(((m - overall) ** 2).sum()) - sigma2 * (1 / nj - 1 / n_all), 0.0)
        for m, nj in zip(means, n)
    ]))  # fmt: skip
    keep = [tau2 / (tau2 + sigma2 / nj) if tau2 > 0 else 0.0 for nj in n]
    return [overall + r * (m - overall) for m, r in zip(means, keep)]


def interleave(
    lists: list[tuple[np.ndarray, np.ndarray]], quota: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to k users from ranked lists, list j giving quota[j] of them, interleaved best first
    by (position within its list + 1) / quota (a user already taken is skipped); when a list
    runs out, the others fill the rest in the same order."""
    pos = [0] * len(lists)
    taken = [0] * len(lists)
    seen: set[int] = set()
    out_s: list[float] = []
    out_i: list[int] = []
    for capped in (True, False):
        heap = [(1 / max(q, 1), j) for j, q in enumerate(quota) if q > 0 or not capped]
        heapq.heapify(heap)
        while heap and len(out_i) < k:
            _, j = heapq.heappop(heap)
            scores, ids = lists[j]
            while pos[j] < len(ids) and int(ids[pos[j]]) in seen:
                pos[j] += 1
            if pos[j] >= len(ids) or (capped and taken[j] >= quota[j]):
                continue
            seen.add(int(ids[pos[j]]))
            out_s.append(float(scores[pos[j]]))
            out_i.append(int(ids[pos[j]]))
            pos[j] += 1
            taken[j] += 1
            heapq.heappush(heap, ((taken[j] + 1) / max(int(quota[j]), 1), j))
    return np.array(out_s, np.float32), np.array(out_i, np.int64)


def heldout_reach(strategy: SeedStrategy, seeds: SeedSet, background: Background) -> np.ndarray:
    """(n,) the reach at which each seed is found by the strategy prepared without it."""
    n = len(seeds)
    order = np.random.default_rng(0).permutation(n)
    reach = np.ones(n)
    for fold in np.array_split(order, min(FOLDS, n)):
        train = np.setdiff1d(np.arange(n), fold)
        try:
            prepared = strategy.prepare(seeds.subset(train), background)
        except InvalidQuery:  # these seeds alone have no direction: found nowhere
            continue
        held = seeds.vectors[fold].astype(np.float32)
        reach[fold] = strategy.reach(prepared, background, held)
    return reach


@dataclass(frozen=True)
class _Auto:
    chosen: SeedStrategy
    prepared: Any


class Auto:
    """multi-interest when the seeds hold several interests, else the centroid. "Several" is
    itself a held-out estimate (`_interests`): k interests must explain seeds they were found
    without clearly better than one does."""

    name = "auto"

    @staticmethod
    def choice(interests: Interests) -> str:
        """The strategy auto answers with for seeds holding these interests."""
        return MultiInterest.name if interests.count > 1 else Centroid.name

    def prepare(self, seeds: SeedSet, background: Background) -> _Auto:
        interests = find_interests(seeds.vectors, background)
        if self.choice(interests) == Centroid.name:
            centroid = Centroid()
            return _Auto(centroid, centroid.prepare(seeds))
        multi = MultiInterest()
        return _Auto(multi, multi.prepare(seeds, background, interests))

    def rank(self, prepared: _Auto, search: Search, k: int) -> tuple[np.ndarray, np.ndarray]:
        return prepared.chosen.rank(prepared.prepared, search, k)

    def score(self, prepared: _Auto, vectors: np.ndarray) -> np.ndarray:
        return prepared.chosen.score(prepared.prepared, vectors)

    def reach(self, prepared: _Auto, background: Background, held: np.ndarray) -> np.ndarray:
        return prepared.chosen.reach(prepared.prepared, background, held)


STRATEGIES: dict[str, type] = {
    s.name: s for s in (Centroid, SumScores, BestScore, Classifier, MultiInterest, Auto)
}
assert tuple(STRATEGIES) == STRATEGY_NAMES, "declare a new strategy in _config too"
DEFAULT_STRATEGY = STRATEGY_NAMES[0]


def strategy_named(name: str) -> SeedStrategy:
    """The strategy of this name ("" = the default); InvalidQuery lists the names."""
    cls = STRATEGIES.get(name or DEFAULT_STRATEGY)
    if cls is None:
        raise InvalidQuery(
            "strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        )
    return cls()


def used_name(strategy: SeedStrategy, prepared: Any) -> str:
    """The strategy that answered (auto: the one it chose)."""
    if isinstance(prepared, _Auto):
        return prepared.chosen.name
    return strategy.name
