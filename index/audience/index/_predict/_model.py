"""One learned attribute: what was fitted, how well it did on users it was not fitted on, and
how it answers for a batch of user vectors. Saved without pickle.

    linear      softmax(T^-1 (x W + t V + b)) over the classes (a category), or x w + b (a
                number); t V only for a model that reads terms
    knn         the k nearest labelled users by cosine, votes weighted by similarity and
                divided by the class's share (so a common class does not win by numbers)

Inputs (`Inputs`): x, the text channels of the user vector (semantic + lexical), normalised
(the attribute channel is left out, since it holds the very values being predicted); and for a
model with `terms`, t, the user's texts as TF-IDF rows over the lexical channel's vocabulary,
whole rather than reduced (words like "my husband" that the reduction blurs tell gender and
age apart).

Files, per attribute, in `predictors/`: `<name>.npz` (plain arrays), `<name>.answers.npz` (its
answers for every user when it was fitted) and `<name>.json` (what it is, its held-out
quality, the sha256 of both; sealed with its own checksum).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from .._durable import read_sealed_json, seal_json, write_durably

if TYPE_CHECKING:
    from .._encode import LexicalModel

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


@dataclass(frozen=True)
class Inputs:
    """What a model reads of some users: text features, and TF-IDF rows when it uses terms."""

    dense: np.ndarray
    terms: sp.csr_matrix | None = None

    def __len__(self) -> int:
        return len(self.dense)

    def rows(self, index: np.ndarray) -> Inputs:
        return Inputs(self.dense[index], None if self.terms is None else self.terms[index])

    def joined(self) -> np.ndarray | sp.csr_matrix:
        """One matrix: the dense features, then the terms (sparse) if any."""
        if self.terms is None:
            return self.dense
        return sp.hstack([sp.csr_matrix(self.dense), self.terms], format="csr")


@dataclass
class Quality:
    """Held-out quality at fit time (5-fold cross-validation over the labelled users)."""

    users: int  # labelled users fitted on
    accuracy: float = 0.0  # categories
    macro_f1: float = 0.0
    majority_accuracy: float = 0.0  # always answering the commonest value
    majority_macro_f1: float = 0.0
    calibration_error: float = 0.0  # |confidence - accuracy| over 10 bins, weighted (ECE)
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
    terms: bool = False  # also reads the texts' TF-IDF rows (the lexical vocabulary)
    answers_sequence: int = 0  # the store's sequence its saved answers are as of
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # not saved: the lexical model whose vocabulary `terms` index (the encoder's)
    lexical: LexicalModel | None = field(default=None, repr=False, compare=False)

    def inputs(self, vectors: np.ndarray, documents: Sequence[str] | None = None) -> Inputs:
        """This model's inputs for users: their vectors, and their texts (one document each)
        when it reads terms."""
        dense = text_features(vectors, self.text_dims)
        if not self.terms:
            return Inputs(dense)
        if self.lexical is None or documents is None:
            raise ValueError(f"the model of {self.attribute!r} reads texts: give them")
        return Inputs(dense, self.lexical.tfidf(documents))

    # ------------------------------------------------------------ answering

    def probabilities(self, x: Inputs) -> np.ndarray:
        """(n, classes) calibrated probabilities of a category."""
        a = self.arrays
        if self.method == LINEAR:
            logits = x.dense @ a["weights"] + a["bias"]
            if self.terms and x.terms is not None:
                logits = logits + np.asarray(x.terms @ a["term_weights"])
            logits = logits / self.temperature
        else:
            vectors, n = a["vectors"].astype(np.float32), len(self.classes)
            votes = knn_votes(x.dense, vectors, a["labels"], n, a["prior"], self.neighbours)
            logits = np.log(votes + 1e-3) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def decide(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index, its probability) per row, by the fitted decision rule."""
        prior = self.arrays["prior"]
        choice = np.argmax(np.log(p + 1e-12) - self.prior_power * np.log(prior), axis=1)
        return choice.astype(np.int32), p[np.arange(len(p)), choice].astype(np.float32)

    def numbers(self, x: Inputs) -> np.ndarray:
        a = self.arrays
        if self.method == LINEAR:
            return (x.dense @ a["weights"] + a["bias"]).ravel()
        return knn_mean(x.dense, a["vectors"].astype(np.float32), a["values"], self.neighbours)

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

    def save(self, directory: Path, answers: dict[str, np.ndarray]) -> None:
        """The model, and its `answers` for every user (iids and their answers) as of the
        store's sequence `answers_sequence`; the manifest last, naming both checksums."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = file_stem(self.attribute)
        skip = ("arrays", "lexical", "quality")
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        doc["quality"] = asdict(self.quality)
        for name, arrays in (("sha256", self.arrays), ("answers_sha256", answers)):
            data = _npz(arrays)
            suffix = ".npz" if name == "sha256" else ".answers.npz"
            write_durably(directory / f"{stem}{suffix}", data)
            doc[name] = hashlib.sha256(data).hexdigest()
        write_durably(directory / f"{stem}.json", seal_json(doc, indent=1))

    @classmethod
    def load(cls, manifest: Path) -> tuple[AttributeModel, dict[str, np.ndarray]]:
        """(the model, its saved answers); PredictorDamaged when a file is unreadable or
        fails its checksum."""
        try:
            doc, _ = read_sealed_json(manifest)
            found = []
            for name, suffix in (("sha256", ".npz"), ("answers_sha256", ".answers.npz")):
                path = manifest.with_name(manifest.stem + suffix)
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != doc.pop(name):
                    raise ValueError(f"{path.name} does not match its checksum")
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    found.append({k: z[k] for k in z.files})
            quality = Quality(**doc.pop("quality"))
            return cls(**doc, quality=quality, arrays=found[0]), found[1]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise PredictorDamaged(f"{manifest.stem}: {exc}") from exc


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def file_stem(attribute: str) -> str:
    """A file name for an attribute name (any text): safe characters and a short hash."""
    digest = hashlib.sha256(attribute.encode()).hexdigest()[:8]
    return f"{_SAFE.sub('_', attribute)[:60]}-{digest}"


KNN_BLOCK = 1 << 24  # similarities computed at once (64 MB of float32), rows at a time


def _nearest(x: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n, k): the k rows of `vectors` nearest each row of x,
    computed a block of rows at a time so that memory stays bounded."""
    k = min(k, len(vectors))
    sims = np.empty((len(x), k), np.float32)
    top = np.empty((len(x), k), np.int64)
    step = max(1, KNN_BLOCK // max(len(vectors), 1))
    for s in range(0, len(x), step):
        block = x[s : s + step] @ vectors.T
        idx = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top[s : s + step] = idx
        sims[s : s + step] = np.take_along_axis(block, idx, axis=1)
    return sims, top


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
    sims, top = _nearest(x, vectors, k)
    k = top.shape[1]
    w = np.maximum(sims, 0.0)
    votes = np.zeros((len(x), n_classes), np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(x)), k), labels[top].ravel()), w.ravel())
    votes /= prior
    total = votes.sum(axis=1, keepdims=True)
    return np.where(total > 0, votes / np.maximum(total, 1e-12), 1.0 / n_classes)


def knn_mean(x: np.ndarray, vectors: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The similarity-weighted mean value of the k nearest labelled users."""
    sims, top = _nearest(x, vectors, k)
    w = np.maximum(sims, 1e-6)
    return (w * values[top]).sum(axis=1) / w.sum(axis=1)
