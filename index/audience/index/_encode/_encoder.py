"""The one encode path: profiles in; user vectors, and the rows and vocabulary the store must
commit with them, out. Used by upsert, segment assignment, re-encoding and text seeds.

It needs no store, no server and no lock: `ProfileEncoder.open(config)` builds one from the
configuration (and a saved lexical model and vocabulary, if given) in any process, so batch
workers compute exactly what the server would. Within the server the engine serialises
encodes that take vocabulary slots (writes) with its writer lock.

    embed_texts(profiles)         the model on every text (the slow part)
    encode(profiles, embedded)    lexical + attribute channels, joined; rows for the store
    query_vector(text)            a free-text lookalike seed
    reencode(rows, reembed=...)   stored rows again, after a settings or lexical change
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._config import EngineConfig
from .._errors import InvalidQuery, PreconditionFailed
from .._store import StoredRow, UserRow
from .._types import Profile, TextItem
from ._channels import Channels, VocabEntry, Vocabulary
from ._embed import TextEmbedder, make_embedder
from ._lexical import LexicalModel
from ._sentiment import SentimentScorer

TextVectors = list[np.ndarray | None]  # a pooled text vector per profile (None: no texts)


def f32(vec: np.ndarray) -> bytes:
    """A vector as stored and sent: little-endian float32 bytes."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def from_f32(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def unit(blob: bytes) -> np.ndarray:
    """A given vector scaled to unit norm (in float64, so tiny or huge values survive)."""
    v = from_f32(blob).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def text_items(row: StoredRow) -> list[TextItem]:
    return [TextItem(t, float(w), int(ts)) for t, w, ts in row.texts]


@dataclass(frozen=True)
class EncodedProfiles:
    """What an encode produced, in the order of the profiles given."""

    rows: list[UserRow]  # for ProfileStore.upsert
    vectors: np.ndarray  # (n, dim) float32 user vectors
    vocabulary: list[VocabEntry]  # categorical slots first taken here: commit with the rows

    def require_signal(self, config: EngineConfig) -> EncodedProfiles:
        """These, or InvalidQuery naming the first profile whose vector is all zeros (no text
        and no attribute declared in the schema): nothing to store for it."""
        empty = np.flatnonzero(~self.vectors.any(axis=1))
        if len(empty):
            declared = [a.name for a in config.attributes or ()]
            raise InvalidQuery(
                f"profiles[{int(empty[0])}]",
                f"needs at least one text or an attribute declared in the schema "
                f"(declared: {declared})",
            )
        return self


@dataclass(frozen=True)
class Reencoded:
    updates: list[tuple[int, bytes | None, bytes]]  # (iid, text vector, user vector)
    vocabulary: list[VocabEntry]


