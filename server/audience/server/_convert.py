"""Protobuf messages <-> engine value objects.

Only what the wire's shape cannot carry is an error here (InvalidQuery): a filter with no
condition, a value or range with nothing set. Every rule on field values is the engine's
(audience.index._validate); an absent oneof becomes None and the engine says what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TypeVar

from audience.client._proto import audience_pb2 as pb
from audience.index import (
    FIT_PREDICTORS,
    AttrValue,
    AudienceQuality,
    Filter,
    FitResult,
    InvalidQuery,
    Job,
    LookalikeQuery,
    LookalikeResult,
    LookalikeStream,
    Membership,
    PredictorInfo,
    PredictQuery,
    Profile,
    ScoredUsers,
    Seed,
    SeedDiagnostics,
    Segment,
    SegmentParams,
    StoredUser,
    TextItem,
    UserPrediction,
)

DEFAULT_K = 100
DEFAULT_NEGATIVE_WEIGHT = 0.5


def value_from_pb(v: pb.AttributeValue) -> AttrValue | None:
    """The value, or None when none of number, text, flag is set."""
    kind = v.WhichOneof("kind")
    return None if kind is None else getattr(v, kind)


def _filter_value(v: pb.AttributeValue, field: str) -> AttrValue:
    value = value_from_pb(v)
    if value is None:
        raise InvalidQuery(field, "an attribute value needs one of number, text, flag")
    return value


def value_to_pb(value: AttrValue) -> pb.AttributeValue:
    if isinstance(value, bool):
        return pb.AttributeValue(flag=value)
    if isinstance(value, (int, float)):
        return pb.AttributeValue(number=float(value))
    return pb.AttributeValue(text=str(value))


def profile_from_pb(p: pb.Profile) -> Profile:
    return Profile(
        user_id=p.user_id,
        texts=tuple(
            TextItem(t.text, t.weight if t.HasField("weight") else 1.0, t.timestamp)
            for t in p.texts
        ),
        # a value of no kind stays None: the engine rejects it, naming the attribute
        attributes={name: value_from_pb(v) for name, v in p.attributes.items()},
        vector=p.vector,
        text_vector=p.text_vector,
    )


def profiles_from_pb(profiles: Sequence[pb.Profile]) -> list[Profile]:
    return [profile_from_pb(p) for p in profiles]


def stored_user_to_pb(user: StoredUser) -> pb.GetUserResponse:
    p = user.profile
    return pb.GetUserResponse(
        profile=pb.Profile(
            user_id=p.user_id,
            texts=[pb.Text(text=t.text, weight=t.weight, timestamp=t.timestamp) for t in p.texts],
            attributes={k: value_to_pb(v) for k, v in p.attributes.items()},
        ),
        vector=user.vector,
        dimension=user.dimension,
    )


def filters_from_pb(filters: Sequence[pb.Filter]) -> tuple[Filter, ...]:
    out = []
    for i, f in enumerate(filters):
        where = f"filters[{i}]"
        cond = f.WhichOneof("condition")
        common = {"negate": f.negate, "predicted": f.predicted, "min_confidence": f.min_confidence}
        if cond == "equals":
            out.append(
                Filter(f.attribute, equals=_filter_value(f.equals, f"{where}.equals"), **common)
            )
        elif cond == "any_of":
            values = tuple(
                _filter_value(v, f"{where}.any_of[{j}]") for j, v in enumerate(f.any_of.values)
            )
            out.append(Filter(f.attribute, any_of=values, **common))
        elif cond == "range":
            r = f.range
            bounds = {n: getattr(r, n) for n in ("gte", "gt", "lte", "lt") if r.HasField(n)}
            if not bounds:
                raise InvalidQuery(f"{where}.range", "needs at least one of gte, gt, lte, lt")
            out.append(Filter(f.attribute, **common, **bounds))
        else:
            raise InvalidQuery(where, "needs one of equals, range, any_of")
    return tuple(out)


def query_from_pb(r: pb.LookalikeRequest) -> LookalikeQuery:
    seeds = []
    for s in r.seeds:
        kind = s.WhichOneof("kind")  # None: neither; the engine says so
        weight = s.weight if s.HasField("weight") else 1.0
        seeds.append(
            Seed(
                user_id=s.user_id if kind == "user_id" else None,
                text=s.text if kind == "text" else None,
                weight=weight,
            )
        )
    size = r.WhichOneof("size")
    return LookalikeQuery(
        seeds=tuple(seeds),
        k=r.k if size == "k" else (DEFAULT_K if size is None else None),
        fraction=r.fraction if size == "fraction" else None,
        negative_user_ids=tuple(r.negative_user_ids),
        negative_weight=(
            r.negative_weight if r.HasField("negative_weight") else DEFAULT_NEGATIVE_WEIGHT
        ),
        exclude_user_ids=tuple(r.exclude_user_ids),
        include_seeds=r.include_seeds,
        filters=filters_from_pb(r.filters),
        min_score=r.min_score if r.HasField("min_score") else None,
        segment_ids=tuple(r.segment_ids),
        exclude_segment_ids=tuple(r.exclude_segment_ids),
        search_effort=r.search_effort,
        exact=r.exact,
        include_attributes=tuple(r.include_attributes),
        strategy=r.strategy,
        estimate_quality=r.estimate_quality,
        explain=r.explain,
    )


M = TypeVar("M", pb.LookalikeResponse, pb.LookalikeChunk)


def quality_to_pb(q: AudienceQuality) -> pb.AudienceQuality:
    return pb.AudienceQuality(
        heldout_seeds=q.heldout_seeds,
        reach=q.reach,
        heldout_recall=q.heldout_recall,
        lift_at_1=q.lift_at_1,
        lift_at_5=q.lift_at_5,
        lift_at_10=q.lift_at_10,
        cohesion=q.cohesion,
        background_cohesion=q.background_cohesion,
        interest_fit=q.interest_fit,
        background_interest_fit=q.background_interest_fit,
        interest_share=q.interest_share,
        background_interest_share=q.background_interest_share,
    )


def diagnostics_to_pb(d: SeedDiagnostics) -> pb.SeedDiagnostics:
    out = pb.SeedDiagnostics(
        seeds=d.seeds,
        cohesion=d.cohesion,
        background_cohesion=d.background_cohesion,
        interests=[
            pb.SeedInterest(seeds=i.seeds, share=i.share, keywords=i.keywords, cohesion=i.cohesion)
            for i in d.interests
        ],
        outliers=d.outliers,
        warnings=d.warnings,
        strategy=d.strategy,
        suggested_strategy=d.suggested_strategy,
    )
    if d.quality is not None:
        out.quality.CopyFrom(quality_to_pb(d.quality))
    return out


def with_extras(message: M, found: LookalikeResult | LookalikeStream) -> M:
    """The message with what the audience came with: strategy, quality, diagnostics."""
    message.strategy = found.strategy
    if found.quality is not None:
        message.quality.CopyFrom(quality_to_pb(found.quality))
    if found.diagnostics is not None:
        message.diagnostics.CopyFrom(diagnostics_to_pb(found.diagnostics))
    return message


def with_scored(message: M, users: ScoredUsers) -> M:
    """The message with users appended to its `users` field (add() is twice as fast as
    building a list of messages, which counts on the FindLookalikes hot path)."""
    add = message.users.add
    if users.closest_seeds is not None:  # explain: rare, no hurry
        attributes = users.attributes or [{}] * len(users)
        for user_id, score, attrs, seed in zip(
            users.user_ids, users.scores, attributes, users.closest_seeds
        ):
            scored = add(user_id=user_id, score=score, closest_seed=seed)
            for name, value in attrs.items():
                scored.attributes[name].CopyFrom(value_to_pb(value))
        return message
    if users.attributes is not None:
        for user_id, score, attrs in zip(users.user_ids, users.scores, users.attributes):
            scored = add(user_id=user_id, score=score)
            for name, value in attrs.items():
                scored.attributes[name].CopyFrom(value_to_pb(value))
        return message
    for user_id, score in zip(users.user_ids, users.scores):
        add(user_id=user_id, score=score)
    return message


def segment_to_pb(s: Segment) -> pb.Segment:
    return pb.Segment(
        segment_id=s.segment_id,
        size=s.size,
        share=s.share,
        keywords=s.keywords,
        exemplar_user_ids=s.exemplar_user_ids,
        persistence=s.persistence,
        attribute_profile_json=json.dumps(s.attribute_profile, ensure_ascii=False),
        cohesion=s.cohesion,
        status=s.status,
        parents=s.parents,
        name=s.name,
        kind=s.kind,
        parent_id=s.parent_id,
        children=s.children,
        split_order=s.split_order,
    )


def memberships_to_pb(found: Sequence[Membership]) -> list[pb.UserSegment]:
    return [
        pb.UserSegment(
            user_id=m.user_id,
            segment_id=m.segment_id,
            strength=m.strength,
            outlier=m.outlier,
            part_id=m.part_id,
        )
        for m in found
    ]


def segment_params_from_pb(r: pb.BuildSegmentsRequest) -> SegmentParams:
    """Unset (0 / "") fields take SegmentParams' defaults; SegmentParams checks the rest."""
    defaults = SegmentParams()
    return SegmentParams(
        reducer=r.reducer or defaults.reducer,
        target_segments=r.target_segments,
        min_cluster_size=r.min_cluster_size or None,
        sample_size=r.sample_size or defaults.sample_size,
        method=r.method or defaults.method,
    )


