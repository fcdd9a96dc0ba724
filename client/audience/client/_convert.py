"""Request building and response parsing, shared by the sync and asyncio clients.

Client types (``_types``) in, protobuf messages out, and back. Malformed input raises
:class:`InvalidArgument` here, before anything is sent; value ranges are left to the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ._convert_profiles import (
    Batcher as Batcher,
)
from ._convert_profiles import (  # the profile half: also what the clients call as cv.*
    ProfileLike,
    _assign,
    _float,
    _int,
    attribute_from_pb,
    attribute_to_pb,
    profile_from_pb,
    profiles_to_pb,
    string,
    strings,
)
from ._convert_profiles import (
    check_profiles as check_profiles,
)
from ._convert_profiles import (
    coerce_profile as coerce_profile,
)
from ._convert_profiles import (
    is_async_iterable as is_async_iterable,
)
from ._convert_profiles import (
    profile_to_pb as profile_to_pb,
)
from ._convert_profiles import (
    text_to_pb as text_to_pb,
)
from ._convert_profiles import (
    upsert_request as upsert_request,
)
from ._errors import InvalidArgument, ServerError
from ._predictions import fit_result
from ._proto import audience_pb2 as pb
from ._segment_types import Segment, SegmentBuild, SegmentTree, UserSegment
from ._types import (
    AudienceQuality,
    BackupResult,
    DeleteResult,
    EncoderExport,
    Filter,
    Job,
    LookalikeQuery,
    LookalikeResult,
    PublishResult,
    ReachEstimate,
    RebuildResult,
    Replication,
    ScoredUser,
    Seed,
    SeedDiagnostics,
    SeedInterest,
    SnapshotResult,
    Stats,
    UpsertResult,
    UserRecord,
    as_tuple,
)

# ---------------------------------------------------------------- filters and queries


def filter_to_pb(value: Filter | str) -> pb.Filter:
    flt = Filter.parse(value) if isinstance(value, str) else value
    if not isinstance(flt, Filter):
        raise InvalidArgument(f"a filter must be a Filter or a str, not {type(value).__name__}")
    name = flt.attribute
    msg = pb.Filter(attribute=name, negate=bool(flt.negate), predicted=bool(flt.predicted))
    if flt.min_confidence:
        msg.min_confidence = _float(f"filter {name!r} min_confidence", flt.min_confidence)
    if flt.equals is not None:
        msg.equals.CopyFrom(attribute_to_pb(name, flt.equals))
    elif flt.any_of is not None:
        msg.any_of.SetInParent()  # an empty set is still a set condition
        msg.any_of.values.extend(attribute_to_pb(name, v) for v in flt.any_of)
    elif flt.has_range:
        msg.range.SetInParent()
        for bound in ("gte", "gt", "lte", "lt"):
            value = getattr(flt, bound)
            if value is not None:
                setattr(msg.range, bound, _float(f"filter {name!r} {bound}", value))
    return msg


def filters_to_pb(filters: Iterable[Filter | str]) -> list[pb.Filter]:
    return [filter_to_pb(f) for f in as_tuple("filters", filters)]


def seed_to_pb(seed: Seed) -> pb.Seed:
    if not isinstance(seed, Seed):
        raise InvalidArgument(f"a seed must be a Seed, not {type(seed).__name__}")
    msg = pb.Seed()
    if seed.user_id is not None:
        _assign(msg, "user_id", string("seed user_id", seed.user_id), "seed user_id")
    elif seed.text is not None:
        _assign(msg, "text", string("seed text", seed.text), "seed text")
    if seed.weight is not None:
        msg.weight = _float("seed weight", seed.weight)
    return msg


def _is_default(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (tuple, list)) and not value)


def build_query(seed_ids: Any = (), seed_texts: Any = (), **options: Any) -> LookalikeQuery:
    """The query for ``find_lookalikes(...)``: a LookalikeQuery passed alone, or the fields."""
    if isinstance(seed_ids, LookalikeQuery):
        if not (_is_default(seed_texts) and all(map(_is_default, options.values()))):
            raise InvalidArgument("pass either a LookalikeQuery or query fields, not both")
        return seed_ids
    return LookalikeQuery(seed_ids=seed_ids, seed_texts=seed_texts, **options)


def _add_seeds(msg: pb.LookalikeRequest, query: LookalikeQuery) -> None:
    """Seeds in the order of ``query.all_seeds()``; ids and texts go straight into the
    repeated field (add() takes a third of the time of a Seed and a message each, which
    counts on the FindLookalikes hot path)."""
    add = msg.seeds.add
    for kind, name, values in (
        ("user_id", "seed user_id", query.seed_ids),
        ("text", "seed text", query.seed_texts),
    ):
        try:
            for v in values:
                add(**{kind: string(name, v)})
        except (TypeError, ValueError) as exc:  # protobuf's own (a lone surrogate, say)
            raise InvalidArgument(f"{name}: {exc}") from None
    msg.seeds.extend(seed_to_pb(s) for s in query.seeds)


def lookalike_request(query: LookalikeQuery) -> pb.LookalikeRequest:
    """The request for a query; ``k``/``fraction`` set only when given (even k=0)."""
    if not isinstance(query, LookalikeQuery):
        raise InvalidArgument(f"expected a LookalikeQuery, not {type(query).__name__}")
    msg = pb.LookalikeRequest(
        negative_user_ids=strings("negative_ids", query.negative_ids),
        exclude_user_ids=strings("exclude_ids", query.exclude_ids),
        include_seeds=bool(query.include_seeds),
        filters=filters_to_pb(query.filters),
        segment_ids=strings("segment_ids", query.segment_ids),
        exclude_segment_ids=strings("exclude_segment_ids", query.exclude_segment_ids),
    )
    _add_seeds(msg, query)
    if query.negative_weight is not None:
        msg.negative_weight = _float("negative_weight", query.negative_weight)
    if query.k is not None:
        _assign(msg, "k", _int("k", query.k), "k")
    elif query.fraction is not None:
        msg.fraction = _float("fraction", query.fraction)
    if query.min_score is not None:
        msg.min_score = _float("min_score", query.min_score)
    if query.search_effort is not None:
        _assign(msg, "search_effort", _int("search_effort", query.search_effort), "search_effort")
    msg.exact = bool(query.exact)
    if query.strategy is not None:
        msg.strategy = string("strategy", query.strategy)
    msg.estimate_quality = bool(query.estimate_quality)
    msg.explain = bool(query.explain)
    if query.include_attributes:
        msg.include_attributes.extend(strings("include_attributes", query.include_attributes))
    return msg


def reach_request(
    filters: Iterable[Filter | str],
    exclude_ids: Iterable[str],
    segment_ids: Iterable[str] = (),
    exclude_segment_ids: Iterable[str] = (),
) -> pb.EstimateReachRequest:
    return pb.EstimateReachRequest(
        filters=filters_to_pb(filters),
        exclude_user_ids=strings("exclude_ids", exclude_ids),
        segment_ids=strings("segment_ids", segment_ids),
        exclude_segment_ids=strings("exclude_segment_ids", exclude_segment_ids),
    )


def check_concurrency(concurrency: int) -> int:
    if _int("concurrency", concurrency) < 1:
        raise InvalidArgument(f"concurrency must be >= 1, got {concurrency}")
    return concurrency


def delete_request(user_ids: Iterable[str]) -> pb.DeleteUsersRequest:
    return pb.DeleteUsersRequest(user_ids=strings("user_ids", user_ids))


def get_user_request(user_id: str, include_vector: bool) -> pb.GetUserRequest:
    return pb.GetUserRequest(
        user_id=string("user_id", user_id), include_vector=bool(include_vector)
    )


def rebuild_request(reembed: bool) -> pb.RebuildIndexRequest:
    return pb.RebuildIndexRequest(reembed=bool(reembed))


def segments_build(
    target_segments: int,
    reducer: str = "",
    min_cluster_size: int = 0,
    sample_size: int = 0,
    engine: str = "",
    method: str = "",
) -> pb.BuildSegmentsRequest:
    msg = pb.BuildSegmentsRequest(
        reducer=string("reducer", reducer),
        engine=string("engine", engine),
        method=string("method", method),
    )
    for name, value in (
        ("target_segments", target_segments),
        ("min_cluster_size", min_cluster_size),
        ("sample_size", sample_size),
    ):
        _assign(msg, name, _int(name, value), name)
    return msg


def segment_request(segment_id: str) -> pb.GetSegmentRequest:
    return pb.GetSegmentRequest(segment_id=string("segment_id", segment_id))


def members_request(
    segment_id: str, include_attributes: Iterable[str] = ()
) -> pb.StreamSegmentMembersRequest:
    return pb.StreamSegmentMembersRequest(
        segment_id=string("segment_id", segment_id),
        include_attributes=strings("include_attributes", include_attributes),
    )


def user_segments_request(user_ids: Iterable[str]) -> pb.GetUserSegmentsRequest:
    return pb.GetUserSegmentsRequest(user_ids=strings("user_ids", user_ids))


def assign_request(profiles: Iterable[ProfileLike]) -> pb.AssignSegmentsRequest:
    return pb.AssignSegmentsRequest(profiles=profiles_to_pb(profiles))


# ---------------------------------------------------------------- responses


def scored_users(msg: pb.LookalikeResponse | pb.LookalikeChunk) -> list[ScoredUser]:
    return [_scored_user(u.user_id, u.score) for u in msg.users]


def scored_users_with_attributes(
    msg: pb.LookalikeResponse | pb.LookalikeChunk,
) -> list[ScoredUser]:
    """For a request with include_attributes or explain: each user with the attributes it
    has and its closest seed."""
    return [
        ScoredUser(
            u.user_id,
            u.score,
            {k: attribute_from_pb(v) for k, v in u.attributes.items()},
            u.closest_seed or None,
        )
        for u in msg.users
    ]


_new = object.__new__
_set_user_id = ScoredUser.user_id.__set__  # type: ignore[attr-defined]  # slot descriptors
_set_score = ScoredUser.score.__set__  # type: ignore[attr-defined]
_set_attributes = ScoredUser.attributes.__set__  # type: ignore[attr-defined]
_set_closest_seed = ScoredUser.closest_seed.__set__  # type: ignore[attr-defined]


def _scored_user(user_id: str, score: float) -> ScoredUser:
    """ScoredUser(user_id, score) without the frozen dataclass's __init__, which sets each
    field through object.__setattr__: 40 instead of 60 us for 100 users."""
    user = _new(ScoredUser)
    _set_user_id(user, user_id)
    _set_score(user, score)
    _set_attributes(user, None)
    _set_closest_seed(user, None)
    return user


def lookalike_result(msg: pb.LookalikeResponse, with_attributes: bool = False) -> LookalikeResult:
    """with_attributes: the request asked for attributes or explain."""
    return LookalikeResult(
        users=scored_users_with_attributes(msg) if with_attributes else scored_users(msg),
        eligible=msg.eligible,
        warnings=tuple(msg.warnings),
        strategy=msg.strategy or "centroid",
        quality=audience_quality(msg.quality) if msg.HasField("quality") else None,
        diagnostics=seed_diagnostics(msg.diagnostics) if msg.HasField("diagnostics") else None,
    )


def audience_quality(msg: pb.AudienceQuality) -> AudienceQuality:
    return AudienceQuality(
        heldout_seeds=msg.heldout_seeds,
        reach=msg.reach,
        heldout_recall=msg.heldout_recall,
        lift_at_1=msg.lift_at_1,
        lift_at_5=msg.lift_at_5,
        lift_at_10=msg.lift_at_10,
        cohesion=msg.cohesion,
        background_cohesion=msg.background_cohesion,
        interest_fit=msg.interest_fit,
        background_interest_fit=msg.background_interest_fit,
        interest_share=msg.interest_share,
        background_interest_share=msg.background_interest_share,
    )


def seed_diagnostics(msg: pb.SeedDiagnostics) -> SeedDiagnostics:
    return SeedDiagnostics(
        seeds=msg.seeds,
        cohesion=msg.cohesion,
        background_cohesion=msg.background_cohesion,
        interests=tuple(
            SeedInterest(tuple(i.seeds), i.share, tuple(i.keywords), i.cohesion)
            for i in msg.interests
        ),
        outliers=tuple(msg.outliers),
        warnings=tuple(msg.warnings),
        quality=audience_quality(msg.quality) if msg.HasField("quality") else None,
        strategy=msg.strategy,
        suggested_strategy=msg.suggested_strategy,
    )


def delete_result(msg: pb.DeleteUsersResponse) -> DeleteResult:
    return DeleteResult(deleted=msg.deleted, not_found=list(msg.not_found))


def user_record(msg: pb.GetUserResponse) -> UserRecord:
    return UserRecord(
        profile=profile_from_pb(msg.profile), vector=bytes(msg.vector), dimension=msg.dimension
    )


def reach_estimate(msg: pb.EstimateReachResponse) -> ReachEstimate:
    return ReachEstimate(reach=msg.reach, total=msg.total, warnings=tuple(msg.warnings))


def stats(msg: pb.GetStatsResponse) -> Stats:
    return Stats(
        users=msg.users,
        indexed=msg.indexed,
        dimension=msg.dimension,
        model=msg.model,
        index_type=msg.index_type,
        generation=msg.generation,
        sequence=msg.sequence,
        data_dir=msg.data_dir,
        attributes=tuple(msg.attributes),
        lexical_model=msg.lexical_model or "none",
        lexical_documents=msg.lexical_documents,
        lexical_weight=msg.lexical_weight,
        warnings=tuple(msg.warnings),
        replication=replication(msg.replication) if msg.HasField("replication") else None,
        text_dimension=msg.text_dimension,
    )


def replication(msg: pb.Replication) -> Replication:
    return Replication(
        role=msg.role,
        source=msg.source,
        generation=msg.generation,
        published_at=msg.published_at,
        lag_s=msg.lag_s,
        loaded_at=msg.loaded_at,
        primary=msg.primary,
        last_error=msg.last_error,
    )


def publish_result(msg: pb.PublishResponse) -> PublishResult:
    return PublishResult(msg.generation, msg.path, msg.users, msg.bytes, msg.seconds)


def encoder_export(messages: Iterable[pb.GetEncoderResponse]) -> EncoderExport:
    settings, fingerprint, files = None, "", {}
    for m in messages:
        if m.settings_json:
            settings, fingerprint = json.loads(m.settings_json), m.text_fingerprint
        if m.path:
            files[m.path] = files.get(m.path, b"") + m.chunk
    if settings is None:
        raise ServerError("the server sent no encoder settings")
    return EncoderExport(settings, fingerprint, files)


def rebuild_result(msg: pb.RebuildIndexResponse) -> RebuildResult:
    return RebuildResult(users=msg.users, generation=msg.generation, seconds=msg.seconds)


def snapshot_result(msg: pb.SnapshotResponse) -> SnapshotResult:
    return SnapshotResult(generation=msg.generation, path=msg.path)


def segment(msg: pb.Segment) -> Segment:
    try:
        profile = json.loads(msg.attribute_profile_json) if msg.attribute_profile_json else {}
    except ValueError as exc:
        raise ServerError(f"segment {msg.segment_id!r}: bad attribute_profile_json: {exc}") from exc
    return Segment(
        segment_id=msg.segment_id,
        size=msg.size,
        share=msg.share,
        keywords=list(msg.keywords),
        exemplar_user_ids=list(msg.exemplar_user_ids),
        persistence=msg.persistence,
        attribute_profile=profile,
        cohesion=msg.cohesion,
        status=msg.status,
        parents=list(msg.parents),
        name=msg.name,
        kind=msg.kind or "segment",
        parent_id=msg.parent_id,
        children=list(msg.children),
        split_order=msg.split_order,
    )


def segment_tree(msg: pb.ListSegmentsResponse) -> SegmentTree:
    return SegmentTree(
        model_version=msg.model_version,
        segments=[segment(s) for s in msg.segments],
        groups=[segment(s) for s in msg.groups],
        parts=[segment(s) for s in msg.parts],
        method=msg.method,
        method_reason=msg.method_reason,
    )


def user_segments(msg: Any) -> list[UserSegment]:
    """Memberships of a GetUserSegments or AssignSegments response."""
    return [
        UserSegment(
            m.user_id, m.segment_id, strength=m.strength, outlier=m.outlier, part_id=m.part_id
        )
        for m in msg.memberships
    ]


def job(msg: pb.Job) -> Job:
    kind = msg.WhichOneof("result")
    result: Any = None
    if kind == "rebuild_index":
        result = rebuild_result(msg.rebuild_index)
    elif kind == "build_segments":
        result = segment_build(msg.build_segments)
    elif kind == "fit_predictors":
        result = fit_result(msg.fit_predictors)
    return Job(
        job_id=msg.job_id,
        kind=msg.kind,
        state=pb.Job.State.Name(msg.state),
        done=msg.done,
        stage=msg.stage,
        stage_done=msg.stage_done,
        stage_total=msg.stage_total,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        finished_at=msg.finished_at,
        cancel_requested=msg.cancel_requested,
        result=result,
        error=msg.error,
        error_code=msg.error_code,
    )


def backup_result(msg: pb.BackupResponse) -> BackupResult:
    return BackupResult(
        path=msg.path,
        files=msg.files,
        bytes=msg.bytes,
        generation=msg.generation,
        sequence=msg.sequence,
        seconds=msg.seconds,
    )


def job_request(job_id: str) -> str:
    return string("job_id", job_id)


def segment_build(msg: pb.BuildSegmentsResponse) -> SegmentBuild:
    return SegmentBuild(
        model_version=msg.model_version,
        segments=msg.segments,
        seconds=msg.seconds,
        outlier_share=msg.outlier_share,
        users=msg.users,
        method=msg.method,
        method_reason=msg.method_reason,
        groups=msg.groups,
        parts=msg.parts,
    )


class UpsertTotals:
    """Running totals of a bulk upload, turned into an :class:`UpsertResult` at the end."""

    def __init__(self) -> None:
        self.upserted = self.sequence = self.batches = 0

    def add(self, msg: pb.UpsertUsersResponse, *, batches: int = 1) -> int:
        """Count one answer; returns the users written so far."""
        self.upserted += msg.upserted
        self.sequence = max(self.sequence, msg.sequence)
        self.batches += batches
        return self.upserted

    def result(self) -> UpsertResult:
        return UpsertResult(upserted=self.upserted, sequence=self.sequence, batches=self.batches)
