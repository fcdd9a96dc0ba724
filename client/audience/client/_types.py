"""Typed values the client takes and returns: small frozen dataclasses, no protobuf in sight."""

from __future__ import annotations

import dataclasses
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidArgument
from ._filter_expr import parse_filter

AttributeScalar = float | int | str | bool

__all__ = [
    "AttributeScalar",
    "DeleteResult",
    "Filter",
    "LookalikeQuery",
    "LookalikeResult",
    "Profile",
    "ReachEstimate",
    "RebuildResult",
    "ScoredUser",
    "Seed",
    "SnapshotResult",
    "Stats",
    "Text",
    "UpsertResult",
    "UserRecord",
]


def as_tuple(name: str, values: Any) -> tuple:
    """A sequence argument as a tuple; a bare str is refused (it would iterate characters)."""
    if isinstance(values, (str, bytes)):
        raise InvalidArgument(f"{name} must be a sequence, not a single {type(values).__name__}")
    try:
        return tuple(values)
    except TypeError:
        raise InvalidArgument(f"{name} must be a sequence, not {type(values).__name__}") from None


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass


# ---------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Text:
    """One piece of text a user wrote or read.

    weight: relative weight in the user's pooled vector; None means 1.0.
    timestamp: when it was written, Unix seconds; 0 means unknown (used for recency decay).
    """

    text: str
    weight: float | None = None
    timestamp: int = 0


@dataclass(frozen=True)
class Profile:
    """A user: id, texts (plain str become :class:`Text`), attributes, optional vector.

    Attribute values are numbers, text or flags; numbers come back from the server as float.
    vector: optional precomputed vector, little-endian float32 bytes.
    text_vector: optional pooled text vector made with the server's own encoder
    (:meth:`AudienceClient.get_encoder`; ``audience ingest --engine ray`` does this).
    """

    user_id: str
    texts: Sequence[str | Text] = ()
    attributes: Mapping[str, AttributeScalar] = field(default_factory=dict)
    vector: bytes = b""
    text_vector: bytes = b""

    def __post_init__(self) -> None:
        _set(self, "texts", tuple(_text(t) for t in as_tuple("texts", self.texts)))
        if not isinstance(self.attributes, Mapping):
            raise InvalidArgument(
                f"attributes must be a mapping, not {type(self.attributes).__name__}"
            )
        _set(self, "attributes", dict(self.attributes))


def _text(value: Any) -> Text:
    if isinstance(value, Text):
        return value
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, Mapping):
        try:
            return Text(**value)
        except TypeError as exc:
            raise InvalidArgument(f"bad text fields {sorted(value)}: {exc}") from None
    raise InvalidArgument(f"a text must be a str, Text or dict, not {type(value).__name__}")


# ---------------------------------------------------------------- lookalike queries


@dataclass(frozen=True)
class Seed:
    """One seed of a lookalike query: a stored user or free text, optionally weighted.

    weight: relative weight; None means 1.0.
    """

    user_id: str | None = None
    text: str | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        if self.user_id is not None and self.text is not None:
            raise InvalidArgument("a Seed is a user_id or a text, not both")