REBUILD_INDEX, BUILD_SEGMENTS, BACKUP = "rebuild-index", "build-segments", "backup"
PUBLISH = "publish"
JOB_KINDS = (REBUILD_INDEX, BUILD_SEGMENTS, FIT_PREDICTORS, BACKUP, PUBLISH)
_RESULT_FIELD = {
    REBUILD_INDEX: "rebuild_index",
    BUILD_SEGMENTS: "build_segments",
    FIT_PREDICTORS: "fit_predictors",
}


def job_to_pb(job: Job) -> pb.Job:
    from ._errors import CODE_OF_ERROR_TYPE

    msg = pb.Job(
        job_id=job.job_id,
        kind=job.kind,
        state=pb.Job.State.Value(job.state),
        done=job.finished,
        stage=job.stage,
        stage_done=job.done,
        stage_total=job.total,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        cancel_requested=job.cancel_requested,
        error=job.error,
        error_code=CODE_OF_ERROR_TYPE.get(job.error_type, "INTERNAL") if job.error else "",
    )
    field = _RESULT_FIELD.get(job.kind)
    if job.result and field:
        result = getattr(msg, field)
        if job.kind == FIT_PREDICTORS:  # nested messages: built field by field
            result.CopyFrom(fit_to_pb(job.result))
            return msg
        known = result.DESCRIPTOR.fields_by_name
        result.CopyFrom(type(result)(**{k: v for k, v in job.result.items() if k in known}))
    return msg


