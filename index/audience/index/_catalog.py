"""The catalog: what is stored and what is served, as one object the other parts take.

    store        the profile store (SQLite): profiles, text and user vectors, vocabulary
    iid_of       user id -> internal id (iid, the int64 id in the vector index)
    uid_of       iid -> user id (a table, for turning search results into users)
    attrs        every stored attribute as a column over iids, for filters (saved with each
                 index generation, so a start reads only the users written since)
    index        the vector index served, and `generations`, its saved generations
    segments     the segment model served, and `segment_of`, iid -> (label, strength, leaf part)
    predictors   the attribute models served (_predict/); their answers are columns of attrs

The catalog takes no locks: the engine reads it under its read lock and changes it under its
write lock (one writer at a time), so readers see it before a change or after, never half.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ._attrs import AttributeTable
from ._config import EngineConfig
from ._durable import DataDirLock
from ._encode import ProfileEncoder, from_f32, text_items
from ._errors import DataDamaged, SegmentsNotBuilt, UnknownSegment, UnknownUser
from ._predict import AttributeModel, predict_into
from ._segments import SegmentModel
from ._store import ProfileStore
from ._types import (
    Filter,
    Membership,
    Profile,
    Progress,
    ReachEstimate,
    ScoredUsers,
    SnapshotResult,
    Stats,
    StoredUser,
    TextItem,
)
from ._userids import UserIdTable
from ._vectors import FlatIndex, Generations, IndexPolicy, Manifest, VectorIndex, build_index

log = logging.getLogger("audience.index")

STORE_FILE = "profiles.sqlite3"
INDEX_DIR = "index"
ATTRIBUTES = "attributes"  # the generations' sidecar of stored attribute columns
LEXICAL_DIR = "lexical"
SEGMENTS_DIR = "segments"
SNAPSHOT_DIR = "snapshots"


def document(texts: Sequence[TextItem]) -> str:
    """A user's texts as one document (what the lexical channel and term models read)."""
    return "\n".join(t.text for t in texts)