@dataclass(frozen=True)
class Filter:
    """A condition on one stored attribute; filters in a list are ANDed.

    Exactly one kind of condition: ``equals``, ``any_of``, or range bounds
    (``gte``/``gt``/``lte``/``lt``, numbers). ``negate`` keeps the users that do NOT match,
    users lacking the attribute included. ``predicted``: a user without a stored value
    matches by the value a fitted model predicts, if its confidence is at least
    ``min_confidence`` (an attribute named ``predicted.NAME`` reads only predictions).
    Build with :meth:`eq`, :meth:`one_of`, :meth:`range` or :meth:`parse`.
    """

    attribute: str
    equals: AttributeScalar | None = None
    any_of: tuple[AttributeScalar, ...] | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    negate: bool = False
    predicted: bool = False
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str):
            raise InvalidArgument(
                f"filter attribute must be a str, not {type(self.attribute).__name__}"
            )
        if self.any_of is not None:
            _set(self, "any_of", as_tuple(f"filter {self.attribute!r} any_of", self.any_of))
        kinds = [self.equals is not None, self.any_of is not None, self.has_range]
        if sum(kinds) > 1:
            raise InvalidArgument(
                f"filter {self.attribute!r}: give one of equals, any_of or range bounds"
            )

    @property
    def has_range(self) -> bool:
        return any(b is not None for b in (self.gte, self.gt, self.lte, self.lt))

    @classmethod
    def eq(cls, attribute: str, value: AttributeScalar) -> Filter:
        """Users whose ``attribute`` equals ``value``."""
        return cls(attribute, equals=value)

    @classmethod
    def one_of(cls, attribute: str, values: Sequence[AttributeScalar]) -> Filter:
        """Users whose ``attribute`` is one of ``values``."""
        return cls(attribute, any_of=as_tuple("values", values))

    @classmethod
    def range(
        cls,
        attribute: str,
        *,
        gte: float | None = None,
        gt: float | None = None,
        lte: float | None = None,
        lt: float | None = None,
    ) -> Filter:
        """Users whose numeric ``attribute`` lies within the given bounds."""
        return cls(attribute, gte=gte, gt=gt, lte=lte, lt=lt)

    @classmethod
    def parse(cls, expr: str) -> Filter:
        """Parse ``age>=30``, ``region in EU,US``, ``age=18..65``, ``region!=EU`` and friends;
        a trailing ``@0.8`` (``gender=female@0.8``) also takes predicted values of at least that
        confidence for users without a stored one.

        Numeric-looking values become floats, others stay text; raises InvalidArgument.
        """
        return cls(**parse_filter(expr))

    def negated(self) -> Filter:
        """The same condition, inverted."""
        return dataclasses.replace(self, negate=not self.negate)


# How the seeds of a query become an audience (LookalikeQuery.strategy); the README's
# "Strategies" says when to use which.
STRATEGIES = ("centroid", "sum-scores", "best-score", "classifier", "multi-interest", "auto")


@dataclass(frozen=True)
class LookalikeQuery:
    """One lookalike question: "who else is like these seeds?".

    Seeds are ``seed_ids`` (stored users), then ``seed_texts`` (free text), then ``seeds``.
    k / fraction: audience size as a count or a share of the eligible users; give at most
    one; neither means the server default (k = 100).
    filters: :class:`Filter` objects or expressions for :meth:`Filter.parse`.
    negative_ids / negative_weight: users to steer away from, and how strongly (None: 0.5).
    exclude_ids: users never returned. include_seeds: return seed users too.
    min_score: drop users below this cosine similarity.
    segment_ids / exclude_segment_ids: only members of these segments / never members of these.
    search_effort: search depth of an approximate index (efSearch for hnsw, nprobe for
    ivf-pq; None = the server's default). exact: exhaustive search even on an ANN index.
    include_attributes: stored attributes returned with each user (ScoredUser.attributes).
    strategy: how the seeds become an audience: "centroid" (None: the default), "sum-scores",
    "best-score", "classifier", "multi-interest" or "auto" (see STRATEGIES).
    estimate_quality: return the held-out quality estimate (LookalikeResult.quality).
    explain: also the seed diagnostics and each user's closest seed.
    """

    seed_ids: Sequence[str] = ()
    seed_texts: Sequence[str] = ()
    seeds: Sequence[Seed] = ()
    k: int | None = None
    fraction: float | None = None
    filters: Sequence[Filter | str] = ()
    negative_ids: Sequence[str] = ()
    negative_weight: float | None = None
    exclude_ids: Sequence[str] = ()
    include_seeds: bool = False
    min_score: float | None = None
    segment_ids: Sequence[str] = ()
    exclude_segment_ids: Sequence[str] = ()
    search_effort: int | None = None
    exact: bool = False
    include_attributes: Sequence[str] = ()
    strategy: str | None = None
    estimate_quality: bool = False
    explain: bool = False

    def __post_init__(self) -> None:
        for name in (
            "seed_ids",
            "seed_texts",
            "seeds",
            "negative_ids",
            "exclude_ids",
            "segment_ids",
            "exclude_segment_ids",
        ):
            _set(self, name, as_tuple(name, getattr(self, name)))
        filters = as_tuple("filters", self.filters)
        _set(self, "filters", tuple(Filter.parse(f) if isinstance(f, str) else f for f in filters))
        if self.k is not None and self.fraction is not None:
            raise InvalidArgument("give k or fraction, not both")

    def all_seeds(self) -> tuple[Seed, ...]:
        """seed_ids, seed_texts and seeds as one tuple of :class:`Seed`."""
        return (
            tuple(Seed(user_id=u) for u in self.seed_ids)
            + tuple(Seed(text=t) for t in self.seed_texts)
            + tuple(self.seeds)
        )


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ScoredUser:
    """A user and its cosine similarity to the query (a segment member: its strength);
    attributes: the stored attributes asked for with ``include_attributes`` (None when none
    were asked for)."""

    user_id: str
    score: float
    attributes: Mapping[str, AttributeScalar] | None = None
    closest_seed: str | None = None  # with explain: the seed it is most like ("#N": a text)


