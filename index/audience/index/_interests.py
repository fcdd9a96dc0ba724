"""The interests within a seed list: which seeds belong together, and which fit none.

A seed list is often several audiences at once (last quarter's buyers of shoes and of
tents). A single short text is a noisy point: two seeds of one interest are often hardly more
alike than two seeds of different interests (headlines: cosine 0.12 against 0.08), so the
seeds are not grouped by their similarity to each other but by the population around them:

    prototype  a group of seeds -> the mean of its query (the group's mean, less the average
               user) -> its PROTOTYPE_USERS best background users -> their mean, less the
               average user: where the population of that interest stands (averaged over many
               users, far less noisy than any seed)
    group      k groups: from a few random starts (seeded: deterministic), seeds are assigned
               to the nearest prototype and prototypes recomputed until nothing moves; of the
               groupings that fit the seeds best, the one kept is the one whose prototypes
               best explain seeds they were made without (leave-one-out: each seed against
               its group's prototype made without it)
    choose     k interests (2..MAX_INTERESTS, each at least MIN_SHARE of the seeds) only when
               they explain the held-out seeds SPLIT_GAIN times better than k - 1 interests;
               else fewer. One interest is the answer for most lists
    outliers   seeds that score no better than half of the background against every interest
               (leave-one-out): they "fit none"

Measured with `bench/run.py lookalike --mixed 1,2,3` (see the README, "Strategies").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._background import Background

MAX_INTERESTS = 3
MIN_SHARE = 0.15  # an interest holds at least this share of the seeds (and 2 of them)
SPLIT_GAIN = (1.5, 1.2)  # k = 2, 3 interests must explain held-out seeds this much better
PROTOTYPE_USERS = 50  # background users whose mean is an interest's prototype (at most 5%)
STARTS = 8  # random starts of the grouping, run side by side
ROUNDS = 8  # assignment rounds at most
FINALISTS = 2  # distinct groupings judged by leave-one-out fit
OUTLIER_RANK = 0.5  # a seed ranking below this share of the background fits nowhere


@dataclass(frozen=True)
class Interests:
    labels: np.ndarray  # (n,) int: the interest of each seed, -1 = an outlier
    count: int  # interests found (>= 1 when any seed fits)
    fit: float  # how well the interests explain held-out seeds (mean cosine, leave-one-out)

    def members(self, j: int) -> np.ndarray:
        return np.flatnonzero(self.labels == j)


class _Grouping:
    """The seeds against one background: prototypes, assignment, leave-one-out fit.

    A prototype is known by its `m` background users (their indices, `top`): the cosine of a
    centred seed with it is computed from the seeds' similarities to the background and the
    background's Gram matrix, never gathering vectors:

        (s - mu) . (mean(top) - mu) = mean(s . b_t) - s . mu - mean(b_t . mu) + mu . mu
        |mean(top) - mu|^2 = mean(b_t . b_u) - 2 mean(b_t . mu) + mu . mu
    """

    def __init__(self, vectors: np.ndarray, background: Background, sims: np.ndarray) -> None:
        self.vectors = vectors
        self.sims = sims  # seeds x background
        self.gram = background.gram_matrix()
        self.bg_mean = background.mean_scores  # background . mu
        mu = background.mean
        self.mu2 = float(mu @ mu)
        self.seed_mu = vectors @ mu - self.mu2  # (n,) s . mu - mu . mu
        self.seed_norm = np.maximum(np.linalg.norm(vectors - mu, axis=1), 1e-9)
        self.m = prototype_users(len(background))

    def _norms(self, top: np.ndarray) -> np.ndarray:
        """|mean(top) - mu| of prototypes given as (..., m) indices."""
        m = top.shape[-1]
        flat = top[..., :, None] * self.gram.shape[1] + top[..., None, :]  # row-major pairs
        pairs = self.gram.take(flat).sum(axis=(-1, -2)) / (m * m)
        sq = pairs - 2 * self.bg_mean.take(top).sum(axis=-1) / m + self.mu2
        return np.sqrt(np.maximum(sq, 1e-12))

    def affinity(self, top: np.ndarray) -> np.ndarray:
        """(n, P): each seed's cosine with each of P prototypes given as (P, m) indices."""
        m = top.shape[-1]
        seed_dot = self.sims[:, top].sum(axis=-1) / m  # (n, P)
        num = seed_dot - self.seed_mu[:, None] - (self.bg_mean.take(top).sum(axis=-1) / m)[None, :]
        return num / (self.seed_norm[:, None] * self._norms(top)[None, :])

    def _top(self, scores: np.ndarray) -> np.ndarray:
        last = scores.shape[-1] - self.m
        return np.argpartition(scores, last, axis=-1)[..., last:]

    def tops(self, labels: np.ndarray, k: int) -> np.ndarray | None:
        """(k, m) the prototypes of k groups; None when a group is empty."""
        member = np.eye(k, dtype=np.float32)[labels].T  # (k, n)
        if not member.sum(axis=1).all():
            return None
        return self._prototypes(member)

    def _prototypes(self, member: np.ndarray) -> np.ndarray:
        """(..., m) the prototypes of groups given as (..., n) 0/1 rows: the background users
        nearest each group's mean."""
        rows = member.reshape(-1, member.shape[-1])  # one product for every group
        norms = np.maximum(np.linalg.norm(rows @ self.vectors, axis=1), 1e-9)
        scores = (rows @ self.sims) / norms[:, None] - self.bg_mean
        return self._top(scores).reshape(*member.shape[:-1], self.m)

    def fit(self, labels: np.ndarray, k: int) -> float:
        """Mean cosine of each seed to its best prototype, its own group's made without it."""
        top = self.tops(labels, k)
        if top is None:
            return -1.0
        others = self.affinity(top).astype(np.float64)  # (n, k)
        # each seed's own group without it, all seeds at once
        own = np.eye(k, dtype=bool)[labels]  # (n, k)
        member = own.T.astype(np.float32)  # (k, n)
        group_sims, group_sums = member @ self.sims, member @ self.vectors
        totals = group_sums[labels] - self.vectors  # (n, d): own group's sum less the seed
        norms = np.linalg.norm(totals, axis=1)
        alone = ~(norms > 1e-9)  # a seed alone in its group: no prototype of its own
        scores = (group_sims[labels] - self.sims) / np.where(alone, 1.0, norms)[:, None]
        loo = self._top(scores - self.bg_mean)  # (n, m): each seed's own prototype
        rows = np.arange(len(labels))
        seed_dot = self.sims[rows[:, None], loo].mean(axis=1)
        num = seed_dot - self.seed_mu - self.bg_mean[loo].mean(axis=1)
        mine = num / (self.seed_norm * self._norms(loo))
        others[own] = np.where(alone, -1.0, mine)
        return float(others.max(axis=1).mean())

    def group(self, k: int, min_size: int, bar: float) -> tuple[float, np.ndarray] | None:
        """The best grouping into k: STARTS random starts run side by side until nothing
        moves; of the distinct groupings, the FINALISTS that fit the seeds best (in-sample)
        are judged by leave-one-out fit, and the best of them returned (None: no grouping
        keeps min_size seeds in every group, or none fits the seeds in-sample as well as
        `bar`: a seed is nearer a prototype made with it than one made without it, so the
        leave-one-out fit would not reach the bar either; measured on 1,495 groupings of
        StackOverflow and THUCNews seed lists, it was below the in-sample fit every time)."""
        n = len(self.vectors)
        labels = np.random.default_rng(k).integers(0, k, (STARTS, n))
        inside = np.zeros(STARTS)  # in-sample fit of each start
        active = np.arange(STARTS)  # the starts still moving
        for _ in range(ROUNDS):
            member = (labels[active, None, :] == np.arange(k)[None, :, None]).astype(np.float32)
            top = self._prototypes(member)  # (starts, k, m)
            # (starts, n, k): each seed's cosine with each start's prototypes
            affinity = self.affinity(top.reshape(-1, self.m)).reshape(n, -1, k)
            affinity = affinity.transpose(1, 0, 2)
            inside[active] = affinity.max(axis=2).mean(axis=1)
            moved = affinity.argmax(axis=2)
            still = (moved != labels[active]).any(axis=1)
            labels[active] = moved
            active = active[still]
            if not len(active):
                break
        candidates, seen = [], set()
        for s in np.argsort(-inside, kind="stable"):
            if np.bincount(labels[s], minlength=k).min() < min_size:
                continue
            if not candidates and inside[s] < bar:
                return None  # the best in-sample fit is below the bar: no need to hold out
            first = np.unique(labels[s], return_index=True)[1]  # numbered by first appearance
            key = np.argsort(np.argsort(first))[labels[s]].astype(np.int8).tobytes()
            if key not in seen:
                seen.add(key)
                candidates.append(labels[s])
        fits = [(self.fit(c, k), c) for c in candidates[:FINALISTS]]
        return max(fits, key=lambda f: f[0]) if fits else None


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
    labels = np.zeros(n, np.int64)
    fit = 0.0
    min_size = max(2, int(np.ceil(min_share * n)))
    if n >= 2 * min_size and len(background) >= 40:
        grouping = _Grouping(vectors, background, sims)
        fit = grouping.fit(labels, 1)
        for k, gain in zip(range(2, max_interests + 1), SPLIT_GAIN):
            bar = fit + (gain - 1.0) * abs(fit)
            found = grouping.group(k, min_size, bar)
            if found is None or found[0] < bar:
                break
            fit, labels = found
    labels = _drop_misfits(vectors, sims, labels)
    count = int(labels.max()) + 1 if (labels >= 0).any() else 0
    return Interests(labels, count, fit)


def prototype_users(population: int) -> int:
    """Background users whose mean is a prototype, for a background of `population` users."""
    return max(2, min(PROTOTYPE_USERS, population // 20))


def population_directions(
    vectors: np.ndarray, background: Background, interests: Interests
) -> np.ndarray:
    """(count, dim) unit rows: where the population of each interest stands, its prototype
    (the mean of the background users nearest its seeds' mean, less the average user). An
    outlier seed belongs to none; with no interest at all, every seed makes one."""
    vectors = np.asarray(vectors, np.float32)
    groups = [g for j in range(interests.count) if len(g := interests.members(j))]
    if not groups:
        groups = [np.arange(len(vectors))]
    member = np.zeros((len(groups), len(vectors)), np.float32)
    for j, g in enumerate(groups):
        member[j, g] = 1.0
    grouping = _Grouping(vectors, background, vectors @ background.vectors.T)
    top = grouping._prototypes(member)  # (count, m) background rows
    directions = background.vectors[top].mean(axis=1) - background.mean
    return directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)


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
