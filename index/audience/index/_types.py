"""Plain value objects the engine takes and returns: requests in, typed results out (no gRPC,
no dicts or bare tuples across the boundary, no numpy in what callers see)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, overload

AttrValue = float | str | bool


def category_key(value: AttrValue) -> str:
    """The vocabulary key of a categorical value (1.0 and "1" share a slot)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


Progress = Callable[[str, int, int], None]
"""A long job's progress callback: (stage, done, total)."""


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class TextItem:
    text: str
    weight: float = 1.0
    timestamp: int = 0  # Unix seconds; 0 = unknown


@dataclass(frozen=True)
class Profile:
    user_id: str
    texts: tuple[TextItem, ...] = ()
    # None as a value: a value of no kind (a malformed message); the engine rejects it.
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    vector: bytes = b""  # optional precomputed user vector, little-endian float32
    # optional pooled text vector from a batch worker (little-endian float32; _encode/_batch)
    text_vector: bytes = b""


@dataclass(frozen=True)
class Filter:
    """A condition on one attribute: exactly one of equals / range / any_of."""

    attribute: str
    equals: AttrValue | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    any_of: tuple[AttrValue, ...] | None = None
    negate: bool = False
    # stored-or-predicted: users without a stored value are matched by their predicted value
    # (attribute "predicted.NAME": by the predicted value only), if its confidence is at least
    predicted: bool = False
    min_confidence: float = 0.0

    @property
    def is_range(self) -> bool:
        return any(v is not None for v in (self.gte, self.gt, self.lte, self.lt))


@dataclass(frozen=True)
class Seed:
    user_id: str | None = None
    text: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class LookalikeQuery:
    seeds: tuple[Seed, ...]
    k: int | None = None
    fraction: float | None = None
    negative_user_ids: tuple[str, ...] = ()
    negative_weight: float = 0.5
    exclude_user_ids: tuple[str, ...] = ()
    include_seeds: bool = False
    filters: tuple[Filter, ...] = ()
    min_score: float | None = None
    segment_ids: tuple[str, ...] = ()
    exclude_segment_ids: tuple[str, ...] = ()
    search_effort: int = 0  # efSearch / nprobe of an ANN index; 0 = its default
    exact: bool = False  # exhaustive even on an ANN index
    include_attributes: tuple[str, ...] = ()  # stored attributes returned with each user
    strategy: str = ""  # how seeds become an audience ("" = centroid; see _strategies)
    estimate_quality: bool = False  # return the held-out quality estimate with the audience
    explain: bool = False  # return seed diagnostics and each user's closest seed


# ---------------------------------------------------------------- results


class ScoredUser(NamedTuple):
    """A user and its score."""

    user_id: str
    score: float


@dataclass(frozen=True, slots=True)
class ScoredUsers(Sequence[ScoredUser]):
    """Users and their scores, best first, kept as two columns: the server copies them into
    a message without making an object per user (this is the FindLookalikes hot path).
    Indexing and iterating give `ScoredUser`s."""

    user_ids: list[str]
    scores: list[float]
    attributes: list[dict[str, AttrValue]] | None = None  # per user, when asked for
    closest_seeds: list[str] | None = None  # per user, with explain

    def __len__(self) -> int:
        return len(self.user_ids)

    @overload
    def __getitem__(self, i: int) -> ScoredUser: ...
    @overload
    def __getitem__(self, i: slice) -> ScoredUsers: ...
    def __getitem__(self, i: int | slice) -> ScoredUser | ScoredUsers:
        if isinstance(i, slice):
            attrs = self.attributes[i] if self.attributes is not None else None
            seeds = self.closest_seeds[i] if self.closest_seeds is not None else None
            return ScoredUsers(self.user_ids[i], self.scores[i], attrs, seeds)
        return ScoredUser(self.user_ids[i], self.scores[i])

    def __iter__(self) -> Iterator[ScoredUser]:
        return map(ScoredUser, self.user_ids, self.scores)

    def chunks(self, size: int) -> Iterator[ScoredUsers]:
        """Consecutive pieces of at most `size` users (one empty piece when there are none)."""
        for start in range(0, max(len(self), 1), size):
            yield self[start : start + size]


@dataclass(frozen=True)
class LookalikeResult:
    users: ScoredUsers
    eligible: int  # users that passed filters, segments and exclusions
    warnings: tuple[str, ...] = ()  # e.g. a filter value no stored user has
    strategy: str = "centroid"  # the strategy that answered (auto: the one it chose)
    quality: AudienceQuality | None = None  # when asked for (estimate_quality or explain)
    diagnostics: SeedDiagnostics | None = None  # when asked for (explain)


@dataclass(frozen=True)
class LookalikeStream:
    eligible: int
    chunks: Iterator[ScoredUsers]  # best first
    warnings: tuple[str, ...] = ()
    strategy: str = "centroid"
    quality: AudienceQuality | None = None
    diagnostics: SeedDiagnostics | None = None

    @classmethod
    def of(cls, found: LookalikeResult, chunks: Iterator[ScoredUsers]) -> LookalikeStream:
        """The audience found, as chunks."""
        f = found
        return cls(f.eligible, chunks, f.warnings, f.strategy, f.quality, f.diagnostics)


