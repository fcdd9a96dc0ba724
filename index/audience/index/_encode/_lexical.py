"""The lexical channel: TF-IDF over words and CJK character 1-2-grams, reduced by SVD.

all-MiniLM-L6-v2 barely knows Chinese (and no model knows every English jargon word), so the
user vector also carries a lexical part fitted on the stored texts themselves:

    tokens     words (lowercased, 2+ characters, not only digits; c++ and c# kept whole)
               and, in runs of CJK characters, every character and every pair of neighbours
    weights    sublinear tf x smoothed idf, each document L2-normalised
    reduction  truncated SVD (randomised) to `dim` components; rows L2-normalised

It is fitted by `rebuild-index` (and on a first start over a non-empty store) and then used
unchanged for every new text until the next fit. It is saved without pickle: one .npz of
plain arrays (terms as a fixed-width unicode array) and a JSON manifest with its sha256.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .._durable import read_sealed_json, seal_json, write_durably

log = logging.getLogger("audience.index")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:\+\+|#)?")
_IS_CJK = re.compile(rf"[{_CJK}]")


class LexicalModelError(Exception):
    """A lexical model file is missing, truncated or corrupted."""


def analyze(text: str) -> list[str]:
    """Latin words and CJK character 1-2-grams of one text."""
    out: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        tok = match.group()
        if _IS_CJK.match(tok):
            out.extend(tok)
            out.extend(tok[i : i + 2] for i in range(len(tok) - 1))
        elif len(tok) > 1 and not tok.isdigit():
            out.append(tok)
    return out


def cjk_share(texts: Sequence[str]) -> float:
    """Share of CJK characters among the letters of these texts."""
    cjk = letters = 0
    for t in texts:
        cjk += len(_IS_CJK.findall(t))
        letters += sum(c.isalpha() for c in t)
    return cjk / letters if letters else 0.0


@dataclass(frozen=True)
class LexicalManifest:
    sha256: str
    dim: int
    terms: int
    documents: int
    cjk_share: float
    created: float


class LexicalModel:
    """A fitted vocabulary, idf and SVD basis."""

    def __init__(
        self, terms: np.ndarray, idf: np.ndarray, components: np.ndarray, manifest: LexicalManifest
    ) -> None:
        self.terms = terms
        self.idf = idf.astype(np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)  # (dim, terms)
        self.manifest = manifest
        self._index = {str(t): i for i, t in enumerate(terms)}

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def version(self) -> str:
        return self.manifest.sha256[:16]

    # ------------------------------------------------------------------ fit / transform

    @classmethod
    def fit(
        cls,
        documents: Sequence[str],
        *,
        dim: int = 256,
        max_terms: int = 50_000,
        min_df: int = 2,
        seed: int = 0,
    ) -> LexicalModel:
        """Fit on documents (one per user). Needs at least a few documents with shared terms."""
        from sklearn.utils.extmath import randomized_svd

        t0 = time.perf_counter()
        tokenized = [analyze(d) for d in documents]
        df: Counter[str] = Counter()
        for toks in tokenized:
            df.update(set(toks))
        kept = [t for t, n in df.most_common(max_terms) if n >= min_df]
        if len(kept) < 2:
            raise ValueError("too few shared terms to fit a lexical model")
        kept.sort()
        n_docs = len(documents)
        idf = np.array([math.log((1 + n_docs) / (1 + df[t])) + 1.0 for t in kept], np.float32)
        terms = np.array(kept)
        model = cls(
            terms,
            idf,
            np.zeros((1, len(kept)), np.float32),
            LexicalManifest("", 1, len(kept), n_docs, 0.0, 0.0),
        )
        x = model._tfidf(tokenized)
        k = max(1, min(dim, min(x.shape) - 1))
        _, _, vt = randomized_svd(x, n_components=k, n_iter=5, random_state=seed)
        if k < dim:  # tiny corpus: pad so the vector dimension stays fixed
            vt = np.vstack([vt, np.zeros((dim - k, vt.shape[1]), vt.dtype)])
        manifest = LexicalManifest(
            sha256="",
            dim=dim,
            terms=len(kept),
            documents=n_docs,
            cjk_share=round(cjk_share(documents[:20_000]), 4),
            created=time.time(),
        )
        log.info(
            "Lexical - fitted on %d documents: %d terms -> %d dims in %.1fs",
            n_docs,
            len(kept),
            dim,
            time.perf_counter() - t0,
        )
        return cls(terms, idf, vt.astype(np.float32), manifest)

    def _tfidf(self, tokenized: Sequence[Sequence[str]]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, toks in enumerate(tokenized):
            counts = Counter(self._index[t] for t in toks if t in self._index)
            if not counts:
                continue
            ids = np.fromiter(counts.keys(), np.int64, len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))
            w = tf * self.idf[ids]
            w /= np.linalg.norm(w)
            rows.append(np.full(len(ids), r))
            cols.append(ids)
            vals.append(w)
        if not rows:
            return sp.csr_matrix((len(tokenized), len(self.terms)), dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(tokenized), len(self.terms)),
            dtype=np.float32,
        )

    def tfidf(self, documents: Sequence[str]) -> sp.csr_matrix:
        """(n, terms) sparse TF-IDF rows of unit norm over the fitted vocabulary: what the
        SVD reduces, whole (the attribute models read it beside the user vector)."""
        return self._tfidf([analyze(d) for d in documents]).tocsr()

    def transform(self, documents: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows of unit norm (all zeros for a document with no known term)."""
        x = self._tfidf([analyze(d) for d in documents])
        out = np.asarray(x @ self.components.T, dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> LexicalManifest:
        """Write `lexical.npz` + `lexical.json` durably (temp file, fsync, rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, terms=self.terms, idf=self.idf, components=self.components)
        data = buf.getvalue()
        write_durably(directory / "lexical.npz", data)
        manifest = LexicalManifest(
            **{**asdict(self.manifest), "sha256": hashlib.sha256(data).hexdigest()}
        )
        write_durably(directory / "lexical.json", seal_json(asdict(manifest)))
        self.manifest = manifest
        return manifest

    @classmethod
    def load(cls, directory: Path) -> LexicalModel | None:
        """The saved model; None if there is none; LexicalModelError if it is damaged."""
        mpath, path = directory / "lexical.json", directory / "lexical.npz"
        if not mpath.exists() and not path.exists():
            return None
        try:
            manifest = LexicalManifest(**read_sealed_json(mpath, legacy_ok=True)[0])
            data = path.read_bytes()
        except (OSError, ValueError, TypeError) as exc:
            raise LexicalModelError(f"lexical model unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise LexicalModelError("lexical model file does not match its checksum")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["terms"], z["idf"], z["components"], manifest)
