"""Predicted attributes and interest tags as the client returns them, and their messages.

A prediction never replaces what is stored: ``PredictedValue.stored`` carries the stored
value beside the model's answer when the user has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._convert_profiles import attribute_from_pb, profiles_to_pb, string
from ._errors import InvalidArgument
from ._proto import audience_pb2 as pb
from ._types import AttributeScalar, as_tuple


@dataclass(frozen=True)
class PredictedValue:
    attribute: str
    value: AttributeScalar  # a category's value, or a number
    confidence: float  # a category: calibrated probability of ``value``; a number: 0
    stored: AttributeScalar | None = None  # the stored value, when the user has one
    alternatives: tuple[tuple[str, float], ...] = ()  # likeliest values with probabilities
    error: float = 0.0  # a number: the model's held-out mean absolute error


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float  # standard deviations above an ordinary user's similarity to the tag
    similarity: float  # cosine of the user's text vector and the tag's


@dataclass(frozen=True)
class UserPrediction:
    user_id: str
    values: tuple[PredictedValue, ...]
    tags: tuple[TagScore, ...] = ()

    def value(self, attribute: str) -> PredictedValue | None:
        """The prediction for ``attribute``, if one was made."""
        return next((v for v in self.values if v.attribute == attribute), None)


@dataclass(frozen=True)
class Predictor:
    """A fitted model of one attribute and its quality on users it was not fitted on."""

    attribute: str
    kind: str  # "categorical" | "numeric"
    method: str  # "linear", "linear+terms" (reads the texts' TF-IDF rows too) or "knn"
    classes: tuple[str, ...]
    users: int
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
    predictors: tuple[Predictor, ...]
    skipped: tuple[str, ...]  # "attribute: why" for attributes left without a model
    seconds: float


def predict_request(
    user_ids: Any,
    profiles: Any,
    attributes: Any,
    tags: Sequence[str] | None,
    max_tags: int,
    min_tag_score: float | None,
) -> pb.PredictRequest:
    ids = [string("user_ids", u) for u in as_tuple("user_ids", user_ids)]
    request = pb.PredictRequest(
        user_ids=ids,
        profiles=profiles_to_pb(as_tuple("profiles", profiles)),
        attributes=[string("attributes", a) for a in as_tuple("attributes", attributes)],
        with_tags=tags is not None,
        tags=[string("tags", t) for t in as_tuple("tags", tags or ())],
        max_tags=int(max_tags),
    )
    if min_tag_score is not None:
        request.min_tag_score = float(min_tag_score)
    return request


def fit_request(attributes: Any) -> pb.FitPredictorsRequest:
    if isinstance(attributes, str):
        raise InvalidArgument("attributes must be a sequence of names, not a single str")
    names = [string("attributes", a) for a in as_tuple("attributes", attributes)]
    return pb.FitPredictorsRequest(attributes=names)


def user_predictions(msg: pb.PredictResponse) -> list[UserPrediction]:
    return [
        UserPrediction(
            user_id=u.user_id,
            values=tuple(
                PredictedValue(
                    attribute=v.attribute,
                    value=attribute_from_pb(v.value),  # type: ignore[arg-type]
                    confidence=round(v.confidence, 4),
                    stored=attribute_from_pb(v.stored) if v.HasField("stored") else None,
                    alternatives=tuple((a.value, round(a.probability, 4)) for a in v.alternatives),
                    error=round(v.error, 4),
                )
                for v in u.values
            ),
            tags=tuple(TagScore(t.tag, round(t.score, 3), round(t.similarity, 4)) for t in u.tags),
        )
        for u in msg.users
    ]


def predictor(msg: pb.Predictor) -> Predictor:
    return Predictor(
        attribute=msg.attribute,
        kind=msg.kind,
        method=msg.method,
        classes=tuple(msg.classes),
        users=msg.users,
        accuracy=msg.accuracy,
        macro_f1=msg.macro_f1,
        majority_accuracy=msg.majority_accuracy,
        majority_macro_f1=msg.majority_macro_f1,
        calibration_error=msg.calibration_error,
        mae=msg.mae,
        baseline_mae=msg.baseline_mae,
        version=msg.version,
        fitted_at=msg.fitted_at,
        candidates=dict(msg.candidates),
    )


def predictors(messages: Iterable[pb.Predictor]) -> list[Predictor]:
    return [predictor(m) for m in messages]


def fit_result(msg: pb.FitPredictorsResponse) -> FitResult:
    return FitResult(tuple(predictors(msg.predictors)), tuple(msg.skipped), msg.seconds)