# ---------------------------------------------------------------- predictions


def predict_query_from_pb(r: pb.PredictRequest) -> PredictQuery:
    return PredictQuery(
        user_ids=tuple(r.user_ids),
        profiles=tuple(profiles_from_pb(r.profiles)),
        attributes=tuple(r.attributes),
        tags=tuple(r.tags) if r.with_tags else None,
        max_tags=r.max_tags or 5,
        min_tag_score=r.min_tag_score if r.HasField("min_tag_score") else 1.0,
    )


def predictions_to_pb(found: Sequence[UserPrediction]) -> pb.PredictResponse:
    out = pb.PredictResponse()
    for user in found:
        u = out.users.add(user_id=user.user_id)
        for v in user.values:
            value = u.values.add(
                attribute=v.attribute,
                value=value_to_pb(v.value),
                confidence=v.confidence,
                error=v.error,
                alternatives=[
                    pb.ValueProbability(value=a, probability=p) for a, p in v.alternatives
                ],
            )
            if v.stored is not None:
                value.stored.CopyFrom(value_to_pb(v.stored))
        for t in user.tags:
            u.tags.add(tag=t.tag, score=t.score, similarity=t.similarity)
    return out


def predictor_to_pb(p: PredictorInfo | dict) -> pb.Predictor:
    fields = asdict(p) if isinstance(p, PredictorInfo) else dict(p)
    fields["classes"] = list(fields.get("classes", ()))
    return pb.Predictor(**fields)


def fit_to_pb(done: FitResult | dict) -> pb.FitPredictorsResponse:
    fields = asdict(done) if isinstance(done, FitResult) else done
    return pb.FitPredictorsResponse(
        predictors=[predictor_to_pb(p) for p in fields.get("predictors", ())],
        skipped=list(fields.get("skipped", ())),
        seconds=fields.get("seconds", 0.0),
    )
