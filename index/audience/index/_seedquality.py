"""How good an audience will be, told from the seeds alone; and what the seeds are.

Held-out estimate: the seeds are split into FOLDS folds; for each, the strategy is prepared
on the other seeds and the held-out seeds are ranked among the background sample (restricted
to the eligible users). A held-out seed ranked above all but 2% of the background would be
found in an audience of 2% of the eligible users. From those reaches (a normal fitted to
their logarithms: 20 seeds make a coarse count at a reach of 0.5%, the fit uses all of them):

    heldout_recall   share of held-out seeds expected within the requested audience size
    lift_at_1/5/10   share expected within 1%, 5%, 10% of the eligible users, over that share
                     (what a random audience would find): 1.0 is no better than random

With the audience itself, each beside the same for the background (random eligible users):
its interest fit, the mean over its users of the best (centred) cosine to where the population
of one of the seeds' interests stands (`_interests.population_directions`), and its cohesion
(mean cosine between two of its users). Across seed lists and strategies, interest fit
follows the audience's precision best (`bench/run.py lookalike --mixed 1,2,3`; see the README,
"Strategies"): an audience drawn from the seeds' interests sits where their populations do,
whatever the strategy, and a mixture of several interests is not penalised as cohesion
penalises it.

`diagnose` describes the seeds: cohesion beside random users', the interests with their
keywords, outliers, warnings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ._background import Background, centred_unit
from ._interests import Interests, find_interests, population_directions, prototype_users
from ._search import SeedSet
from ._segments import segment_keywords
from ._strategies import Auto, MultiInterest, SeedStrategy, heldout_reach
from ._types import AudienceQuality, SeedDiagnostics, SeedInterest

MIN_SEEDS = 4  # fewer seeds: no held-out estimate
MIN_BACKGROUND = 50  # eligible background users needed for an estimate
REACHES = (0.01, 0.05, 0.10)
MIN_LOG_SPREAD = 0.1
FEW_SEEDS = 10  # below this, a warning that the audience follows single seeds
KEYWORD_DOCS = 300  # background users whose texts the interests' keywords are set against


def estimate(
    strategy: SeedStrategy, seeds: SeedSet, background: Background, size_share: float
) -> AudienceQuality | None:
    """The held-out estimate for an audience of `size_share` of the eligible users; None
    with too few seeds or eligible background users, or for a strategy without `reach`."""
    if len(seeds) < MIN_SEEDS or len(background) < MIN_BACKGROUND:
        return None
    if not hasattr(strategy, "reach"):  # a strategy plugged in from outside may not say
        return None
    log_reach = np.log(heldout_reach(strategy, seeds, background))
    lifts = [recall_at(log_reach, r) / r for r in REACHES]
    return AudienceQuality(
        heldout_seeds=len(seeds),
        reach=float(size_share),
        heldout_recall=recall_at(log_reach, size_share),
        lift_at_1=lifts[0],
        lift_at_5=lifts[1],
        lift_at_10=lifts[2],
    )


def with_audience(
    estimate: AudienceQuality,
    audience: np.ndarray,
    seeds: SeedSet,
    background: Background,
    sample: Background,
) -> AudienceQuality:
    """The estimate with what the audience's own vectors say, each beside the same for the
    background (random eligible users): interest share, interest fit and cohesion. `sample`:
    the whole background sample (`background` is its eligible part), whose regions the
    interest share is read against."""
    interests = find_interests(seeds.vectors, background)
    directions = population_directions(seeds.vectors, background, interests)
    regions = sample.regions(max(2, round(len(sample) / prototype_users(len(sample)))))
    mean = background.mean
    return replace(
        estimate,
        interest_share=interest_share(audience, directions, mean, regions),
        background_interest_share=interest_share(background.vectors, directions, mean, regions),
        cohesion=cohesion(audience),
        background_cohesion=cohesion(background.vectors),
        interest_fit=interest_fit(audience, directions, mean),
        background_interest_fit=interest_fit(background.vectors, directions, mean),
    )


def interest_share(
    vectors: np.ndarray, directions: np.ndarray, mean: np.ndarray, partitions: Sequence[np.ndarray]
) -> float:
    """Share of the rows that stand in one of the seeds' interests: nearer (by cosine, less
    the average user `mean`) an interest's population direction than every region of the
    population that is not the interests' own. `partitions`: the population cut into regions
    of about an interest's population's size ((k, dim) unit rows each). A region is the
    interests' own when its nearest (an interest or another region) is an interest or a
    region already their own: an interest wider than one region keeps all of its regions.
    The share is the mean over the partitions."""
    if not len(vectors) or not len(directions):
        return 0.0
    centred = centred_unit(vectors, mean)
    best = (centred @ directions.T).max(axis=1)
    shares = []
    for regions in partitions:
        own = _interests_own(regions, directions)
        rivals = regions[~own]
        rival = (centred @ rivals.T).max(axis=1) if len(rivals) else np.full(len(best), -np.inf)
        shares.append(float(np.mean(best >= rival)))
    return float(np.mean(shares)) if shares else 0.0


def _interests_own(regions: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Bool per region: linked to an interest through nearest neighbours (see above)."""
    between = regions @ regions.T
    np.fill_diagonal(between, -np.inf)
    to_interest = (regions @ directions.T).max(axis=1)
    own = np.zeros(len(regions), bool)
    while True:
        to_own = np.maximum(to_interest, np.where(own[None, :], between, -np.inf).max(axis=1))
        to_rest = np.where(own[None, :], -np.inf, between).max(axis=1)
        grown = own | (to_own > to_rest)
        if (grown == own).all():
            return own
        own = grown