@dataclass(frozen=True)
class AudienceQuality:
    """The held-out estimate of an audience (see _seedquality)."""

    heldout_seeds: int  # seeds held out in turn
    reach: float  # the audience size as a share of the eligible users
    heldout_recall: float  # share of held-out seeds found within that size
    lift_at_1: float  # share found within 1% of the eligible users / 0.01
    lift_at_5: float
    lift_at_10: float
    cohesion: float = 0.0  # mean cosine between two users of the audience
    background_cohesion: float = 0.0  # between two random eligible users
    # mean best cosine (centred) of its users to a seed interest's population (_seedquality)
    interest_fit: float = 0.0
    background_interest_fit: float = 0.0  # the same for random eligible users
    # share of its users nearer a seed interest's population than any other region of the
    # population (_seedquality.interest_share): an estimate of its precision
    interest_share: float = 0.0
    background_interest_share: float = 0.0  # the same for random eligible users


@dataclass(frozen=True)
class SeedInterest:
    seeds: tuple[str, ...]  # the seeds of this interest (ids, or "#N" for the Nth seed text)
    share: float  # of the seeds' weight
    keywords: tuple[str, ...]
    cohesion: float  # mean cosine between two of its seeds


@dataclass(frozen=True)
class SeedDiagnostics:
    seeds: int
    cohesion: float  # mean cosine between two seeds
    background_cohesion: float  # the same between two random users
    interests: tuple[SeedInterest, ...]
    outliers: tuple[str, ...]  # seeds that fit no interest
    warnings: tuple[str, ...]
    quality: AudienceQuality | None  # of the strategy asked for
    strategy: str  # the strategy asked for
    suggested_strategy: str  # what auto picks for these seeds


@dataclass(frozen=True)
class UpsertResult:
    upserted: int  # distinct users written (a repeated id counts once: the last one wins)
    sequence: int  # the store's sequence number after the write


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    not_found: list[str]  # ids given that no stored user had


@dataclass(frozen=True)
class ReachEstimate:
    reach: int  # users that pass the filters, less exclusions
    total: int  # users stored
    warnings: tuple[str, ...] = ()  # e.g. a filter value no stored user has


@dataclass(frozen=True)
class StoredUser:
    profile: Profile
    vector: bytes  # little-endian float32; empty unless asked for
    dimension: int


@dataclass(frozen=True)
class RebuildResult:
    users: int
    generation: int
    seconds: float


@dataclass(frozen=True)
class SnapshotResult:
    generation: int
    path: Path


@dataclass(frozen=True)
class Membership:
    """Where a user falls: a segment (with strength in [0, 1]) or an outlier."""

    user_id: str
    segment_id: str  # "" for an outlier
    strength: float
    outlier: bool
    part_id: str = ""  # the finest part of the segment it is in ("" when none)


@dataclass(frozen=True)
class Stats:
    users: int
    indexed: int
    dimension: int
    model: str
    index_type: str
    generation: int
    sequence: int
    data_dir: str
    attributes: tuple[str, ...]
    lexical_model: str
    lexical_documents: int
    lexical_weight: float
    warnings: tuple[str, ...] = ()
    text_dimension: int = 0  # the leading dimensions that come from texts; the rest, attributes


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PredictQuery:
    """Stored users by id and profiles not stored; the attributes to predict (none: every
    fitted one); with `tags` (a list, empty for the served segments' keywords) zero-shot tags."""

    user_ids: tuple[str, ...] = ()
    profiles: tuple[Profile, ...] = ()
    attributes: tuple[str, ...] = ()
    tags: tuple[str, ...] | None = None
    max_tags: int = 5
    min_tag_score: float = 1.0  # standard deviations above an ordinary user


@dataclass(frozen=True)
class PredictedValue:
    """A model's answer for one attribute of one user, never the stored value itself."""

    attribute: str
    value: AttrValue  # a category's value, or a number
    confidence: float  # calibrated probability of `value` (categories; 0 for numbers)
    stored: AttrValue | None = None  # the user's stored value, when there is one
    alternatives: tuple[tuple[str, float], ...] = ()  # the likeliest values, with probabilities
    error: float = 0.0  # numbers: the model's held-out mean absolute error


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float  # how far above an ordinary user this user is, in standard deviations
    similarity: float  # cosine of the user's text vector and the tag's


@dataclass(frozen=True)
class UserPrediction:
    user_id: str
    values: tuple[PredictedValue, ...]
    tags: tuple[TagScore, ...] = ()


@dataclass(frozen=True)
class PredictorInfo:
    """A fitted model of one attribute and its quality on users it was not fitted on."""

    attribute: str
    kind: str  # "categorical" | "numeric"
    method: str  # "linear", "linear+terms" (reads the texts' TF-IDF rows too) or "knn"
    classes: tuple[str, ...]
    users: int  # labelled users it was fitted on
    accuracy: float
    macro_f1: float
    majority_accuracy: float
    majority_macro_f1: float
    calibration_error: float  # held-out |confidence - accuracy| (ECE, 10 bins)
    mae: float
    baseline_mae: float
    version: int
    fitted_at: float
    candidates: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    predictors: tuple[PredictorInfo, ...]
    skipped: tuple[str, ...]  # "attribute: why"
    seconds: float