@dataclass(frozen=True)
class AudienceQuality:
    """How good an audience is likely to be, from the seeds alone (each held out in turn and
    ranked among a sample of the eligible users).

    reach: the audience size as a share of the eligible users; heldout_recall: share of
    held-out seeds found within it; lift_at_1/5/10: share found within 1%/5%/10% of the
    eligible users, over that share (1.0 = no better than random). interest_share: share of
    the audience's users nearer (less the average user) the population of one of the seeds'
    interests than any other region of the population, beside background_interest_share for
    random eligible users: an estimate of the audience's precision (of the figures here, the
    one that follows it best). interest_fit: mean over the audience's users of the best
    cosine (less the average user) to where the population of one of the seeds' interests
    stands, beside background_interest_fit for random eligible users. cohesion:
    mean cosine between two users of the audience itself, beside background_cohesion between
    two random eligible users: an audience much tighter than random pairs is usually pure.
    The audience's own figures are 0.0 in an estimate made without its audience.
    """

    heldout_seeds: int
    reach: float
    heldout_recall: float
    lift_at_1: float
    lift_at_5: float
    lift_at_10: float
    cohesion: float = 0.0
    background_cohesion: float = 0.0
    interest_fit: float = 0.0
    background_interest_fit: float = 0.0
    interest_share: float = 0.0
    background_interest_share: float = 0.0


@dataclass(frozen=True)
class SeedInterest:
    """An interest found among the seeds: its seeds, share of their weight, keywords and
    cohesion (mean cosine between two of its seeds)."""

    seeds: tuple[str, ...]
    share: float
    keywords: tuple[str, ...]
    cohesion: float


@dataclass(frozen=True)
class SeedDiagnostics:
    """What a seed list is: cohesion beside two random users', the interests within it,
    outliers (seeds fitting none), warnings, the held-out quality of the strategy asked for
    (None with fewer than 4 seeds), and the strategy ``auto`` picks for these seeds."""

    seeds: int
    cohesion: float
    background_cohesion: float
    interests: tuple[SeedInterest, ...]
    outliers: tuple[str, ...]
    warnings: tuple[str, ...]
    quality: AudienceQuality | None
    strategy: str
    suggested_strategy: str


@dataclass(frozen=True)
class LookalikeResult:
    """Users best first, and how many users were eligible (passed filters, not excluded).

    warnings: what in the query probably did not mean what was meant (a filter value no
    stored user has, with the values there are); the answer is still what was asked for.
    strategy: the strategy that answered (``auto``: the one it chose); quality and
    diagnostics: when asked for (``estimate_quality``, ``explain``).
    """

    users: list[ScoredUser]
    eligible: int
    warnings: tuple[str, ...] = ()
    strategy: str = "centroid"
    quality: AudienceQuality | None = None
    diagnostics: SeedDiagnostics | None = None

    def __iter__(self) -> Iterator[ScoredUser]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class UpsertResult:
    """Users written, the store sequence after the last write, and requests sent."""

    upserted: int
    sequence: int
    batches: int


