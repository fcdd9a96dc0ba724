"""The engine: profile store + user encoder + vector index + lookalike scoring.

Writes are durable in SQLite before the in-memory index changes; the index is saved as
generations and, on open, the newest good generation is loaded and brought up to date from
the store (rows changed since, users erased since). Searches run concurrently under a read
lock; writes and rebuilds swap state under the write lock, so a reader sees the old state
or the new one, never half of each.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ._attrs import AttributeTable
from ._config import EngineConfig
from ._describe import describe_segments
from ._embed import TextEmbedder, make_embedder
from ._encoder import UserEncoder, Vocabulary
from ._errors import (
    InvalidQuery,
    LimitExceeded,
    PreconditionFailed,
    SegmentsNotBuilt,
    UnknownSegment,
    UnknownUser,
)
from ._lexical import LexicalModel, LexicalModelError
from ._rwlock import RWLock
from ._segments import Segment, SegmentModel, SegmentParams, fit_clusters, match_segments
from ._store import ProfileStore, StoredRow, UserRow
from ._types import (
    Filter,
    LookalikeQuery,
    LookalikeResult,
    Profile,
    ScoredUser,
    Stats,
    StoredUser,
    TextItem,
    scored_users,
)
from ._userids import UserIdTable
from ._vectors import (
    Generations,
    IndexOptions,
    IvfPqIndex,
    VectorIndex,
    build_index,
    new_index,
)

log = logging.getLogger("audience.index")
# A query excluding at most this many users (and no filter) drops them from a longer result
# instead of searching with a bitmap of all users.
POST_FILTER_MAX = 1000
# A lossy index (ivf-pq) returns this many times the candidates asked for; the engine re-ranks
# them with the exact vectors from the store (up to REFINE_MAX_K results; larger audiences
# keep the index's approximate order and scores).
REFINE_FACTOR = 4
REFINE_MAX_K = 2500

Progress = Callable[[str, int, int], None]  # (stage, done, total)

STORE_FILE = "profiles.sqlite3"
INDEX_DIR = "index"
LEXICAL_DIR = "lexical"
SEGMENTS_DIR = "segments"
SNAPSHOT_DIR = "snapshots"


def _f32(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _matrix(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored vectors (float32 bytes) as the rows of one (len(blobs), dim) array."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)


def _unit(blob: bytes) -> np.ndarray:
    """A given vector scaled to unit norm (in float64, so tiny or huge values survive)."""
    v = _vec(blob).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


class Engine:
    """Open with `Engine.open(config)`; close with `close()` (saves an index generation)."""

    def __init__(
        self,
        config: EngineConfig,
        store: ProfileStore,
        encoder: UserEncoder,
        generations: Generations,
    ) -> None:
        self.config = config
        self.store = store
        self.encoder = encoder
        self.generations = generations
        self.limits = config.limits
        self._rw = RWLock()
        self._writer = threading.Lock()  # one writer (upsert, delete, rebuild) at a time
        self._index: VectorIndex = new_index("flat", encoder.dim)
        self._attrs = AttributeTable()
        self._iid_of: dict[str, int] = {}
        self._uid_of = UserIdTable()
        self.warnings: list[str] = []  # what recovery at open had to do (damaged files)
        self._segments: SegmentModel | None = None
        self._segment_of: dict[int, tuple[int, float]] = {}  # iid -> (label, strength)
        self._build_lock = threading.Lock()
        self._generation = 0
        self._unsaved = 0
        self._closed = False
        self.text_fingerprint = config.text_fingerprint(encoder.embedder.model_id, encoder.text_dim)

    @property
    def fingerprint(self) -> str:
        """Identifies how the current user vectors are computed (changes with each lexical fit)."""
        return self._fingerprint_of(self.encoder)

    def _fingerprint_of(self, enc: UserEncoder) -> str:
        return self.config.vector_fingerprint(
            self.text_fingerprint, enc.lexical_version, enc.lexical_share
        )

    # ================================================================== lifecycle

    @classmethod
    def open(
        cls,
        config: EngineConfig,
        *,
        embedder: TextEmbedder | None = None,
        progress: Progress | None = None,
    ) -> Engine:
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        log.info("Engine - Opening data dir %s", data_dir)
        store = ProfileStore(data_dir / STORE_FILE)
        if config.attributes is None:  # keep the schema this data dir was last opened with
            config = config.with_attributes_json(store.get_meta("attributes") or "[]")
        store.set_meta("attributes", config.attributes_json())
        if embedder is None:
            embedder = make_embedder(config)
        vocabulary = Vocabulary(config.attributes or (), store.vocabulary())
        lexical = None
        lexical_warning = None
        if config.lexical_dim:
            try:
                lexical = LexicalModel.load(data_dir / LEXICAL_DIR)
            except LexicalModelError as exc:
                log.error("Lexical - %s; refitting it from the store", exc)
                lexical_warning = f"{exc}; refitted from the store"
            if lexical is not None and lexical.dim != config.lexical_dim:
                log.warning(
                    "Lexical - saved model has %d dims, not %d; refitting",
                    lexical.dim,
                    config.lexical_dim,
                )
                lexical = None
        engine = cls(
            config,
            store,
            UserEncoder(config, embedder, vocabulary, lexical),
            Generations(data_dir / INDEX_DIR),
        )
        if lexical_warning:
            engine.warnings.append(lexical_warning)
        engine.warnings.extend(getattr(embedder, "warnings", ()))  # e.g. a re-exported model
        engine._load(progress)
        return engine

    def _load(self, progress: Progress | None) -> None:
        t0 = time.perf_counter()
        count = self.store.count()
        if (
            self.config.lexical_dim
            and self.encoder.lexical is None
            and count >= self.config.lexical_min_users
        ):
            self.encoder = self.encoder.with_lexical(self._fit_lexical(progress))
        stored_text_fp = self.store.get_meta("text_fingerprint")
        stored_fp = self.store.get_meta("vector_fingerprint")
        if count and stored_text_fp != self.text_fingerprint:
            log.warning("Engine - model or text settings changed; embedding all texts again")
            self._reencode(self.encoder, reembed=True, progress=progress)
        elif count and stored_fp != self.fingerprint:
            log.warning("Engine - vector settings or lexical model changed; recombining vectors")
            self._reencode(self.encoder, reembed=False, progress=progress)
        self.store.set_meta("text_fingerprint", self.text_fingerprint)
        self.store.set_meta("vector_fingerprint", self.fingerprint)

        total = self.store.count()
        # The index generation (checksum + read, in C++ without the GIL) loads in a thread
        # while the profiles load here: at a million users each takes seconds.
        found: dict[str, object] = {}

        def load_index() -> None:
            try:
                found["loaded"] = self.generations.load_latest(
                    fingerprint=self.fingerprint,
                    dim=self.encoder.dim,
                    options=self._index_options(self._index_kind(total)),
                    warnings=self.warnings,
                )
            except BaseException as exc:  # re-raised below, in the opening thread
                found["error"] = exc

        loader = threading.Thread(target=load_index, name="index-load", daemon=True)
        loader.start()
        done = 0
        for rows in self.store.iter_meta():
            for iid, user_id, attributes in rows:
                self._iid_of[user_id] = iid
                self._uid_of.set(iid, user_id)
                self._attrs.set(iid, attributes)
            done += len(rows)
            if progress:
                progress("load profiles", done, total)
        loader.join()
        if "error" in found:
            raise found["error"]  # type: ignore[misc]
        loaded = found.get("loaded")  # type: ignore[assignment]
        if loaded is None:
            log.info("Index - no usable generation; building from the store")
            self._index = self._build_index(progress)
            self._generation = self.generations.latest_generation()
            self._unsaved = total
        else:
            index, manifest = loaded
            self._generation = manifest.generation
            # Bring it up to date: users erased since, then users written since.
            indexed = index.ids()
            stale = indexed[~self._uid_of.contains(indexed)]
            index.remove(stale)
            replayed = 0
            for rows in self.store.iter_rows(since_seq=manifest.sequence):
                ids = np.array([r.iid for r in rows], dtype=np.int64)
                index.remove(ids)
                index.add(ids, np.stack([_vec(r.vec) for r in rows]))
                replayed += len(rows)
            self._index = index
            self._unsaved = replayed + len(stale)
            log.info(
                "Index - loaded generation %d (%d vectors), replayed %d changes, dropped %d erased",
                manifest.generation,
                manifest.count,
                replayed,
                len(stale),
            )
        if len(self._index) != total:  # never serve an index that disagrees with the store
            log.error("Index - %d vectors for %d users; rebuilding", len(self._index), total)
            self._index = self._build_index(progress)
        elif self._index_due():
            self._index = self._build_index(progress)
            self._unsaved = max(1, total)
        model = SegmentModel.load(self.config.data_dir / SEGMENTS_DIR, self.warnings)
        if model is not None:
            self._install_segments(model)
        log.info("Engine - Ready: %d users in %.1fs", total, time.perf_counter() - t0)

    # ------------------------------------------------------------------ index kind

    def _index_kind(self, users: int) -> str:
        """The index kind for this many users: exact below the ANN threshold."""
        kind = self.config.index_kind
        if kind == "flat" or users < self.config.ann_threshold:
            return "flat"
        if kind == "ivf-pq" and users < IvfPqIndex.MIN_USERS:
            return "flat"
        return "hnsw" if kind == "auto" else kind

    def _index_options(self, kind: str) -> IndexOptions:
        c = self.config
        return IndexOptions(kind, c.hnsw_m, c.hnsw_ef_construction, c.hnsw_ef_search, c.ivf_nprobe)

    def _index_due(self) -> bool:
        """Whether the index should be rebuilt: another kind is due (the user count crossed
        the ANN threshold, with some slack going down, or the setting changed), or an HNSW
        graph holds many tombstones."""
        n, current = len(self._index), self._index.kind
        want = self._index_kind(n)
        if want != current and not (
            want == "flat"
            and n >= self.config.ann_threshold // 2
            and self.config.index_kind in ("auto", current)
        ):
            log.info("Index - %s index due for %d users (now %s)", want, n, current)
            return True
        if self._index.needs_compaction():
            log.info("Index - compacting: removed users take a large share of the graph")
            return True
        return False

    def _build_index(self, progress: Progress | None) -> VectorIndex:
        """A new index of the kind due, from the vectors in the store."""
        total = self.store.count()
        kind = self._index_kind(total)
        t0 = time.perf_counter()
        if kind == "flat":
            index, done = new_index("flat", self.encoder.dim), 0
            for iids, blobs in self.store.iter_vectors():  # vectors only, not texts
                index.add(iids, _matrix(blobs, self.encoder.dim))
                done += len(iids)
                if progress:
                    progress("build index", done, total)
            return index
        ids = np.empty(total, np.int64)
        vecs = np.empty((total, self.encoder.dim), np.float32)
        n = 0
        for iids, blobs in self.store.iter_vectors():
            m = min(len(iids), total - n)  # (no writer runs meanwhile; this is a guard)
            ids[n : n + m] = iids[:m]
            vecs[n : n + m] = _matrix(blobs[:m], self.encoder.dim)
            n += m
            if progress:
                progress("read vectors", n, total)
        log.info("Index - building %s over %d vectors", kind, n)
        if progress:
            progress("build " + kind, 0, 1)
        index = build_index(self._index_options(kind), self.encoder.dim, ids[:n], vecs[:n])
        del vecs
        if progress:
            progress("build " + kind, 1, 1)
        log.info("Index - built %s (%d vectors) in %.1fs", kind, n, time.perf_counter() - t0)
        return index

    def _fit_lexical(self, progress: Progress | None) -> LexicalModel | None:
        """Fit the lexical model on (a sample of) the stored users and save it."""
        total = self.store.count()
        keep = min(1.0, self.config.lexical_max_fit_docs / max(total, 1))
        rng = np.random.default_rng(0)
        docs: list[str] = []
        for rows in self.store.iter_rows(batch=2000):
            for r in rows:
                if keep >= 1.0 or rng.random() < keep:
                    docs.append("\n".join(t.text for t in _texts(r)))
            if progress:
                progress("lexical sample", min(len(docs), total), total)
        try:
            model = LexicalModel.fit(docs, dim=self.config.lexical_dim)
        except ValueError as exc:
            log.warning("Lexical - not fitted (%s); rebuild-index fits it later", exc)
            return None
        model.save(self.config.data_dir / LEXICAL_DIR)
        return model

    def _reencode(self, enc: UserEncoder, *, reembed: bool, progress: Progress | None) -> None:
        """Recompute every stored user vector (and text vector, if `reembed`).

        While this runs, the stored vectors are a mix of old and new: the vector fingerprint
        is cleared first, so a crash here is finished by the next start.
        """
        self.store.set_meta("vector_fingerprint", "recomputing")
        if reembed:
            self.store.set_meta("text_fingerprint", "recomputing")
        total, done = self.store.count(), 0
        for rows in self.store.iter_rows(batch=512):
            texts = [_texts(r) for r in rows]
            if reembed:
                text_vecs = enc.text_vectors(texts)
            else:
                text_vecs = [None if r.text_vec is None else _vec(r.text_vec) for r in rows]
            lex_vecs = enc.lexical_vectors(texts)
            updates = []
            for r, tv, lv in zip(rows, text_vecs, lex_vecs):
                if r.own_vec:  # a vector the profile brought is kept as given
                    updates.append((r.iid, r.text_vec, r.vec))
                    continue
                pending: list[tuple[str, str, int]] = []
                vec = enc.combine(tv, lv, enc.attribute_vector(r.attributes, pending))
                if pending:  # values learned under new settings
                    self.store.upsert([], pending)
                if not vec.any() and len(r.vec) == 4 * enc.dim:
                    vec = _vec(r.vec)  # a precomputed vector, or attributes no longer used
                updates.append((r.iid, None if tv is None else _f32(tv), _f32(vec)))
            self.store.rewrite_vectors(updates)
            done += len(rows)
            if progress:
                progress("embed" if reembed else "recombine", done, total)
        self.store.set_meta("text_fingerprint", self.text_fingerprint)
        self.store.set_meta("vector_fingerprint", self._fingerprint_of(enc))

    def save(self) -> int:
        """Write an index generation if anything changed since the last one."""
        with self._writer:
            return self._save_locked()

    def _save_locked(self) -> int:
        if self._unsaved == 0 and self._generation:
            return self._generation
        if self._index_due():  # crossed the ANN threshold, or compaction is due
            index = self._build_index(None)  # readers keep the old index meanwhile
            with self._rw.write():
                self._index = index
        with self._rw.read():
            seq = self.store.sequence
            manifest = self.generations.save(
                self._index, sequence=seq, fingerprint=self.fingerprint
            )
        self._generation = manifest.generation
        self._unsaved = 0
        log.info("Index - saved generation %d (%d vectors)", manifest.generation, manifest.count)
        return manifest.generation

    def close(self) -> None:
        if self._closed:
            return
        self.save()
        self._closed = True
        self.store.close()

    # ================================================================== writes

    def upsert(self, profiles: Sequence[Profile]) -> tuple[int, int]:
        """Insert or replace profiles. Returns (users written, store sequence)."""
        self._check_batch(profiles, "profiles")
        latest = {p.user_id: p for p in profiles}  # a repeated id: the last one wins
        batch = list(latest.values())
        text_vecs = self.encoder.text_vectors(
            [p.texts if not p.vector else () for p in batch]
        )  # the slow part, outside every lock
        with self._writer:
            enc = self.encoder  # a rebuild (which holds the writer lock) may have replaced it
            lex_vecs = enc.lexical_vectors([p.texts if not p.vector else () for p in batch])
            pending: list[tuple[str, str, int]] = []
            rows, vecs = [], []
            try:
                for i, (p, tv, lv) in enumerate(zip(batch, text_vecs, lex_vecs)):
                    if p.vector:
                        vec = _unit(p.vector)
                    else:
                        vec = enc.combine(tv, lv, enc.attribute_vector(p.attributes, pending))
                    if not vec.any():
                        raise InvalidQuery(
                            f"profiles[{i}]",
                            "needs at least one text or an attribute declared in the schema "
                            f"(declared: {[a.name for a in self.config.attributes or ()]})",
                        )
                    vecs.append(vec)
                    rows.append(
                        UserRow(
                            user_id=p.user_id,
                            texts_json=json.dumps(
                                [[t.text, t.weight, t.timestamp] for t in p.texts],
                                ensure_ascii=False,
                            ),
                            attributes_json=json.dumps(p.attributes, ensure_ascii=False),
                            text_vec=None if tv is None else _f32(tv),
                            vec=_f32(vec),
                            own_vec=bool(p.vector),
                        )
                    )
                seq, iids = self.store.upsert(rows, pending)
            except BaseException:
                self.encoder.vocabulary.forget(pending)
                raise
            ids = np.array(iids, dtype=np.int64)
            with self._rw.write():
                self._index.remove(ids)
                self._index.add(ids, np.stack(vecs))
                for p, iid in zip(batch, iids):
                    self._iid_of[p.user_id] = iid
                    self._uid_of.set(iid, p.user_id)
                    self._attrs.set(iid, p.attributes)
            self._after_write(len(batch))
        return len(batch), seq

    def delete(self, user_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Erase users from the store and the index. Returns (deleted, ids not stored)."""
        self._check_ids(user_ids, "user_ids")
        with self._writer:
            _, found = self.store.delete(user_ids)
            ids = np.array([iid for _, iid in found], dtype=np.int64)
            with self._rw.write():
                self._index.remove(ids)
                for uid, iid in found:
                    self._iid_of.pop(uid, None)
                    self._uid_of.pop(iid)
                    self._attrs.remove(iid)
                    self._segment_of.pop(iid, None)
            self._after_write(len(found))
        gone = {uid for uid, _ in found}
        return len(found), [u for u in dict.fromkeys(user_ids) if u not in gone]

    def _after_write(self, changes: int) -> None:
        self._unsaved += changes
        # Every generation is a whole index file, so at scale save once a tenth has changed
        # (the writes since are in the store and replayed at the next start).
        if self._unsaved >= max(self.config.save_every_changes, len(self._index) // 10):
            self._save_locked()

    def rebuild_index(self, *, reembed: bool = False, progress: Progress | None = None) -> dict:
        """Refit the lexical model on the stored texts, recompute every user vector (embedding
        the texts again if asked), build a new index and swap encoder and index in atomically;
        save it as a new generation. Readers use the old pair until the swap; writers wait."""
        t0 = time.perf_counter()
        with self._writer:
            log.info("Rebuild - Start (reembed=%s)", reembed)
            enc = self.encoder
            if self.config.lexical_dim and self.store.count():
                enc = enc.with_lexical(self._fit_lexical(progress) or enc.lexical)
            self._reencode(enc, reembed=reembed, progress=progress)
            index = self._build_index(progress)
            with self._rw.write():
                self._index = index
                self.encoder = enc
            self._unsaved = max(1, len(index))
            generation = self._save_locked()
            log.info("Rebuild - Completed: %d users in %.1fs", len(index), time.perf_counter() - t0)
        return {"users": len(index), "generation": generation, "seconds": time.perf_counter() - t0}

    def snapshot(self) -> tuple[int, Path]:
        """A consistent copy of the store and the current index generation under snapshots/."""
        with self._writer:
            generation = self._save_locked()
            stamp = time.strftime("%Y%m%dT%H%M%S")
            target = self.config.data_dir / SNAPSHOT_DIR / f"snapshot-{stamp}-gen{generation:08d}"
            target.mkdir(parents=True, exist_ok=True)
            self.store.backup(target / STORE_FILE)
            for suffix in (".faiss", ".json"):
                src = self.generations.dir / f"gen-{generation:08d}{suffix}"
                shutil.copy2(src, target / src.name)
        log.info("Snapshot - written generation %d", generation)
        return generation, target

    # ================================================================== reads

    def get_user(self, user_id: str, *, include_vector: bool = False) -> StoredUser:
        self._check_user_id(user_id, "user_id")
        row = self.store.get(user_id)
        if row is None:
            raise UnknownUser([user_id])
        profile = Profile(user_id=row.user_id, texts=tuple(_texts(row)), attributes=row.attributes)
        return StoredUser(profile, row.vec if include_vector else b"", self.encoder.dim)

    def stats(self) -> Stats:
        with self._rw.read():
            lex = self.encoder.lexical
            return Stats(
                users=len(self._iid_of),
                indexed=len(self._index),
                dimension=self.encoder.dim,
                model=self.encoder.embedder.model_id,
                index_type=self._index.kind,
                generation=self._generation,
                sequence=self.store.sequence,
                data_dir=str(self.config.data_dir),
                attributes=tuple(self._attrs.names),
                lexical_model=self.encoder.lexical_version,
                lexical_documents=lex.manifest.documents if lex is not None else 0,
                lexical_weight=self.encoder.lexical_share,
                warnings=tuple(self.warnings),
            )

    def estimate_reach(
        self,
        filters: Sequence[Filter],
        exclude_user_ids: Sequence[str] = (),
        segment_ids: Sequence[str] = (),
        exclude_segment_ids: Sequence[str] = (),
    ) -> tuple[int, int]:
        self._check_filters(filters)
        self._check_ids(exclude_user_ids, "exclude_user_ids")
        with self._rw.read():
            mask = self._attrs.mask(filters)
            self._segment_mask(mask, segment_ids, exclude_segment_ids)
            self._clear(mask, exclude_user_ids)
            return int(mask.sum()), len(self._iid_of)

    def find_lookalikes(self, query: LookalikeQuery) -> LookalikeResult:
        k_limit = self.limits.max_k
        if query.k is not None and query.k > k_limit:
            raise InvalidQuery(
                "k", f"must be at most {k_limit}; use StreamLookalikes for larger audiences"
            )
        users, eligible = self._lookalikes(query, k_limit)
        return LookalikeResult(users, eligible)

    def stream_lookalikes(
        self, query: LookalikeQuery, chunk: int = 1000
    ) -> tuple[int, Iterator[list[ScoredUser]]]:
        """(eligible, chunks best first) for audiences up to limits.max_stream_k."""
        if query.k is not None and query.k > self.limits.max_stream_k:
            raise InvalidQuery("k", f"must be at most {self.limits.max_stream_k}")
        users, eligible = self._lookalikes(query, self.limits.max_stream_k)
        return eligible, (users[i : i + chunk] for i in range(0, max(len(users), 1), chunk))

    def _lookalikes(self, query: LookalikeQuery, k_limit: int) -> tuple[list[ScoredUser], int]:
        self._check_query(query)
        seed_ids = [s.user_id for s in query.seeds if s.user_id is not None]
        # Seed vectors come from the index, under the same read lock as the search, so a
        # query never mixes vectors from before and after a rebuild.
        with self._rw.read():
            iid_of = self._iid_of
            seed_iids = self._known_iids(seed_ids, "seeds")
            negative_iids = self._known_iids(query.negative_user_ids, "negative_user_ids")
            stored = self._user_vectors(np.array(seed_iids, np.int64)).astype(np.float64)
            w = np.array([s.weight for s in query.seeds], dtype=np.float64)
            if len(seed_ids) < len(query.seeds):  # text seeds too: in the order given
                rows, n_stored = [], 0
                for seed in query.seeds:
                    if seed.user_id is not None:
                        rows.append(stored[n_stored])
                        n_stored += 1
                    else:
                        rows.append(self.encoder.query_vector(seed.text or ""))
                stored = np.stack(rows).astype(np.float64)
            q = (w @ stored) / w.sum()
            if query.negative_user_ids:
                neg = self._user_vectors(np.array(negative_iids, np.int64)).mean(axis=0)
                q = q - query.negative_weight * neg
            norm = float(np.linalg.norm(q))
            if not norm > 1e-6:
                raise InvalidQuery("seeds", "the seeds (less the negative users) have no direction")
            q = (q / norm).astype(np.float32)

            excluded = [*query.exclude_user_ids, *query.negative_user_ids]
            if not query.include_seeds:
                excluded += seed_ids
            # Only a few users excluded (the seeds, say) and no filter: search k + that many
            # and drop them after, rather than filtering a bitmap of every user.
            few = not (query.filters or query.segment_ids or query.exclude_segment_ids) and (
                len(excluded) <= POST_FILTER_MAX
            )
            if few:
                mask = None
                dropped = {iid_of[u] for u in excluded if u in iid_of}
                removed = len(dropped)
                eligible = len(iid_of) - removed
            else:
                mask = self._attrs.mask(query.filters)
                self._segment_mask(mask, query.segment_ids, query.exclude_segment_ids)
                removed = self._clear(mask, excluded)
                eligible = int(mask.sum())
            if query.k is not None:
                k = query.k
            else:
                k = math.ceil((query.fraction or 0.0) * eligible)
                if k > k_limit:
                    raise LimitExceeded("fraction", k, k_limit)
            k = min(k, eligible)
            if k == 0:
                return [], eligible
            fetch = k + removed if few else k
            refine = self._index.lossy and fetch <= REFINE_MAX_K
            scores, ids = self._index.search(
                q[None, :],
                fetch * REFINE_FACTOR if refine else fetch,
                mask,
                effort=query.search_effort,
                exact=query.exact,
            )
            if refine:
                scores, ids = self._rerank(q, ids[0])
            scores, ids = scores[0], ids[0]
            keep = ids >= 0
            if few and dropped:  # a set lookup each: np.isin costs 6x as much at this size
                keep[[j for j, i in enumerate(ids.tolist()) if i in dropped]] = False
            if query.min_score is not None:
                keep &= scores >= query.min_score
            scores, ids = scores[keep][:k], ids[keep][:k]
            users = scored_users(self._uid_of.take(ids), scores.tolist())
        return users, eligible

    def _known_iids(self, user_ids: Sequence[str], field: str) -> list[int]:
        """iids of these users, each looked up once (the map is large); UnknownUser naming
        the ones not stored."""
        iid_of = self._iid_of
        iids = [iid_of.get(u, -1) for u in user_ids]
        if -1 in iids:
            raise UnknownUser([u for u, i in zip(user_ids, iids) if i < 0], field=field)
        return iids

    def _stored_vectors(self, iids: Iterable[int]) -> tuple[list[int], np.ndarray]:
        """(the iids still stored, in order; their exact vectors from the store)."""
        wanted = [int(i) for i in iids]
        found = self.store.vectors(wanted)
        present = [i for i in wanted if i in found]
        return present, _matrix([found[i] for i in present], self._index.dim)

    def _user_vectors(self, iids: np.ndarray) -> np.ndarray:
        """Vectors of indexed users: the index's own, or the exact stored ones when the index
        keeps only lossy codes."""
        if self._index.lossy:
            present, vectors = self._stored_vectors(iids)
            if len(present) == len(iids):
                return vectors
        return self._index.vectors(iids)

    def _all_user_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(iids, vectors) of every indexed user, exact even when the index is lossy."""
        if not self._index.lossy:
            return self._index.all_vectors()
        indexed = self._index.ids()
        vectors = np.empty((len(indexed), self._index.dim), np.float32)
        found, n = [], 0
        for ids, blobs in self.store.iter_vectors():  # unique iids: at most len(indexed) kept
            keep = np.isin(ids, indexed)
            found.append(ids[keep])
            vectors[n : n + len(found[-1])] = _matrix(blobs, self._index.dim)[keep]
            n += len(found[-1])
        return np.concatenate(found) if found else np.zeros(0, np.int64), vectors[:n]

    def _rerank(self, q: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of a lossy index scored again with their exact stored vectors, best
        first (as one query's (scores, ids) rows)."""
        iids, vectors = self._stored_vectors(i for i in candidates if i >= 0)  # deleted: gone
        if not iids:
            return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
        scores = vectors @ q
        order = np.argsort(-scores, kind="stable")
        return scores[order][None, :], np.array(iids, np.int64)[order][None, :]

    def _clear(self, mask: np.ndarray, user_ids: Sequence[str]) -> int:
        """Unset the given users in the mask; returns how many were set."""
        iids = [self._iid_of[u] for u in user_ids if u in self._iid_of]
        if not iids:
            return 0
        idx = np.array(iids, dtype=np.int64)
        n = int(mask[idx].sum())
        mask[idx] = False
        return n

    # ================================================================== segments

    def _install_segments(self, model: SegmentModel) -> None:
        """Serve this model; members erased since it was built are left out."""
        alive = [
            (int(i), (int(lab), float(st)))
            for i, lab, st in zip(model.member_iids, model.member_labels, model.member_strength)
            if int(i) in self._uid_of
        ]
        with self._rw.write():
            self._segments = model
            self._segment_of = dict(alive)

    def _model(self) -> SegmentModel:
        model = self._segments
        if model is None:
            raise SegmentsNotBuilt(
                "no segments have been built yet; run `audience segments build` "
                "(or call Admin.BuildSegments)"
            )
        return model

    def build_segments(
        self, params: SegmentParams | None = None, progress: Progress | None = None
    ) -> dict:
        """Cluster the indexed users into segments, describe them, keep ids stable, and swap
        the new model in. Writes go on meanwhile; users written after the snapshot of the
        vectors are assigned on demand until the next build."""
        params = params or SegmentParams()
        if not self._build_lock.acquire(blocking=False):
            raise PreconditionFailed("a segment build is already running")
        try:
            return self._build_segments(params, progress)
        finally:
            self._build_lock.release()

    def _build_segments(self, params: SegmentParams, progress: Progress | None) -> dict:
        t0 = time.perf_counter()
        log.info("Segments - Start")
        with self._rw.read():
            iids, vectors = self._all_user_vectors()
            previous = self._segments
            uid_of = dict(self._uid_of.items())
        if len(iids) < 20:
            raise PreconditionFailed(f"segments need at least 20 users; {len(iids)} are stored")
        enc = self.encoder
        if not params.use_attributes and enc.attr_dim:
            params = replace(params, dims_used=enc.text_dim + enc.lex_dim)
        clustering = fit_clusters(vectors, params, progress)
        labels = clustering.labels
        del vectors

        # Stable ids: match to the previous model's segments by member overlap.
        new_members = {
            int(lab): np.sort(iids[labels == lab]) for lab in np.unique(labels) if lab >= 0
        }
        old_members: dict[str, np.ndarray] = {}
        next_number = 1
        if previous is not None:
            next_number = int(previous.stats.get("next_number", 1))
            for seg in previous.segments:
                mem = previous.member_iids[previous.member_labels == seg.label]
                old_members[seg.segment_id] = np.sort(mem)
        id_of, status, lineage, next_number = match_segments(new_members, old_members, next_number)

        # Describe on a uniform sample of users (texts and attributes come from the store).
        t1 = time.perf_counter()
        rng = np.random.default_rng(params.seed)
        pick = np.sort(rng.choice(len(iids), size=min(len(iids), 30_000), replace=False))
        rows = self.store.texts_and_attributes(iids[pick])
        keep = [j for j in pick if int(iids[j]) in rows]
        docs = ["\n".join(t[0] for t in rows[int(iids[j])][0]) for j in keep]
        attrs = [rows[int(iids[j])][1] for j in keep]
        described = describe_segments(
            labels[keep], docs, attrs, min_group_size=self.config.segment_min_group_size
        )
        if progress:
            progress("describe", 1, 1)

        segments = []
        n = len(iids)
        for lab, members in new_members.items():
            rows_of = np.flatnonzero(labels == lab)
            z = clustering.coords[rows_of]
            centre = z.mean(axis=0)
            centre /= np.linalg.norm(centre) or 1.0
            sims = z @ centre
            top = rows_of[np.argsort(-sims)[:5]]
            d = described.get(lab)
            segments.append(
                Segment(
                    segment_id=id_of[lab],
                    label=lab,
                    size=len(members),
                    share=len(members) / n,
                    keywords=d.keywords if d else [],
                    exemplar_user_ids=[uid_of[int(iids[j])] for j in top if int(iids[j]) in uid_of],
                    persistence=clustering.persistence.get(lab, 0.0),
                    cohesion=round(float(sims.mean()), 4),
                    status=status[lab][0],
                    parents=status[lab][1],
                    attribute_profile=d.attribute_profile if d else {},
                )
            )
        segments.sort(key=lambda s: -s.size)
        outliers = float((labels < 0).mean())
        t_describe = time.perf_counter() - t1
        stats = {
            "users": n,
            "fit_users": len(clustering.fit_index),
            "segments": len(segments),
            "outlier_share": round(outliers, 4),
            "seconds": round(time.perf_counter() - t0, 2),
            "next_number": next_number,
            **{k: round(v, 2) for k, v in clustering.timings.items()},
            "describe_s": round(t_describe, 2),
        }
        build_number = int(previous.stats.get("build", 0)) + 1 if previous else 1
        stats["build"] = build_number
        version = f"v{build_number:06d}-{time.strftime('%Y%m%dT%H%M%S')}"  # sorts by build
        model = SegmentModel(
            version=version,
            params=params,
            segments=segments,
            pca_mean=clustering.pca_mean,
            pca_components=clustering.pca_components,
            fit_coords=clustering.fit_coords,
            fit_labels=clustering.fit_labels,
            member_iids=iids,
            member_labels=labels,
            member_strength=clustering.strength,
            lineage=lineage,
            stats=stats,
        )
        model.save(self.config.data_dir / SEGMENTS_DIR)
        self._install_segments(model)
        log.info(
            "Segments - Completed: %d segments, %.1f%% outliers, %.1fs",
            len(segments),
            100 * outliers,
            time.perf_counter() - t0,
        )
        return {"model_version": version, **stats}

    def list_segments(self) -> tuple[str, list[Segment]]:
        model = self._model()
        return model.version, list(model.segments)

    def get_segment(self, segment_id: str) -> Segment:
        model = self._model()
        seg = model.by_id.get(segment_id)
        if seg is None:
            raise UnknownSegment(f"segment_id: unknown segment {segment_id!r}")
        return seg

    def user_segments(self, user_ids: Sequence[str]) -> list[tuple[str, str, float, bool]]:
        """(user_id, segment_id or "", strength, outlier) per user. Users written after the
        last build are assigned from their current vector."""
        self._check_ids(user_ids, "user_ids")
        model = self._model()
        with self._rw.read():
            missing = [u for u in user_ids if u not in self._iid_of]
            if missing:
                raise UnknownUser(missing, field="user_ids")
            out: list[tuple[str, str, float, bool] | None] = []
            todo = []
            for i, uid in enumerate(user_ids):
                hit = self._segment_of.get(self._iid_of[uid])
                if hit is None:
                    todo.append(i)
                    out.append(None)
                else:
                    out.append(self._membership(model, uid, *hit))
            if todo:
                vecs = self._user_vectors(
                    np.array([self._iid_of[user_ids[i]] for i in todo], np.int64)
                )
                labels, strength = model.assign(vecs)
                for i, lab, st in zip(todo, labels, strength):
                    out[i] = self._membership(model, user_ids[i], int(lab), float(st))
        return [o for o in out if o is not None]

    @staticmethod
    def _membership(model: SegmentModel, uid: str, label: int, strength: float):
        seg = model.by_label.get(label)
        return (uid, seg.segment_id if seg else "", strength, seg is None)

    def assign_segments(self, profiles: Sequence[Profile]) -> list[tuple[str, str, float, bool]]:
        """Segments for profiles that are not stored: encoded as an upsert would, not stored."""
        self._check_batch(profiles, "profiles")
        model = self._model()
        text_vecs = self.encoder.text_vectors([p.texts if not p.vector else () for p in profiles])
        enc = self.encoder
        lex = enc.lexical_vectors([p.texts if not p.vector else () for p in profiles])
        vecs = []
        for p, tv, lv in zip(profiles, text_vecs, lex):
            if p.vector:
                vecs.append(_unit(p.vector))
            else:
                vecs.append(enc.combine(tv, lv, enc.attribute_vector(p.attributes, [])))
        labels, strength = model.assign(np.stack(vecs))
        return [
            self._membership(model, p.user_id, int(lab), float(st))
            for p, lab, st in zip(profiles, labels, strength)
        ]

    def segment_members(self, segment_id: str, chunk: int = 1000) -> Iterator[list[ScoredUser]]:
        """Members of a segment, strongest first, in chunks."""
        seg = self.get_segment(segment_id)
        with self._rw.read():
            members = [
                (st, self._uid_of[iid])
                for iid, (lab, st) in self._segment_of.items()
                if lab == seg.label and iid in self._uid_of
            ]
        members.sort(key=lambda m: (-m[0], m[1]))
        users = [ScoredUser(uid, st) for st, uid in members]
        return (users[i : i + chunk] for i in range(0, max(len(users), 1), chunk))

    def _segment_mask(self, mask: np.ndarray, include: Sequence[str], exclude: Sequence[str]):
        """Restrict a user mask to members of `include` (if any) and not of `exclude`."""
        if not include and not exclude:
            return
        model = self._model()
        for field, ids in (("segment_ids", include), ("exclude_segment_ids", exclude)):
            unknown = [s for s in ids if s not in model.by_id]
            if unknown:
                raise UnknownSegment(f"{field}: unknown segment {unknown[0]!r}")
        inc = {model.by_id[s].label for s in include}
        exc = {model.by_id[s].label for s in exclude}
        member = np.zeros(len(mask), bool)
        blocked = np.zeros(len(mask), bool)
        for iid, (lab, _) in self._segment_of.items():
            if iid < len(mask):
                member[iid] = lab in inc
                blocked[iid] = lab in exc
        if include:
            mask &= member
        mask &= ~blocked

    # ================================================================== validation

    def _check_batch(self, profiles: Sequence[Profile], field: str) -> None:
        lim = self.limits
        if not profiles:
            raise InvalidQuery(field, "at least one profile is required")
        if len(profiles) > lim.max_batch_users:
            raise LimitExceeded(field, len(profiles), lim.max_batch_users)
        for i, p in enumerate(profiles):
            where = f"{field}[{i}]"
            self._check_user_id(p.user_id, f"{where}.user_id")
            if len(p.texts) > lim.max_texts_per_user:
                raise LimitExceeded(f"{where}.texts", len(p.texts), lim.max_texts_per_user)
            for j, t in enumerate(p.texts):
                size = len(t.text.encode("utf-8", "surrogatepass"))
                if size > lim.max_text_bytes:
                    raise LimitExceeded(
                        f"{where}.texts[{j}].text (bytes)", size, lim.max_text_bytes
                    )
                if not t.text.strip():
                    raise InvalidQuery(f"{where}.texts[{j}].text", "must not be empty")
                if not (math.isfinite(t.weight) and t.weight > 0):
                    raise InvalidQuery(f"{where}.texts[{j}].weight", "must be finite and > 0")
                if t.timestamp < 0:
                    raise InvalidQuery(f"{where}.texts[{j}].timestamp", "must be >= 0")
            if len(p.attributes) > lim.max_attributes_per_user:
                raise LimitExceeded(
                    f"{where}.attributes", len(p.attributes), lim.max_attributes_per_user
                )
            for name, value in p.attributes.items():
                if not name or len(name) > 128:
                    raise InvalidQuery(f"{where}.attributes", "names must be 1 to 128 characters")
                if isinstance(value, float) and not math.isfinite(value):
                    raise InvalidQuery(f"{where}.attributes[{name!r}]", "must be finite")
                if isinstance(value, str) and len(value) > 1024:
                    raise InvalidQuery(f"{where}.attributes[{name!r}]", "at most 1024 characters")
            if p.vector:
                dim = self.encoder.dim
                if len(p.vector) != 4 * dim:
                    raise InvalidQuery(
                        f"{where}.vector",
                        f"must be {dim} float32 values ({4 * dim} bytes), "
                        f"got {len(p.vector)} bytes",
                    )
                with np.errstate(all="ignore"):
                    v = _vec(p.vector).astype(np.float64)
                    norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else math.nan
                if not (math.isfinite(norm) and norm > 0):
                    raise InvalidQuery(f"{where}.vector", "must be finite and not all zero")

    def _check_user_id(self, user_id: str, field: str) -> None:
        if not user_id:
            raise InvalidQuery(field, "must not be empty")
        if len(user_id.encode("utf-8", "surrogatepass")) > self.limits.max_user_id_bytes:
            raise InvalidQuery(field, f"must be at most {self.limits.max_user_id_bytes} bytes")
        if not (user_id.isascii() and user_id.isprintable()) and any(
            unicodedata.category(c) in ("Cc", "Cs") for c in user_id
        ):
            raise InvalidQuery(field, "must not contain control characters or lone surrogates")

    def _check_ids(self, user_ids: Sequence[str], field: str) -> None:
        if len(user_ids) > self.limits.max_ids_per_request:
            raise LimitExceeded(field, len(user_ids), self.limits.max_ids_per_request)
        for i, u in enumerate(user_ids):
            self._check_user_id(u, f"{field}[{i}]")

    def _check_filters(self, filters: Sequence[Filter]) -> None:
        if len(filters) > self.limits.max_filters:
            raise LimitExceeded("filters", len(filters), self.limits.max_filters)
        for i, f in enumerate(filters):
            where = f"filters[{i}]"
            if not f.attribute:
                raise InvalidQuery(f"{where}.attribute", "must not be empty")
            kinds = (f.equals is not None) + (f.any_of is not None) + f.is_range
            if kinds != 1:
                raise InvalidQuery(where, "needs exactly one of equals, range, any_of")
            if f.is_range:
                for name in ("gte", "gt", "lte", "lt"):
                    v = getattr(f, name)
                    if v is not None and not math.isfinite(v):
                        raise InvalidQuery(f"{where}.range.{name}", "must be finite")
            values = [f.equals] if f.equals is not None else list(f.any_of or ())
            if f.any_of is not None and not values:
                raise InvalidQuery(f"{where}.any_of", "must list at least one value")
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise InvalidQuery(where, "values must be finite")

    def _check_query(self, q: LookalikeQuery) -> None:
        lim = self.limits
        if not q.seeds:
            raise InvalidQuery("seeds", "at least one seed (user id or text) is required")
        if len(q.seeds) > lim.max_seeds:
            raise LimitExceeded("seeds", len(q.seeds), lim.max_seeds)
        for i, s in enumerate(q.seeds):
            if (s.user_id is None) == (s.text is None):
                raise InvalidQuery(f"seeds[{i}]", "needs exactly one of user_id or text")
            if s.user_id is not None:
                self._check_user_id(s.user_id, f"seeds[{i}].user_id")
            elif not (s.text or "").strip():
                raise InvalidQuery(f"seeds[{i}].text", "must not be empty")
            elif len(s.text.encode("utf-8", "surrogatepass")) > lim.max_text_bytes:  # type: ignore[union-attr]
                raise LimitExceeded(
                    f"seeds[{i}].text (bytes)",
                    len(s.text.encode("utf-8", "surrogatepass")),
                    lim.max_text_bytes,
                )  # type: ignore[union-attr]
            if not (math.isfinite(s.weight) and s.weight > 0):
                raise InvalidQuery(f"seeds[{i}].weight", "must be finite and > 0")
        if (q.k is None) == (q.fraction is None):
            raise InvalidQuery("k", "give exactly one of k or fraction")
        if q.k is not None and q.k < 1:
            raise InvalidQuery("k", "must be at least 1")
        if q.fraction is not None and not (math.isfinite(q.fraction) and 0 < q.fraction <= 1):
            raise InvalidQuery("fraction", "must be in (0, 1]")
        if not (math.isfinite(q.negative_weight) and q.negative_weight >= 0):
            raise InvalidQuery("negative_weight", "must be finite and >= 0")
        if q.min_score is not None and not math.isfinite(q.min_score):
            raise InvalidQuery("min_score", "must be finite")
        self._check_ids(q.negative_user_ids, "negative_user_ids")
        self._check_ids(q.exclude_user_ids, "exclude_user_ids")
        self._check_filters(q.filters)


def _texts(row: StoredRow) -> list[TextItem]:
    return [TextItem(t, float(w), int(ts)) for t, w, ts in row.texts]