def matrix(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored vectors (float32 bytes) as the rows of one (len(blobs), dim) array."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)


class Catalog:
    def __init__(
        self,
        config: EngineConfig,
        store: ProfileStore,
        dim: int,
        lock: DataDirLock | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.lock = lock  # the data dir's lock, released by close()
        self.dim = dim
        self.generations = Generations(config.data_dir / INDEX_DIR)
        self.policy = IndexPolicy(config)
        self.index: VectorIndex = FlatIndex(dim)
        self.attrs = AttributeTable()
        self.iid_of: dict[str, int] = {}
        self.uid_of = UserIdTable()
        self.segments: SegmentModel | None = None
        self.segment_of: dict[int, tuple[int, float, int]] = {}
        self.predictors: dict[str, AttributeModel] = {}
        self.written_since_fit: set[int] | None = None  # while predictors are being fitted
        self.generation = 0  # the index generation last saved or loaded
        self.unsaved = 0  # changes since that generation
        self.warnings: list[str] = []  # what opening had to repair (damaged files)
        self.pending: dict[str, str] = {}  # work after a commit that failed, to be retried

    # ------------------------------------------------------------ loading

    def load(self, fingerprint: str, progress: Progress | None = None) -> None:
        """Fill from the store: every user's id and attributes, and the newest index
        generation that matches `fingerprint`, brought up to date (users erased since are
        dropped, users written since replayed); without one, an index built from the store.
        The served segment model too, its erased members left out."""
        total = self.store.count()
        # The index generation (checksum + read, in C++ without the GIL) loads in a thread
        # while the profiles load here: at a million users each takes seconds.
        found: dict[str, object] = {}

        def load_index() -> None:
            try:
                found["loaded"] = self.generations.load_latest(
                    fingerprint=fingerprint,
                    dim=self.dim,
                    options=self.policy.options(self.policy.kind_for(total)),
                    warnings=self.warnings,
                )
            except BaseException as exc:  # re-raised below, in the opening thread
                found["error"] = exc

        loader = threading.Thread(target=load_index, name="index-load", daemon=True)
        loader.start()
        self._load_profiles(total, progress)
        loader.join()
        if "error" in found:
            raise found["error"]  # type: ignore[misc]
        loaded = found.get("loaded")
        if loaded is None:
            if total or self.generations.manifests():
                log.info("Index - no usable generation; building from the store")
            else:
                log.info("Index - a new data dir: starting with an empty index")
            self.index = self.build_index(progress)
            self.generation = self.generations.latest_generation()
            self.unsaved = total
        else:
            self._catch_up(*loaded)  # type: ignore[misc]
        if len(self.index) != total:  # never serve an index that disagrees with the store
            log.error("Index - %d vectors for %d users; rebuilding", len(self.index), total)
            self.index = self.build_index(progress)
        elif self.policy.rebuild_due(self.index):
            self.index = self.build_index(progress)
            self.unsaved = max(1, total)
        model = SegmentModel.load(self.config.data_dir / SEGMENTS_DIR, self.warnings)
        if model is not None:
            self.serve_segments(model, self.membership_of(model))

    def _load_profiles(self, total: int, progress: Progress | None) -> None:
        """Every user's id, and their attributes: from the newest generation's saved columns
        and the users written since when there are such columns, else from every user's
        attributes in the store (at a million users ~1 s against ~4)."""
        saved = self.generations.newest_sidecar(ATTRIBUTES, self.warnings)
        done = 0
        for iids, user_ids, values in self.store.iter_meta(attributes=saved is None):
            self.iid_of.update(zip(user_ids, iids.tolist()))
            self.uid_of.set_many(iids, user_ids)
            if saved is None:
                self.attrs.set_many(iids, values)
            done += len(iids)
            if progress:
                progress("load profiles", done, total)
        if saved is None:
            return
        path, manifest = saved
        try:
            self.attrs.read_stored(path, self.uid_of.present())
        except ValueError as exc:
            note = f"index generation {manifest.generation}'s attributes unreadable ({exc})"
            log.error("Index - %s; reading them from the store", note)
            self.warnings.append(note)
            self.attrs = AttributeTable()
            for iids, _, values in self.store.iter_meta():
                self.attrs.set_many(iids, values)
            return
        self.attrs.set_many(*self.store.attributes_since(manifest.sequence))

    def _catch_up(self, index: VectorIndex, manifest: Manifest) -> None:
        """Bring a loaded generation up to date: users erased since, then users written since."""
        self.generation = manifest.generation
        indexed = index.ids()
        stale = indexed[~self.uid_of.contains(indexed)]
        index.remove(stale)
        replayed = 0
        for rows in self.store.iter_rows(since_seq=manifest.sequence):
            ids = np.array([r.iid for r in rows], dtype=np.int64)
            index.remove(ids)
            index.add(ids, np.stack([from_f32(r.vec) for r in rows]))
            replayed += len(rows)
        self.index = index
        self.unsaved = replayed + len(stale)
        log.info(
            "Index - loaded generation %d (%d vectors), replayed %d changes, dropped %d erased",
            manifest.generation,
            manifest.count,
            replayed,
            len(stale),
        )

    # ------------------------------------------------------------ changes (write lock)

    def put(self, iids: Sequence[int], profiles: Sequence[Profile], vectors: np.ndarray) -> None:
        """Serve users the store has just committed (new ones, or new versions): their
        vectors, attributes and the attribute models' answers."""
        ids = np.array(iids, dtype=np.int64)
        self.index.remove(ids)
        self.index.add(ids, vectors)
        user_ids = [p.user_id for p in profiles]
        self.iid_of.update(zip(user_ids, ids.tolist()))
        self.uid_of.set_many(ids, user_ids)
        self.attrs.set_many(
            ids,
            [
                (iid, k, v)
                for iid, p in zip(ids.tolist(), profiles)
                for k, v in p.attributes.items()
            ],
        )
        if self.predictors:
            docs = [document(p.texts) for p in profiles]
            for model in self.predictors.values():
                predict_into(self.attrs, model, ids, vectors, lambda _: docs)
        if self.written_since_fit is not None:
            self.written_since_fit.update(int(i) for i in ids)
        self.unsaved += len(ids)

    def drop(self, found: Sequence[tuple[str, int]]) -> None:
        """Stop serving users the store has just erased: (user id, iid) pairs."""
        self.index.remove(np.array([iid for _, iid in found], dtype=np.int64))
        for uid, iid in found:
            self.iid_of.pop(uid, None)
            self.uid_of.pop(iid)
            self.attrs.remove(iid)
            self.segment_of.pop(iid, None)
        self.unsaved += len(found)

    def serve_segments(
        self, model: SegmentModel, membership: dict[int, tuple[int, float, int]]
    ) -> None:
        """Serve this model, with `membership_of(model)` computed beforehand."""
        self.segments = model
        self.segment_of = membership

    def membership_of(self, model: SegmentModel) -> dict[int, tuple[int, float, int]]:
        """iid -> (label, strength, leaf part) of the model's members still stored."""
        m = model
        return {
            int(i): (int(lab), float(st), int(part))
            for i, lab, st, part in zip(
                m.member_iids, m.member_labels, m.member_strength, m.member_parts
            )
            if int(i) in self.uid_of
        }

    # ------------------------------------------------------------ users and vectors

    def known_iids(self, user_ids: Sequence[str], field: str) -> list[int]:
        """iids of these users, each looked up once (the map is large); UnknownUser naming
        the ones not stored."""
        iid_of = self.iid_of
        iids = [iid_of.get(u, -1) for u in user_ids]
        if -1 in iids:
            raise UnknownUser([u for u, i in zip(user_ids, iids) if i < 0], field=field)
        return iids

    def stored_vectors(self, iids: Iterable[int]) -> tuple[list[int], np.ndarray]:
        """(the iids still stored, in order; their exact vectors from the store)."""
        wanted = [int(i) for i in iids]
        found = self.store.vectors(wanted)
        present = [i for i in wanted if i in found]
        return present, matrix([found[i] for i in present], self.dim)

    def documents(self, iids: Sequence[int] | np.ndarray) -> list[str]:
        """Each user's stored texts as one document ("" for a user without texts or gone)."""
        rows = self.store.texts_and_attributes([int(i) for i in iids])
        return ["\n".join(t[0] for t in rows[i][0]) if i in rows else "" for i in map(int, iids)]

    def user_vectors(self, iids: np.ndarray) -> np.ndarray:
        """Vectors of indexed users: the index's own, or the exact stored ones when the index
        keeps only lossy codes."""
        if self.index.lossy:
            present, vectors = self.stored_vectors(iids)
            if len(present) == len(iids):
                return vectors
        return self.index.vectors(iids)

    def all_user_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(iids, vectors) of every indexed user, exact even when the index is lossy."""
        if not self.index.lossy:
            return self.index.all_vectors()
        indexed = self.index.ids()
        vectors = np.empty((len(indexed), self.dim), np.float32)
        found, n = [], 0
        for ids, blobs in self.store.iter_vectors():  # unique iids: at most len(indexed) kept
            keep = np.isin(ids, indexed)
            found.append(ids[keep])
            vectors[n : n + len(found[-1])] = matrix(blobs, self.dim)[keep]
            n += len(found[-1])
        return np.concatenate(found) if found else np.zeros(0, np.int64), vectors[:n]

    def clear(self, mask: np.ndarray, user_ids: Sequence[str]) -> int:
        """Unset the given users in a mask over iids; returns how many were set."""
        iids = [self.iid_of[u] for u in user_ids if u in self.iid_of]
        if not iids:
            return 0
        idx = np.array(iids, dtype=np.int64)
        n = int(mask[idx].sum())
        mask[idx] = False
        return n

    # ------------------------------------------------------------ segments served

    def segment_model(self) -> SegmentModel:
        model = self.segments
        if model is None:
            raise SegmentsNotBuilt(
                "no segments have been built yet; run `audience segments build` "
                "(or call Admin.BuildSegments)"
            )
        return model

    def stored_user(self, user_id: str, include_vector: bool, dim: int) -> StoredUser:
        row = self.store.get(user_id)
        if row is None:
            raise UnknownUser([user_id])
        if include_vector and not row.intact:
            raise DataDamaged(f"user_id: the stored vector of {user_id!r} fails its checksum")
        profile = Profile(row.user_id, tuple(text_items(row)), row.attributes)
        return StoredUser(profile, row.vec if include_vector else b"", dim)

    def with_attributes(self, users: ScoredUsers, names: Sequence[str]) -> ScoredUsers:
        """`users` carrying the stored attributes `names` (read from the store: exact values)."""
        if not names:
            return users
        iids = [self.iid_of.get(u, -1) for u in users.user_ids]
        stored = self.store.attributes_of([i for i in iids if i >= 0])
        wanted = set(names)
        attrs = [{k: v for k, v in stored.get(i, {}).items() if k in wanted} for i in iids]
        return ScoredUsers(users.user_ids, users.scores, attrs, users.closest_seeds)

    def reach(
        self,
        filters: Sequence[Filter],
        exclude_user_ids: Sequence[str],
        segment_ids: Sequence[str],
        exclude_segment_ids: Sequence[str],
    ) -> ReachEstimate:
        """(under the read lock) How many users pass the filters, segments and exclusions."""
        warnings: list[str] = []
        mask = self.attrs.mask(filters, warnings)
        self.restrict_to_segments(mask, segment_ids, exclude_segment_ids)
        self.clear(mask, exclude_user_ids)
        return ReachEstimate(int(mask.sum()), len(self.iid_of), tuple(warnings))

    def restrict_to_segments(
        self, mask: np.ndarray, include: Sequence[str], exclude: Sequence[str]
    ) -> None:
        """Restrict a mask over iids to members of `include` (if any) and not of `exclude`."""
        if not include and not exclude:
            return
        model = self.segment_model()
        for field, ids in (("segment_ids", include), ("exclude_segment_ids", exclude)):
            unknown = [s for s in ids if s not in model.by_id]
            if unknown:
                raise UnknownSegment(f"{field}: unknown segment {unknown[0]!r}")
        inc = [model.holds(s) for s in include]
        inc_labels, inc_parts = {x for h in inc for x in h[0]}, {x for h in inc for x in h[1]}
        exc = [model.holds(s) for s in exclude]
        exc_labels, exc_parts = {x for h in exc for x in h[0]}, {x for h in exc for x in h[1]}
        member = np.zeros(len(mask), bool)
        blocked = np.zeros(len(mask), bool)
        for iid, (lab, _, part) in self.segment_of.items():
            if iid < len(mask):
                member[iid] = lab in inc_labels or part in inc_parts
                blocked[iid] = lab in exc_labels or part in exc_parts
        if include:
            mask &= member
        mask &= ~blocked

    def memberships(self, user_ids: Sequence[str], model: SegmentModel) -> list[Membership]:
        """The segment of each stored user; users written after the build are placed from
        their current vector."""
        iids = self.known_iids(user_ids, "user_ids")
        out: list[Membership | None] = []
        todo = []
        for i, (uid, iid) in enumerate(zip(user_ids, iids)):
            hit = self.segment_of.get(iid)
            if hit is None:
                todo.append(i)
                out.append(None)
            else:
                out.append(membership(model, uid, hit[0], hit[1], hit[2]))
        if todo:
            vecs = self.user_vectors(np.array([iids[i] for i in todo], np.int64))
            labels, strength, parts = model.place(vecs)
            for i, lab, st, part in zip(todo, labels, strength, parts):
                out[i] = membership(model, user_ids[i], int(lab), float(st), int(part))
        return [m for m in out if m is not None]

    def segment_members(self, held: tuple[Sequence[int], Sequence[int]]) -> ScoredUsers:
        """Members of a node of the segment tree (`SegmentModel.holds`: its segments' labels,
        or a part's leaf parts), strongest first (ties by user id)."""
        labels, parts = set(held[0]), set(held[1])
        members = [
            (st, self.uid_of[iid])
            for iid, (lab, st, part) in self.segment_of.items()
            if (lab in labels or part in parts) and iid in self.uid_of
        ]
        members.sort(key=lambda m: (-m[0], m[1]))
        return ScoredUsers([uid for _, uid in members], [st for st, _ in members])

    # ------------------------------------------------------------ index and files

    def build_index(self, progress: Progress | None = None) -> VectorIndex:
        """A new index of the kind due, from the vectors in the store."""
        total = self.store.count()
        kind = self.policy.kind_for(total)
        t0 = time.perf_counter()
        if kind == "flat":
            flat, done = FlatIndex(self.dim), 0
            for iids, blobs in self.store.iter_vectors():  # vectors only, not texts
                flat.add(iids, matrix(blobs, self.dim))
                done += len(iids)
                if progress:
                    progress("build index", done, total)
            return flat
        ids = np.empty(total, np.int64)
        vecs = np.empty((total, self.dim), np.float32)
        n = 0
        for iids, blobs in self.store.iter_vectors():
            m = min(len(iids), total - n)  # (no writer runs meanwhile; this is a guard)
            ids[n : n + m] = iids[:m]
            vecs[n : n + m] = matrix(blobs[:m], self.dim)
            n += m
            if progress:
                progress("read vectors", n, total)
        log.info("Index - building %s over %d vectors", kind, n)
        if progress:
            progress("build " + kind, 0, 1)
        index = build_index(self.policy.options(kind), self.dim, ids[:n], vecs[:n])
        del vecs
        if progress:
            progress("build " + kind, 1, 1)
        log.info("Index - built %s (%d vectors) in %.1fs", kind, n, time.perf_counter() - t0)
        return index

    def save_generation(self, fingerprint: str) -> int:
        """Save the index as a new generation (with the store sequence it holds)."""
        manifest = self.generations.save(
            self.index,
            sequence=self.store.sequence,
            fingerprint=fingerprint,
            sidecars={ATTRIBUTES: self.attrs.write_stored},
        )
        self.generation = manifest.generation
        self.unsaved = 0
        log.info("Index - saved generation %d (%d vectors)", manifest.generation, manifest.count)
        return manifest.generation

    def close(self) -> None:
        """Close the store and release the data dir."""
        self.store.close()
        if self.lock is not None:
            self.lock.release()

    def stats(self, encoder: ProfileEncoder) -> Stats:
        lexical = encoder.lexical
        return Stats(
            users=len(self.iid_of),
            indexed=len(self.index),
            dimension=encoder.dim,
            model=encoder.embedder.model_id,
            index_type=self.index.kind,
            generation=self.generation,
            sequence=self.store.sequence,
            data_dir=str(self.config.data_dir),
            attributes=tuple(self.attrs.names),
            lexical_model=encoder.lexical_version,
            lexical_documents=lexical.manifest.documents if lexical is not None else 0,
            lexical_weight=encoder.lexical_share,
            warnings=(*self.warnings, *self.pending.values(), *self._disk_warning()),
            text_dimension=encoder.text_dims,
        )

    def _disk_warning(self) -> list[str]:
        since = self.store.full_since
        if since is None:
            return []
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        return [f"the data dir's disk is full: writes fail since {stamp} (RESOURCE_EXHAUSTED)"]

    def snapshot(self) -> SnapshotResult:
        """Copy the store and the last saved generation under snapshots/ (saved first)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.config.data_dir / SNAPSHOT_DIR / f"snapshot-{stamp}-gen{self.generation:08d}"
        target.mkdir(parents=True, exist_ok=True)
        self.store.backup(target / STORE_FILE)
        for src in self.generations.files(self.generation):
            shutil.copy2(src, target / src.name)
        log.info("Snapshot - written generation %d", self.generation)
        return SnapshotResult(self.generation, Path(target))


def membership(
    model: SegmentModel, user_id: str, label: int, strength: float, part: int = -1
) -> Membership:
    """A user's segment and leaf part."""
    seg = model.by_label.get(label)
    leaf = model.by_part.get(part)
    return Membership(
        user_id,
        seg.segment_id if seg else "",
        strength,
        seg is None,
        leaf.segment_id if leaf else "",
    )
