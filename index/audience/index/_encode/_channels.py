"""The channels of a user vector and how they are joined: a user's texts and attributes ->
one L2-normalised vector.

    semantic part   each text embedded by the sentence-transformer, pooled by
                    weight x recency decay, normalised
    lexical part    the user's texts as one document through the fitted lexical model
                    (TF-IDF + SVD, see _lexical.py), normalised; zeros until one is fitted
    attribute part  per declared attribute a block of unit norm (numeric: angle on a quarter
                    circle, so near values are near; categorical: one-hot), scaled by
                    sqrt(attribute weight / sum of weights)
    user vector     [sqrt(ws) * semantic, sqrt(wl) * lexical, sqrt(wa) * attributes],
                    normalised again; wa = attribute_weight, wl = (1 - wa) * lexical share,
                    ws = the rest

Inner products of user vectors are cosine similarities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .._config import AttributeSpec, EngineConfig
from .._types import AttrValue, TextItem, category_key
from ._embed import TextEmbedder
from ._lexical import LexicalModel

VocabEntry = tuple[str, str, int]  # (attribute, value key, slot)

SECONDS_PER_DAY = 86_400.0
# Lexical share of the text channels when not configured, by the corpus's share of CJK
# characters. Measured (bench/run.py lookalike, precision@100): THUCNews headlines 0.48
# semantic, 0.91 lexical, 0.92 at 0.9; StackOverflow titles 0.94 semantic, 0.98 at 0.3.
AUTO_LEXICAL_SHARE_CJK = 0.9
AUTO_LEXICAL_SHARE_OTHER = 0.3
CJK_CORPUS_THRESHOLD = 0.3


def lexical_share(config: EngineConfig, lexical: LexicalModel | None) -> float:
    if config.lexical_weight is not None:
        return config.lexical_weight
    if lexical is None:
        return 0.0
    if lexical.manifest.cjk_share >= CJK_CORPUS_THRESHOLD:
        return AUTO_LEXICAL_SHARE_CJK
    return AUTO_LEXICAL_SHARE_OTHER


class Vocabulary:
    """Slots of categorical values: declared values first, learned ones appended (persisted).

    An encode never changes it: it takes new slots in a `VocabularyDraft`, whose `entries`
    the store commits with the rows; only then does the engine `learn` them. A write that
    does not commit leaves nothing to undo, and encoding profiles that are not stored (segment
    assignment) takes no slot at all.
    """

    def __init__(self, specs: Sequence[AttributeSpec], learned: Sequence[VocabEntry]):
        self._specs = {s.name: s for s in specs if s.kind == "categorical"}
        self._slots: dict[str, dict[str, int]] = {
            name: {v: i for i, v in enumerate(spec.values)} for name, spec in self._specs.items()
        }
        self.learn(learned)

    def draft(self) -> VocabularyDraft:
        return VocabularyDraft(self._slots)

    def learn(self, entries: Sequence[VocabEntry]) -> None:
        """Take in slots that the store has committed."""
        for attr, value, slot in entries:
            if attr in self._slots and value not in self._slots[attr]:
                self._slots[attr][value] = slot

    def entries(self) -> list[VocabEntry]:
        """Every slot of a categorical attribute, declared or learned."""
        return [(a, v, s) for a, slots in self._slots.items() for v, s in slots.items()]


class VocabularyDraft:
    """The vocabulary as one encode sees it: the committed slots, plus the new values this
    encode meets, each given the next free slot (in `entries`, in the order taken)."""

    def __init__(self, committed: dict[str, dict[str, int]]) -> None:
        self._committed = committed
        self._new: dict[str, dict[str, int]] = {}
        self.entries: list[VocabEntry] = []

    def slot(self, spec: AttributeSpec, value: AttrValue) -> int:
        key = category_key(value)
        committed = self._committed[spec.name]
        found = committed.get(key)
        if found is None:
            found = self._new.get(spec.name, {}).get(key)
        if found is not None:
            return found
        new = self._new.setdefault(spec.name, {})
        taken = len(committed) + len(new)
        if taken >= spec.capacity:
            return spec.capacity  # the shared "other" slot
        slot = max(max(committed.values(), default=-1), max(new.values(), default=-1)) + 1
        new[key] = slot
        self.entries.append((spec.name, key, slot))
        return slot


class Channels:
    """The vector math of the three channels (see the module docstring); `ProfileEncoder`
    is what callers use."""

    def __init__(
        self,
        config: EngineConfig,
        embedder: TextEmbedder,
        lexical: LexicalModel | None = None,
    ):
        self.config = config
        self.embedder = embedder
        self.lexical = lexical
        self.specs = config.attributes or ()
        self.attr_dim = sum(s.width for s in self.specs)
        self.text_dim = embedder.dim
        self.lex_dim = config.lexical_dim
        self.dim = self.text_dim + self.lex_dim + self.attr_dim
        total = sum(s.weight for s in self.specs) or 1.0
        self._block_scale = [math.sqrt(s.weight / total) for s in self.specs]
        wa = config.attribute_weight if self.specs else 0.0
        self.lexical_share = lexical_share(config, lexical) if self.lex_dim else 0.0
        self._text_scale = math.sqrt((1.0 - wa) * (1.0 - self.lexical_share))
        self._lex_scale = math.sqrt((1.0 - wa) * self.lexical_share)
        self._attr_scale = math.sqrt(wa)

    def with_lexical(self, lexical: LexicalModel | None) -> Channels:
        return Channels(self.config, self.embedder, lexical)

    @property
    def lexical_version(self) -> str:
        return self.lexical.version if self.lexical is not None else "none"

    def lexical_vectors(self, users_texts: Sequence[Sequence[TextItem]]) -> np.ndarray:
        """(n, lex_dim): each user's texts as one document; zeros before a model is fitted."""
        if self.lexical is None or not self.lex_dim:
            return np.zeros((len(users_texts), self.lex_dim), dtype=np.float32)
        return self.lexical.transform(["\n".join(t.text for t in texts) for texts in users_texts])

    # ------------------------------------------------------------------ text part

    def text_vectors(self, users_texts: Sequence[Sequence[TextItem]]) -> list[np.ndarray | None]:
        """Pooled, normalised text vector per user (None for a user without texts).

        All texts of all users go to the model in one call, so batching is by text.
        """
        flat: list[str] = []
        for texts in users_texts:
            flat.extend(t.text[: self.config.max_embed_chars] for t in texts)
        embedded = self.embedder.embed(flat)
        out: list[np.ndarray | None] = []
        at = 0
        for texts in users_texts:
            n = len(texts)
            if n == 0:
                out.append(None)
                continue
            rows = embedded[at : at + n]
            at += n
            weights = np.array([t.weight for t in texts], dtype=np.float64)
            half_life = self.config.recency_half_life_days
            stamps = np.array([t.timestamp for t in texts], dtype=np.float64)
            if half_life and (stamps > 0).any():
                newest = stamps.max()
                age_days = np.where(stamps > 0, (newest - stamps) / SECONDS_PER_DAY, 0.0)
                weights = weights * np.power(0.5, age_days / half_life)
            pooled = (weights[:, None] * rows).sum(axis=0)
            norm = float(np.linalg.norm(pooled))
            out.append((pooled / norm).astype(np.float32) if norm > 0 else None)
        return out

    # ------------------------------------------------------------------ attribute part

    def attribute_vector(
        self, attributes: Mapping[str, AttrValue], vocabulary: VocabularyDraft
    ) -> np.ndarray:
        vec = np.zeros(self.attr_dim, dtype=np.float32)
        at = 0
        for spec, scale in zip(self.specs, self._block_scale):
            value = attributes.get(spec.name)
            if value is not None:
                if spec.kind == "numeric":
                    x = _as_number(value)
                    if x is not None:
                        t = min(max((x - spec.min) / (spec.max - spec.min), 0.0), 1.0)  # type: ignore[operator]
                        vec[at] = scale * math.cos(t * math.pi / 2)
                        vec[at + 1] = scale * math.sin(t * math.pi / 2)
                else:
                    vec[at + vocabulary.slot(spec, value)] = scale
            at += spec.width
        return vec

    # ------------------------------------------------------------------ user vector

    def combine(
        self, text_vec: np.ndarray | None, lex_vec: np.ndarray | None, attr_vec: np.ndarray
    ) -> np.ndarray:
        """The user vector; all zeros when the user has neither texts nor known attributes."""
        out = np.zeros(self.dim, dtype=np.float32)
        t, lx = self.text_dim, self.text_dim + self.lex_dim
        if text_vec is not None:
            out[:t] = self._text_scale * text_vec
        if lex_vec is not None and self.lex_dim:
            out[t:lx] = self._lex_scale * lex_vec
        if self.attr_dim:
            out[lx:] = self._attr_scale * attr_vec
        norm = float(np.linalg.norm(out))
        return out / norm if norm > 0 else out

    def query_vector(self, text: str) -> np.ndarray:
        """A free-text seed: encoded like a user's only text, with no attributes."""
        texts = [[TextItem(text)]]
        (vec,) = self.text_vectors(texts)
        (lex,) = self.lexical_vectors(texts)
        return self.combine(vec, lex, np.zeros(self.attr_dim, dtype=np.float32))


def _as_number(value: AttrValue) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None