def interest_fit(vectors: np.ndarray, directions: np.ndarray, mean: np.ndarray) -> float:
    """Mean over the rows of the best cosine, less the average user `mean`, to any of the
    interests' population `directions` (unit rows)."""
    if not len(vectors) or not len(directions):
        return 0.0
    return float((centred_unit(vectors, mean) @ directions.T).max(axis=1).mean())


def cohesion(vectors: np.ndarray) -> float:
    """Mean cosine between two different rows, from their sum (O(n d), any n)."""
    n = len(vectors)
    if n < 2:
        return 0.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.asarray(vectors, np.float64) / np.maximum(norms, 1e-12)
    total = unit.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", unit, unit)) / (n * (n - 1)))


def recall_at(log_reach: np.ndarray, reach: float) -> float:
    """Share of held-out seeds expected within `reach`, from a normal fitted to the log of
    the reaches at which they were found (spread at least MIN_LOG_SPREAD)."""
    if not reach > 0:
        return 0.0
    spread = max(float(np.std(log_reach, ddof=1)), MIN_LOG_SPREAD)
    z = (math.log(min(reach, 1.0)) - float(np.mean(log_reach))) / spread
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def diagnose(
    seeds: SeedSet,
    background: Background,
    docs_of: Callable[[np.ndarray], list[str]],
    seed_docs: list[str],
    strategy: SeedStrategy,
    quality: AudienceQuality | None,
) -> SeedDiagnostics:
    """What the seeds are. docs_of(iids): one document per background user; seed_docs: one
    per seed (its texts joined, or the seed text)."""
    vectors = seeds.vectors.astype(np.float32)
    interests = find_interests(vectors, background)
    names = list(seeds.names) or [f"#{i + 1}" for i in range(len(seeds))]
    keywords = _keywords(interests, background, docs_of, seed_docs)
    found = []
    for j in range(interests.count):
        rows = interests.members(j)
        found.append(
            SeedInterest(
                seeds=tuple(names[i] for i in rows),
                share=float(seeds.weights[rows].sum() / seeds.weights.sum()),
                keywords=tuple(keywords.get(j, ())),
                cohesion=_cohesion(vectors[rows]),
            )
        )
    cohesion = _cohesion(vectors)
    bg_cohesion = _cohesion(background.vectors[:1000])
    outliers = tuple(names[i] for i in np.flatnonzero(interests.labels < 0))
    warnings = _warnings(len(seeds), cohesion, bg_cohesion, interests, outliers, strategy, quality)
    return SeedDiagnostics(
        seeds=len(seeds),
        cohesion=cohesion,
        background_cohesion=bg_cohesion,
        interests=tuple(found),
        outliers=outliers,
        warnings=warnings,
        quality=quality,
        strategy=strategy.name,
        suggested_strategy=Auto.choice(interests),
    )


def closest_seeds(seeds: SeedSet, vectors: np.ndarray) -> list[str]:
    """The seed each user (a row of vectors) is most similar to."""
    if not len(vectors):
        return []
    names = list(seeds.names) or [f"#{i + 1}" for i in range(len(seeds))]
    best = (vectors @ seeds.vectors.astype(np.float32).T).argmax(axis=1)
    return [names[i] for i in best]


def _cohesion(vectors: np.ndarray) -> float:
    """Mean cosine between two different rows (unit rows)."""
    n = len(vectors)
    if n < 2:
        return 1.0
    total = vectors.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", vectors, vectors)) / (n * (n - 1)))


def _keywords(
    interests: Interests,
    background: Background,
    docs_of: Callable[[np.ndarray], list[str]],
    seed_docs: list[str],
) -> dict[int, list[str]]:
    """c-TF-IDF keywords of each interest's seeds, set against a sample of the background (a
    class of its own, so words every user writes do not lead)."""
    if interests.count == 0:
        return {}
    bg_iids = background.iids[:KEYWORD_DOCS]
    docs = list(seed_docs) + docs_of(bg_iids)
    labels = np.r_[interests.labels, np.full(len(bg_iids), interests.count)]
    found = segment_keywords(labels, docs, top_n=8)
    return {j: words for j, words in found.items() if j < interests.count}


def _warnings(
    n: int,
    cohesion: float,
    bg_cohesion: float,
    interests: Interests,
    outliers: tuple[str, ...],
    strategy: SeedStrategy,
    quality: AudienceQuality | None,
) -> tuple[str, ...]:
    out = []
    if n < FEW_SEEDS:
        out.append(
            f"only {n} seeds: the audience follows single seeds' quirks; 20 or more give a "
            f"steadier audience" + ("" if n >= MIN_SEEDS else " (and a quality estimate)")
        )
    if cohesion <= bg_cohesion + 0.02 or (quality is not None and quality.lift_at_10 < 1.5):
        out.append(
            f"the seeds are hardly more alike than random users (cohesion {cohesion:.2f}, "
            f"random users {bg_cohesion:.2f}): the audience will be close to random"
        )
    if interests.count > 1 and not isinstance(strategy, (MultiInterest, Auto)):
        out.append(
            f"the seeds hold {interests.count} interests; strategy {strategy.name!r} may fill "
            f"the audience mostly from one: try 'multi-interest' (or 'auto')"
        )
    if outliers:
        out.append(f"{len(outliers)} seed(s) fit no interest: {', '.join(outliers[:10])}")
    return tuple(out)
