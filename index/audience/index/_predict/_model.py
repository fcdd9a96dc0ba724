"""One learned attribute: what was fitted, how well it did on users it was not fitted on, and
how it answers for a batch of user vectors. Saved without pickle.

    linear      softmax(T^-1 (x W + b)) over the classes (a category), or x w + b (a number)
    knn         the k nearest labelled users by cosine, votes weighted by similarity and
                divided by the class's share (so a common class does not win by numbers)

Features are the text channels of the user vector (semantic + lexical), normalised: the
attribute channel is left out, since it holds the very values being predicted.

Files, per attribute, in `predictors/`: `<name>.npz` (plain arrays) and `<name>.json` (what
it is, its held-out quality, the sha256 of the .npz; sealed with its own checksum).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from .._durable import read_sealed_json, seal_json, write_durably

CATEGORICAL, NUMERIC = "categorical", "numeric"
LINEAR, KNN = "linear", "knn"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PredictorDamaged(Exception):
    """A predictor's files are missing, unreadable or do not match their checksums."""


def text_features(vectors: np.ndarray, text_dims: int) -> np.ndarray:
    """The text channels of user vectors, each row scaled to unit norm (0 stays 0)."""
    x = np.asarray(vectors[:, :text_dims], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class Quality:
    """Held-out quality at fit time (5-fold cross-validation over the labelled users)."""

    users: int  # labelled users fitted on
    accuracy: float = 0.0  # categories
    macro_f1: float = 0.0
    majority_accuracy: float = 0.0  # always answering the commonest value
    majority_macro_f1: float = 0.0
    mae: float = 0.0  # numbers: mean absolute error
    baseline_mae: float = 0.0  # always answering the median
    candidates: dict[str, float] = field(default_factory=dict)  # method -> its score


@dataclass
class AttributeModel:
    attribute: str
    kind: str  # CATEGORICAL | NUMERIC
    method: str  # LINEAR | KNN
    classes: list[str]  # category keys (empty for a number)
    quality: Quality
    text_dims: int
    fingerprint: str  # the encoder's vector fingerprint it was fitted in
    version: int = 1
    fitted_at: float = 0.0
    temperature: float = 1.0  # scales the linear logits (calibration)
    prior_power: float = 0.0  # decision: argmax p(c|x) / p(c)^power
    sigma: float = 0.0  # numbers: held-out residual sd, for the confidence of a range
    neighbours: int = 0  # knn: k
    regularisation: float = 0.0  # linear category: the logistic regression's C
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ answering

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(n, classes) calibrated probabilities of a category."""
        a = self.arrays
        if self.method == LINEAR:
            logits = (features @ a["weights"] + a["bias"]) / self.temperature
        else:
            vectors, n = a["vectors"].astype(np.float32), len(self.classes)
            votes = knn_votes(features, vectors, a["labels"], n, a["prior"], self.neighbours)
            logits = np.log(votes + 1e-3) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def decide(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index, its probability) per row, by the fitted decision rule."""
        prior = self.arrays["prior"]
        choice = np.argmax(np.log(p + 1e-12) - self.prior_power * np.log(prior), axis=1)
        return choice.astype(np.int32), p[np.arange(len(p)), choice].astype(np.float32)

    def numbers(self, features: np.ndarray) -> np.ndarray:
        a = self.arrays
        if self.method == LINEAR:
            return (features @ a["weights"] + a["bias"]).ravel()
        return knn_mean(features, a["vectors"].astype(np.float32), a["values"], self.neighbours)

    def in_range_confidence(
        self, values: np.ndarray, lo: float | None, hi: float | None
    ) -> np.ndarray:
        """P(the true number lies in [lo, hi]) when it is normal around the prediction with
        the held-out residual sd."""
        sd = max(self.sigma, 1e-9)
        upper = ndtr((hi - values) / sd) if hi is not None else np.ones_like(values)
        lower = ndtr((lo - values) / sd) if lo is not None else np.zeros_like(values)
        return upper - lower

    # ------------------------------------------------------------ files

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        data = buf.getvalue()
        stem = file_stem(self.attribute)
        write_durably(directory / f"{stem}.npz", data)
        doc = {k: v for k, v in asdict(self).items() if k != "arrays"}
        doc["sha256"] = hashlib.sha256(data).hexdigest()
        write_durably(directory / f"{stem}.json", seal_json(doc, indent=1))

    @classmethod
    def load(cls, manifest: Path) -> AttributeModel:
        """PredictorDamaged when either file is unreadable or fails its checksum."""
        try:
            doc, _ = read_sealed_json(manifest)
            data = manifest.with_suffix(".npz").read_bytes()
            if hashlib.sha256(data).hexdigest() != doc.pop("sha256"):
                raise ValueError(f"{manifest.with_suffix('.npz').name} does not match its checksum")
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            quality = Quality(**doc.pop("quality"))
            return cls(**doc, quality=quality, arrays=arrays)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise PredictorDamaged(f"{manifest.stem}: {exc}") from exc


def file_stem(attribute: str) -> str:
    """A file name for an attribute name (any text): safe characters and a short hash."""
    digest = hashlib.sha256(attribute.encode()).hexdigest()[:8]
    return f"{_SAFE.sub('_', attribute)[:60]}-{digest}"


def knn_votes(
    x: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    prior: np.ndarray,
    k: int,
) -> np.ndarray:
    """Similarity-weighted votes of the k nearest labelled users, each class's votes divided
    by its share, rows summing to 1."""
    k = min(k, len(labels))
    sims = x @ vectors.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0)
    votes = np.zeros((len(x), n_classes), np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(x)), k), labels[top].ravel()), w.ravel())
    votes /= prior
    total = votes.sum(axis=1, keepdims=True)
    return np.where(total > 0, votes / np.maximum(total, 1e-12), 1.0 / n_classes)


def knn_mean(x: np.ndarray, vectors: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The similarity-weighted mean value of the k nearest labelled users."""
    k = min(k, len(values))
    sims = x @ vectors.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, top, axis=1), 1e-6)
    return (w * values[top]).sum(axis=1) / w.sum(axis=1)