@dataclass(frozen=True)
class DeleteResult:
    """Users erased, and the ids that were not stored (a no-op, not an error)."""

    deleted: int
    not_found: list[str]


@dataclass(frozen=True)
class UserRecord:
    """A stored profile, its indexed vector (when asked for) and the vector dimension."""

    profile: Profile
    vector: bytes
    dimension: int

    def vector_values(self) -> list[float]:
        """The vector decoded from little-endian float32 (empty when none was sent)."""
        values = array("f")
        values.frombytes(self.vector)
        if sys.byteorder == "big":
            values.byteswap()
        return values.tolist()


@dataclass(frozen=True)
class ReachEstimate:
    """Users passing the filters (less exclusions), and all users; warnings as in
    :class:`LookalikeResult`."""

    reach: int
    total: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stats:
    """What the server holds: counts, vector dimension, model, index and store positions."""

    users: int
    indexed: int
    dimension: int
    model: str
    index_type: str
    generation: int
    sequence: int
    data_dir: str
    attributes: tuple[str, ...]
    lexical_model: str = "none"  # version of the fitted lexical model
    lexical_documents: int = 0  # users it was fitted on
    lexical_weight: float = 0.0  # its share of the text channels
    warnings: tuple[str, ...] = ()  # damaged files found at start, and what was used instead
    replication: Replication | None = None  # primary / replica state; None: neither
    text_dimension: int = 0  # the leading dimensions that come from texts; the rest, attributes


@dataclass(frozen=True)
class Replication:
    """A primary's last published generation, or what a replica serves and how old it is."""

    role: str  # "primary" or "replica"
    source: str  # the directory generations are published to / loaded from
    generation: int  # last published (primary) or served (replica); 0 = none yet
    published_at: float  # Unix seconds
    lag_s: float = 0.0  # replica: now - published_at of what it serves
    loaded_at: float = 0.0
    primary: str = ""  # replica: where writes go
    last_error: str = ""


@dataclass(frozen=True)
class PublishResult:
    """The generation published, where (a path on the server's machine), its users and bytes,
    and how long it took (s)."""

    generation: int
    path: str
    users: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class EncoderExport:
    """What a batch worker needs to embed texts exactly as the server does: the settings
    that shape a text vector, their fingerprint, and the export files (path under models/
    -> bytes)."""

    settings: dict
    text_fingerprint: str
    files: dict


@dataclass(frozen=True)
class RebuildResult:
    """Users indexed, the new index generation, and the rebuild's duration in seconds."""

    users: int
    generation: int
    seconds: float


@dataclass(frozen=True)
class SnapshotResult:
    """The generation captured and where the snapshot was written (server-side path)."""

    generation: int
    path: str


@dataclass(frozen=True)
class Job:
    """A long job on the server (rebuild-index, build-segments, fit-predictors): started by a
    ``start_*``
    call, watched with ``get_job`` / ``wait_job``, stopped with ``cancel_job``.

    state: "RUNNING", "SUCCEEDED", "FAILED" or "CANCELLED"; done once it is not RUNNING.
    stage, stage_done, stage_total: what it is doing and how far into it.
    result: the RebuildResult, SegmentBuild or FitResult of a job that succeeded, else None.
    error, error_code: why it failed or was cancelled, and the gRPC status name.
    """

    job_id: str
    kind: str
    state: str
    done: bool
    stage: str = ""
    stage_done: int = 0
    stage_total: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    cancel_requested: bool = False
    result: Any = None  # RebuildResult | SegmentBuild | FitResult (_predictions.py) | None
    error: str = ""
    error_code: str = ""


@dataclass(frozen=True)
class BackupResult:
    """Where the backup was written (a path on the server's machine), its files and bytes,
    the index generation and store sequence it holds, and how long it took (s)."""

    path: str
    files: int
    bytes: int
    generation: int
    sequence: int
    seconds: float