class EmbedCounter:
    """Texts embedded and the seconds it took, since the process started (for metrics);
    shared by an encoder and those made from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.texts = 0
        self.seconds = 0.0

    def add(self, texts: int, seconds: float) -> None:
        with self._lock:
            self.texts += texts
            self.seconds += seconds


class ProfileEncoder:
    def __init__(
        self,
        config: EngineConfig,
        embedder: TextEmbedder,
        vocabulary: Vocabulary,
        lexical: LexicalModel | None = None,
        counter: EmbedCounter | None = None,
        sentiment: SentimentScorer | None = None,
    ) -> None:
        self.config = config
        self.embedder = embedder
        self.vocabulary = vocabulary
        self.counter = counter or EmbedCounter()
        self.channels = Channels(config, embedder, lexical)
        self.text_fingerprint = config.text_fingerprint(embedder.model_id, embedder.dim)
        self.sentiment = sentiment or (SentimentScorer() if config.sentiment else None)

    @classmethod
    def open(
        cls,
        config: EngineConfig,
        *,
        embedder: TextEmbedder | None = None,
        lexical_dir: Path | None = None,
        vocabulary: Sequence[VocabEntry] = (),
    ) -> ProfileEncoder:
        """An encoder with no store: the model `config` names (or `embedder`), the lexical
        model saved in `lexical_dir` (none if not given) and these learned vocabulary slots."""
        lexical = LexicalModel.load(lexical_dir) if lexical_dir is not None else None
        return cls(
            config,
            embedder or make_embedder(config),
            Vocabulary(config.attributes or (), vocabulary),
            lexical,
        )

    def with_lexical(self, lexical: LexicalModel | None) -> ProfileEncoder:
        """The same encoder with another lexical model (the vocabulary is shared)."""
        return ProfileEncoder(
            self.config, self.embedder, self.vocabulary, lexical, self.counter, self.sentiment
        )

    # ------------------------------------------------------------ what it makes

    @property
    def dim(self) -> int:
        return self.channels.dim

    @property
    def lexical(self) -> LexicalModel | None:
        return self.channels.lexical

    @property
    def lexical_version(self) -> str:
        return self.channels.lexical_version

    @property
    def lexical_share(self) -> float:
        return self.channels.lexical_share

    @property
    def fingerprint(self) -> str:
        """Identifies how user vectors are computed (changes with each lexical fit)."""
        return self.config.vector_fingerprint(
            self.text_fingerprint, self.lexical_version, self.lexical_share
        )

    @property
    def text_dims(self) -> int:
        """Leading dimensions of a user vector that come from texts (semantic + lexical)."""
        return self.channels.text_dim + self.channels.lex_dim

    @property
    def attr_dims(self) -> int:
        """The trailing dimensions, from declared attributes."""
        return self.channels.attr_dim

    # ------------------------------------------------------------ encoding

    def derived(self, profiles: Sequence[Profile]) -> list[Profile]:
        """The profiles with the attributes derived from their texts (`sentiment`, when
        configured: _sentiment.py), what is stored and encoded. Outside every lock."""
        if self.sentiment is None:
            return list(profiles)
        return self.sentiment.annotate(profiles)

    def embed_texts(self, profiles: Sequence[Profile]) -> TextVectors:
        """The pooled text vector of each profile (None for one with a vector of its own or
        without texts). The slow part: call it outside every lock."""
        texts = [p.texts if not (p.vector or p.text_vector) else () for p in profiles]
        t0 = time.perf_counter()
        vectors = self.channels.text_vectors(texts)
        self.counter.add(sum(map(len, texts)), time.perf_counter() - t0)
        for i, p in enumerate(profiles):  # embedded by a batch worker (checked by the engine)
            if p.text_vector and not p.vector:
                vectors[i] = unit(p.text_vector)
        return vectors

    def term_vectors(self, terms: Sequence[str]) -> np.ndarray:
        """Short texts (keywords) encoded as a user's only text would be, one unit row each:
        what a segment's keywords are compared by (semantic and lexical channels)."""
        items = [[TextItem(t)] for t in terms]
        texts = self.channels.text_vectors(items)
        lexical = self.channels.lexical_vectors(items)
        no_attrs = np.zeros(self.channels.attr_dim, dtype=np.float32)
        rows = [self.channels.combine(t, lx, no_attrs) for t, lx in zip(texts, lexical)]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def check_text_vectors(self, profiles: Sequence[Profile], fingerprint: str) -> None:
        """InvalidQuery / PreconditionFailed unless every given text vector was made by this
        encoder's model and settings (`fingerprint`) and fits a profile with texts."""
        given = [i for i, p in enumerate(profiles) if p.text_vector]
        if not given:
            return
        if fingerprint != self.text_fingerprint:
            raise PreconditionFailed(
                f"text vectors made with text fingerprint {fingerprint or '(none given)'}; this "
                f"server embeds with {self.text_fingerprint}: get its encoder again (GetEncoder) "
                "and embed again"
            )
        dim = self.channels.text_dim
        for i in given:
            p, where = profiles[i], f"profiles[{i}].text_vector"
            if p.vector:
                raise InvalidQuery(where, "give a user vector or a text vector, not both")
            if not p.texts:
                raise InvalidQuery(where, "a text vector needs the texts it was made from")
            v = np.frombuffer(p.text_vector, dtype="<f4") if len(p.text_vector) == 4 * dim else None
            if v is None or not np.isfinite(v).all() or not v.any():
                raise InvalidQuery(where, f"must be {dim} finite float32 values, not all zero")

    def encode(
        self, profiles: Sequence[Profile], embedded: TextVectors | None = None
    ) -> EncodedProfiles:
        """User vectors and store rows for `profiles` (`embedded`: from `embed_texts`, or
        computed here). A profile's own vector is kept as given, scaled to unit norm."""
        ch = self.channels
        if embedded is None:
            embedded = self.embed_texts(profiles)
        lex = ch.lexical_vectors([p.texts if not p.vector else () for p in profiles])
        draft = self.vocabulary.draft()
        vectors = np.zeros((len(profiles), ch.dim), np.float32)
        rows = []
        for i, (p, tv, lv) in enumerate(zip(profiles, embedded, lex)):
            if p.vector:
                vectors[i] = unit(p.vector)
            else:
                vectors[i] = ch.combine(tv, lv, ch.attribute_vector(p.attributes, draft))
            rows.append(
                UserRow(
                    user_id=p.user_id,
                    texts_json=json.dumps(
                        [[t.text, t.weight, t.timestamp] for t in p.texts], ensure_ascii=False
                    ),
                    attributes_json=json.dumps(p.attributes, ensure_ascii=False),
                    text_vec=None if tv is None else f32(tv),
                    vec=f32(vectors[i]),
                    own_vec=bool(p.vector),
                )
            )
        return EncodedProfiles(rows, vectors, draft.entries)

    def query_vector(self, text: str) -> np.ndarray:
        """A free-text seed: encoded like a user's only text, with no attributes."""
        return self.channels.query_vector(text)

    def reencode(self, rows: Sequence[StoredRow], *, reembed: bool) -> Reencoded:
        """Stored users' vectors computed again: the text vectors too if `reembed`, else
        the stored ones recombined with the current lexical model and attribute settings.
        A vector a profile brought is kept as given."""
        ch = self.channels
        texts = [text_items(r) for r in rows]
        if reembed:
            text_vecs = ch.text_vectors(texts)
        else:
            text_vecs = [None if r.text_vec is None else from_f32(r.text_vec) for r in rows]
        lex_vecs = ch.lexical_vectors(texts)
        draft = self.vocabulary.draft()
        updates = []
        for r, tv, lv in zip(rows, text_vecs, lex_vecs):
            if r.own_vec:
                updates.append((r.iid, r.text_vec, r.vec))
                continue
            vec = ch.combine(tv, lv, ch.attribute_vector(r.attributes, draft))
            if not vec.any() and len(r.vec) == 4 * ch.dim:
                vec = from_f32(r.vec)  # attributes no longer used: keep what it had
            updates.append((r.iid, None if tv is None else f32(tv), f32(vec)))
        return Reencoded(updates, draft.entries)
