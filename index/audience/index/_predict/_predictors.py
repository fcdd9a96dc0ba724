"""The predictors a data dir serves: one fitted model per attribute in `predictors/`, loaded
at start (a damaged or stale one is named for a refit), and what they answer for users.

A predictor is stale when the vector space it was fitted in is gone (a rebuild of the index
refits the lexical channel): its answers would be noise, so it is not served until refitted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._attrs import AttributeTable
from .._types import AttrValue, PredictedValue
from ._model import CATEGORICAL, AttributeModel, PredictorDamaged

log = logging.getLogger("audience.index")

PREDICTORS_DIR = "predictors"
CHUNK = 65_536  # users predicted per matrix product
ALTERNATIVES = 3  # values (with their probabilities) returned beside a category's answer


@dataclass
class Loaded:
    models: dict[str, AttributeModel]
    answers: dict[str, Answers]  # each model's saved answers (as of its answers_sequence)
    refit: list[str]  # attributes whose model is damaged or stale
    refit_all: bool  # a damaged file whose attribute cannot be read: refit every attribute


def load_predictors(directory: Path, fingerprint: str, warnings: list[str]) -> Loaded:
    found = Loaded({}, {}, [], False)
    for manifest in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            model, saved = AttributeModel.load(manifest)
        except PredictorDamaged as exc:
            name = _attribute_named_in(manifest)
            what = f"attribute {name!r}" if name else f"file {manifest.name}"
            warnings.append(f"the predictor of {what} is damaged ({exc}); refitting it")
            log.warning("Predict - a predictor file is damaged (%s); refitting", manifest.name)
            if name:
                found.refit.append(name)
            else:
                found.refit_all = True
            continue
        if model.fingerprint != fingerprint:
            log.info("Predict - %s was fitted in another vector space; refitting", manifest.stem)
            found.refit.append(model.attribute)
            continue
        found.models[model.attribute] = model
        found.answers[model.attribute] = Answers.of_arrays(model, saved)
    return found


def _attribute_named_in(manifest: Path) -> str | None:
    """The attribute a damaged manifest names, if it can still be read as JSON."""
    try:
        name = json.loads(manifest.read_text()).get("attribute")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


Vectors = np.ndarray | Callable[[np.ndarray], np.ndarray]  # rows, or iids -> rows
Documents = Callable[[np.ndarray], list[str]]  # iids -> each user's texts as one document


@dataclass
class Answers:
    """A model's answers for some users, ready to be served (`AttributeTable.set_predicted`)
    and saved beside it."""

    model: AttributeModel
    iids: np.ndarray
    codes: np.ndarray | None = None  # a category: class index and its probability
    confidence: np.ndarray | None = None
    numbers: np.ndarray | None = None  # a number

    def serve(self, attrs: AttributeTable) -> None:
        m = self.model
        if m.kind == CATEGORICAL:
            attrs.set_predicted(
                m.attribute,
                self.iids,
                classes=m.classes,
                codes=self.codes,
                confidence=self.confidence,
            )
        else:
            attrs.set_predicted(
                m.attribute, self.iids, numbers=self.numbers, in_range=m.in_range_confidence
            )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"iids": self.iids}
        for name in ("codes", "confidence", "numbers"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def of_arrays(cls, model: AttributeModel, arrays: dict[str, np.ndarray]) -> Answers:
        return cls(
            model,
            arrays["iids"],
            arrays.get("codes"),
            arrays.get("confidence"),
            arrays.get("numbers"),
        )


def answer_all(
    model: AttributeModel, iids: np.ndarray, vectors: Vectors, documents: Documents
) -> Answers:
    """The model's answers for these users, read a chunk at a time: `vectors` are their user
    vectors (or give them), `documents` their texts (read only by a model with terms)."""
    parts: list[tuple] = []
    for start in range(0, len(iids), CHUNK):
        ids = iids[start : start + CHUNK]
        v = vectors(ids) if callable(vectors) else vectors[start : start + CHUNK]
        x = model.inputs(v, documents(ids) if model.terms else None)
        if model.kind == CATEGORICAL:
            parts.append(model.decide(model.probabilities(x)))
        else:
            parts.append((model.numbers(x),))
    if model.kind == CATEGORICAL:
        codes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        sure = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
        return Answers(model, iids, codes=codes, confidence=sure)
    numbers = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    return Answers(model, iids, numbers=numbers)


def predict_into(
    attrs: AttributeTable,
    model: AttributeModel,
    iids: np.ndarray,
    vectors: Vectors,
    documents: Documents,
) -> None:
    """Serve the model's answers for these users (see `answer_all`)."""
    answer_all(model, iids, vectors, documents).serve(attrs)


def answers(
    models: Sequence[AttributeModel],
    vectors: np.ndarray,
    documents: Sequence[str],
    stored: Sequence[dict[str, AttrValue]],
) -> Iterator[list[PredictedValue]]:
    """Per user (a row of `vectors`, a document of `documents`), each model's answer beside
    the stored value."""
    per_model = []
    for model in models:
        x = model.inputs(vectors, documents)
        if model.kind == CATEGORICAL:
            p = model.probabilities(x)
            codes, confidence = model.decide(p)
            per_model.append((model, p, codes, confidence))
        else:
            per_model.append((model, model.numbers(x), None, None))
    for row in range(len(vectors)):
        out = []
        for model, p, codes, confidence in per_model:
            known = stored[row].get(model.attribute)
            if codes is None:
                value = round(float(p[row]), 6)
                out.append(
                    PredictedValue(model.attribute, value, 0.0, known, (), model.quality.mae)
                )
                continue
            order = np.argsort(-p[row])[:ALTERNATIVES]
            alternatives = tuple((model.classes[c], round(float(p[row, c]), 4)) for c in order)
            value, sure = model.classes[int(codes[row])], round(float(confidence[row]), 4)
            out.append(PredictedValue(model.attribute, value, sure, known, alternatives))
        yield out
