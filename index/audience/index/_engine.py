"""The engine: a short facade over the parts (see docs/architecture.md): lifecycle, locks, and
typed results for the server.

    Catalog            what is stored and served (_catalog.py)
    ProfileEncoder     profiles -> user vectors (_encode/)
    LookalikeScorer    seeds -> audience (_lookalike.py)
    SegmentBuilder     user vectors -> segment model (_segments/, _segmenting.py)
    Predicting         attributes learned from the users who have them (_predicting.py)
    Validator          every check on a request (_validate.py)

Locks: searches share the read lock; a change to what is served is swapped in under the write
lock (a reader sees the old state or the new one). Writes are durable in SQLite first; one
writer (upsert, delete, rebuild, save) and one segment build (writes go on) at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from . import _erasure as erasure
from ._backup import BackupResult, write_backup
from ._catalog import Catalog, membership
from ._config import EngineConfig
from ._durable import AfterCommit, disk_full_as
from ._encode import ProfileEncoder, TextEmbedder
from ._errors import PreconditionFailed
from ._jobs import JOBS_DIR, JobRunner, uncancellable
from ._lookalike import LookalikeScorer, SeedStrategy
from ._predicting import Predicting
from ._publish import Published, publish_generation
from ._recovery import open_data_dir
from ._refit import reencode_store, with_refitted_lexical
from ._rwlock import EngineLocks, RWLock
from ._segmenting import build_and_serve
from ._segments import Placer, Segment, SegmentBuild, SegmentList, SegmentParams
from ._types import (
    DeleteResult,
    Filter,
    FitResult,
    LookalikeQuery,
    LookalikeResult,
    LookalikeStream,
    Membership,
    PredictorInfo,
    PredictQuery,
    Profile,
    Progress,
    ReachEstimate,
    RebuildResult,
    ScoredUsers,
    SeedDiagnostics,
    SnapshotResult,
    Stats,
    StoredUser,
    UpsertResult,
    UserPrediction,
)
from ._validate import Validator

log = logging.getLogger("audience.index")
RETRY_AFTER_S = 30.0  # work after a commit that failed (saving a generation) waits this long
SAVING = "saving an index generation"


class Engine:
    """Open with `Engine.open(config)`; close with `close()` (saves an index generation)."""

    def __init__(
        self,
        config: EngineConfig,
        catalog: Catalog,
        encoder: ProfileEncoder,
        strategy: SeedStrategy | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.encoder = encoder
        self.validate = Validator(config.limits, encoder.dim)
        self._strategy = strategy
        self._scorer = LookalikeScorer(catalog, encoder, strategy)
        self._rw = RWLock()
        self._writer = threading.Lock()
        self._build_lock = threading.Lock()
        self._closed = False
        self._later = AfterCommit(catalog.pending, RETRY_AFTER_S)  # work after a commit
        self.jobs = JobRunner(config.data_dir / JOBS_DIR)  # long jobs run by the server
        self._locks = EngineLocks(self._rw, self._writer)
        self._predicting = Predicting(catalog, config.data_dir, self._locks)

    @classmethod
    def open(
        cls,
        config: EngineConfig,
        *,
        embedder: TextEmbedder | None = None,
        progress: Progress | None = None,
        strategy: SeedStrategy | None = None,
    ) -> Engine:
        """Open (or create) the data dir `config.data_dir` and load what it serves.
        `strategy`: how seeds are combined (default: the weighted centroid)."""
        t0 = time.perf_counter()
        opened = open_data_dir(config, embedder, progress)
        engine = cls(opened.config, opened.catalog, opened.encoder, strategy)
        loaded = engine._predicting.load(engine.encoder)  # damaged or stale: refitted in a job
        engine._refit_later(sorted(set(loaded.refit)), everything=loaded.refit_all)
        n, seconds = len(engine.catalog.iid_of), time.perf_counter() - t0
        log.info("Engine - Ready: %d users in %.1fs", n, seconds)
        return engine

    def _swap_encoder(self, encoder: ProfileEncoder) -> None:
        """(under the write lock) Serve with another encoder."""
        self.encoder = encoder
        self._scorer = LookalikeScorer(self.catalog, encoder, self._strategy)

    # ------------------------------------------------------------ lifecycle

    def save(self) -> int:
        """Write an index generation if anything changed since the last one."""
        with self._writer:
            return self._save_locked()

    def _save_locked(self) -> int:
        catalog = self.catalog
        if catalog.unsaved == 0 and catalog.generation:
            return catalog.generation
        with disk_full_as("index generation not saved; the store has every write"):
            if catalog.policy.rebuild_due(catalog.index):  # ANN threshold crossed, compaction
                index = catalog.build_index()  # readers keep the old index meanwhile
                with self._rw.write():
                    catalog.index = index
            with self._rw.read():
                return catalog.save_generation(self.encoder.fingerprint)

    def close(self) -> None:
        if self._closed:
            return
        self.jobs.close()  # cancelled; what they would have replaced is still served
        self._later.run("saving the index at close", self.save)
        self._closed = True
        self.catalog.close()

    def _after_write(self) -> None:
        # Every generation is a whole index file, so at scale save once a tenth has changed
        # (the writes since are in the store and replayed at the next start).
        c = self.catalog
        if not self._later.due():
            return
        if c.unsaved >= max(self.config.save_every_changes, len(c.index) // 10):
            self._later.run(SAVING, self._save_locked)
        if erasure.ERASING in c.pending:
            self._later.run(erasure.ERASING, partial(erasure.reach_copies, c))

    # ------------------------------------------------------------ writes

    def upsert(self, profiles: Sequence[Profile], text_fingerprint: str = "") -> UpsertResult:
        """Insert or replace profiles; a repeated id: the last one wins. Text vectors a batch
        worker computed are used when `text_fingerprint` is this encoder's."""
        self.validate.profiles(profiles)
        self.encoder.check_text_vectors(profiles, text_fingerprint)
        batch = self.encoder.derived({p.user_id: p for p in profiles}.values())
        embedded = self.encoder.embed_texts(batch)  # the slow part, outside every lock
        with self._writer:
            # the encoder now: a rebuild (which holds the writer lock) may have replaced it
            encoded = self.encoder.encode(batch, embedded).require_signal(self.config)
            seq, iids = self.catalog.store.upsert(encoded.rows, encoded.vocabulary)
            self.encoder.vocabulary.learn(encoded.vocabulary)
            with self._rw.write():
                self.catalog.put(iids, batch, encoded.vectors)
            self._after_write()
        return UpsertResult(len(batch), seq)

    def delete(self, user_ids: Sequence[str]) -> DeleteResult:
        """Erase users from the store, the index and segment membership."""
        self.validate.ids(user_ids, "user_ids")
        with self._writer:
            _, found = self.catalog.store.delete(user_ids)
            gone = {uid for uid, _ in found}
            with self._rw.write():
                self.catalog.drop(found)
                if self.catalog.segments is not None:
                    erasure.withdraw_from_served(self.catalog.segments, gone)
            if found:  # the erasure reaches the saved segment models and the snapshots
                self._later.run(erasure.ERASING, partial(erasure.reach_copies, self.catalog))
            self._after_write()
        return DeleteResult(len(found), [u for u in dict.fromkeys(user_ids) if u not in gone])

    def rebuild_index(
        self, *, reembed: bool = False, progress: Progress | None = None
    ) -> RebuildResult:
        """Refit the lexical model on the stored texts, recompute every user vector (embedding
        the texts again if asked), build a new index and swap encoder and index in atomically;
        save it as a new generation. Readers use the old pair until the swap; writers wait."""
        t0 = time.perf_counter()
        catalog = self.catalog
        with self._writer:
            log.info("Rebuild - Start (reembed=%s)", reembed)
            # a cancel stops it until here: the stored vectors must not be left mixed
            enc = with_refitted_lexical(self.encoder, catalog.store, self.config, progress)
            with uncancellable(), disk_full_as("index not rebuilt; the previous one is served"):
                reencode_store(catalog.store, enc, reembed=reembed, progress=progress)
                index = catalog.build_index(progress)
                with self._rw.write():
                    catalog.index = index
                    self._swap_encoder(enc)
                    stale = self._predicting.stale(enc)  # fitted in the old vector space
            catalog.unsaved = max(1, len(index))
            generation = self._save_locked()
            seconds = time.perf_counter() - t0
            log.info("Rebuild - Completed: %d users in %.1fs", len(index), seconds)
        self._refit_later(stale)
        return RebuildResult(len(index), generation, seconds)

    def backup(self, out: Path, progress: Progress | None = None) -> BackupResult:
        """A consistent, checksummed copy of what a server needs, in `out` (_backup.py)."""
        with self._writer, disk_full_as("backup not written"):
            self._save_locked()
            return write_backup(self.catalog, self.encoder.fingerprint, out, progress)

    def publish(self, source: Path, keep: int = 2, progress: Progress | None = None) -> Published:
        """The next generation for read replicas, written into `source` (_publish.py)."""
        with self._writer, disk_full_as("generation not published; replicas keep the last"):
            self._save_locked()
            c, fp = self.catalog, self.encoder.fingerprint
            return publish_generation(c, fp, source, keep, progress)

    def snapshot(self) -> SnapshotResult:
        """A consistent copy of the store and the current index generation under snapshots/."""
        with self._writer, disk_full_as("snapshot not written"):
            self._save_locked()
            return self.catalog.snapshot()

    # ------------------------------------------------------------ reads

    def get_user(self, user_id: str, *, include_vector: bool = False) -> StoredUser:
        self.validate.user_id(user_id, "user_id")
        return self.catalog.stored_user(user_id, include_vector, self.encoder.dim)

    def stats(self) -> Stats:
        with self._rw.read():
            return self.catalog.stats(self.encoder)

    def estimate_reach(
        self,
        filters: Sequence[Filter],
        exclude_user_ids: Sequence[str] = (),
        segment_ids: Sequence[str] = (),
        exclude_segment_ids: Sequence[str] = (),
    ) -> ReachEstimate:
        self.validate.filters(filters)
        self.validate.ids(exclude_user_ids, "exclude_user_ids")
        with self._rw.read():
            return self.catalog.reach(filters, exclude_user_ids, segment_ids, exclude_segment_ids)

    def find_lookalikes(self, query: LookalikeQuery) -> LookalikeResult:
        limit = self.config.limits.max_k
        self.validate.query(query, limit, "; use StreamLookalikes for larger audiences")
        with self._rw.read():
            return self._scorer.find(query, limit, with_attributes=True)

    def diagnose_seeds(self, query: LookalikeQuery) -> SeedDiagnostics:
        """The seeds' cohesion, interests, outliers and the held-out estimate of the query."""
        self.validate.query(query, self.config.limits.max_stream_k)
        with self._rw.read():
            return self._scorer.diagnose(query)

    def stream_lookalikes(self, query: LookalikeQuery, chunk: int = 1000) -> LookalikeStream:
        """The audience in chunks, best first, for sizes up to limits.max_stream_k."""
        limit = self.config.limits.max_stream_k
        self.validate.query(query, limit)
        with self._rw.read():
            found = self._scorer.find(query, limit)
        return self._scorer.chunked(found, query.include_attributes, chunk)

    # ------------------------------------------------------------ segments

    def build_segments(
        self,
        params: SegmentParams | None = None,
        progress: Progress | None = None,
        placer: Placer | None = None,
    ) -> SegmentBuild:
        """Cluster the indexed users into segments, describe them, keep ids stable, and swap
        the new model in (_segmenting.py). Writes go on meanwhile."""
        if not self._build_lock.acquire(blocking=False):
            raise PreconditionFailed("a segment build is already running")
        try:
            c, enc, locks = self.catalog, self.encoder, self._locks
            return build_and_serve(c, enc, self.config, locks, params, progress, placer)
        finally:
            self._build_lock.release()

    def list_segments(self) -> SegmentList:
        return SegmentList.of(self.catalog.segment_model())

    def get_segment(self, segment_id: str) -> Segment:
        return self.catalog.segment_model().node(segment_id)

    def user_segments(self, user_ids: Sequence[str]) -> list[Membership]:
        """The segment of each stored user (users written after the last build are placed
        from their current vector)."""
        self.validate.ids(user_ids, "user_ids")
        model = self.catalog.segment_model()
        with self._rw.read():
            return self.catalog.memberships(user_ids, model)

    def assign_segments(self, profiles: Sequence[Profile]) -> list[Membership]:
        """Segments for profiles that are not stored: encoded as an upsert would, not stored."""
        self.validate.profiles(profiles)
        model = self.catalog.segment_model()
        encoded = self.encoder.encode(self.encoder.derived(profiles))
        labels, strength, parts = model.place(encoded.vectors)
        return [
            membership(model, p.user_id, int(lab), float(st), int(part))
            for p, lab, st, part in zip(profiles, labels, strength, parts)
        ]

    def segment_members(
        self, segment_id: str, chunk: int = 1000, include_attributes: Sequence[str] = ()
    ) -> Iterator[ScoredUsers]:
        """Members of a segment, strongest first, in chunks (with these stored attributes)."""
        held = self.catalog.segment_model().holds(segment_id)  # one model, read once
        with self._rw.read():
            members = self.catalog.segment_members(held)
        with_attrs = partial(self.catalog.with_attributes, names=include_attributes)
        return map(with_attrs, members.chunks(chunk))

    # ------------------------------------------------------------ predictions

    def fit_predictors(
        self, attributes: Sequence[str] = (), progress: Progress | None = None
    ) -> FitResult:
        """Fit, save and serve a model per attribute (none named: each that can be)."""
        return self._predicting.fit(self.encoder, attributes, progress)

    def predictors(self) -> list[PredictorInfo]:
        return self._predicting.predictors()

    def predict(self, query: PredictQuery) -> list[UserPrediction]:  # users stored or not
        self.validate.predict(query)
        with self._rw.read():
            return self._predicting.predict(self.encoder, query)

    def _refit_later(self, attributes: Sequence[str], everything: bool = False) -> None:
        self._predicting.refit_later(self.jobs, self.fit_predictors, attributes, everything)
