"""Vector indexes behind one interface, and their on-disk generations.

Vectors are L2-normalised, so the inner product is the cosine similarity. Ids are the
store's int64 iids. Filters reach the search as a bitmap over iids (faiss IDSelectorBitmap),
so filtering happens inside the search, not by over-fetching.

Index kinds:
  flat      exact (IndexFlatIP under IndexIDMap2); the default below `ann_threshold` users.
  hnsw      HNSW graph over the vectors in half precision (fp16: half the memory, scores
            within ~1e-3 of float32). FAISS's HNSW cannot remove, so a removed or replaced
            user is a tombstone (its id in the id map set to -1, which no selector accepts)
            until the graph is compacted (rebuilt) at a save.
  hnsw-f32  the same graph over float32 vectors.
  hnsw-sq8  the same graph over 8-bit scalar-quantized vectors (a quarter of float32).
  ivf-pq    inverted lists of product-quantized codes (IndexIVFPQ; removes natively):
            the smallest, at some cost in recall; nprobe per query.
A filter that leaves few users is answered exactly over those users (ANN graphs lose recall
when most nodes are filtered out).

A generation is `index/gen-NNNNNNNN.faiss` plus `gen-NNNNNNNN.json` (manifest: store sequence,
vector fingerprint, count, sha256 of the index file). Both are written to a temp file, fsynced
and renamed, then the directory is fsynced; a file whose checksum does not match is skipped
at load time. FAISS's own format is read, never pickle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ._durable import sha256_file, write_durably

log = logging.getLogger("audience.index")


class VectorIndex(ABC):
    """What the engine needs from an index type (exact now; ANN types plug in here)."""

    kind: str
    dim: int
    # Scores (and vectors) only approximate, from compressed codes: the engine re-ranks the
    # candidates with the exact vectors from the store.
    lossy = False

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        effort: int = 0,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; `allowed` is a bool mask over ids (None = all).

        `effort`: efSearch (hnsw) or nprobe (ivf-pq), 0 = the index's default; `exact`:
        exhaustive search even on an ANN index. Exact indexes ignore both."""

    def needs_compaction(self) -> bool:
        """Whether removed entries take enough room that a rebuild is due."""
        return False

    @abstractmethod
    def ids(self) -> np.ndarray: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) stored vectors of the given ids, in order."""
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vector(int(i)) for i in ids])

    @abstractmethod
    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything stored, as copies."""

    @abstractmethod
    def vector(self, id_: int) -> np.ndarray:
        """The stored vector of one id (KeyError-like RuntimeError if absent)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def write(self, path: Path) -> None: ...


class FlatIndex(VectorIndex):
    """Exact inner-product search (faiss IndexFlatIP under an IndexIDMap2)."""

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.ascontiguousarray(ids, dtype=np.int64),
            )

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        effort: int = 0,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allowed is None:
            return self._index.search(q, k)
        bits = np.packbits(allowed, bitorder="little")  # kept alive for the whole search
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bits))
        return self._index.search(q, k, params=params)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def vector(self, id_: int) -> np.ndarray:
        return self._index.reconstruct(int(id_))

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return self.ids().copy(), self._index.index.reconstruct_n(0, n)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def write(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @classmethod
    def read(cls, path: Path, dim: int) -> FlatIndex:
        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"index dimension {index.d} != expected {dim}")
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"expected an IndexIDMap2, found {type(index).__name__}")
        return cls(dim, index)


# A filter leaving at most this many users (or this share of them) is searched exactly.
EXACT_BELOW_USERS = 20_000
EXACT_BELOW_SHARE = 0.02


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, k) scores and ids of the best k, padded with -inf / -1 like faiss."""
    out_s = np.full((1, k), -np.inf, np.float32)
    out_i = np.full((1, k), -1, np.int64)
    if len(scores):
        m = min(k, len(scores))
        top = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(m)
        top = top[np.argsort(-scores[top], kind="stable")]
        out_s[0, :m], out_i[0, :m] = scores[top], ids[top]
    return out_s, out_i


class _AnnIndex(VectorIndex):
    """Shared by the approximate kinds: iid <-> internal label, exact search over few users."""

    default_effort: int

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._label_of = np.full(0, -1, np.int64)  # iid -> internal label, -1 = absent
        self._count = 0

    # The subclass provides these three.
    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _ann_search(self, q: np.ndarray, k: int, sel, effort: int):
        raise NotImplementedError

    def _alive(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of every live entry."""
        raise NotImplementedError

    def _remember(self, ids: np.ndarray, labels: np.ndarray) -> None:
        top = int(ids.max()) + 1 if len(ids) else 0
        if top > len(self._label_of):
            grown = np.full(max(top, int(len(self._label_of) * 1.25) + 1024), -1, np.int64)
            grown[: len(self._label_of)] = self._label_of
            self._label_of = grown
        self._label_of[ids] = labels

    def _labels(self, ids: np.ndarray) -> np.ndarray:
        """Labels of the ids present (absent ones dropped)."""
        ids = np.asarray(ids, np.int64)
        ids = ids[(ids >= 0) & (ids < len(self._label_of))]
        labels = self._label_of[ids]
        return labels[labels >= 0]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        effort: int = 0,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        effort = max(effort or self.default_effort, 1)
        if allowed is not None:
            n_allowed = int(np.count_nonzero(allowed))
            if exact or n_allowed <= max(EXACT_BELOW_USERS, EXACT_BELOW_SHARE * self._count):
                return self._exact(q, k, np.flatnonzero(allowed))
            bits = np.packbits(allowed, bitorder="little")  # kept alive for the whole search
            sel = faiss.IDSelectorBitmap(bits)
        elif exact:
            return self._exact(q, k, self.ids())
        else:
            bits = None
            sel = self._alive_selector()
        scores, ids = self._ann_search(q, k, sel, effort)
        del bits
        ids = np.where(ids < 0, -1, ids)
        return scores, ids

    def _alive_selector(self):
        return None

    def _exact(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive over the given ids (vectors as the index holds them)."""
        ids = np.asarray(ids, np.int64)
        keep = (ids < len(self._label_of)) & (ids >= 0)
        ids = ids[keep]
        labels = self._label_of[ids]
        ids, labels = ids[labels >= 0], labels[labels >= 0]
        results = [
            _top_k(
                np.concatenate(
                    [
                        self._reconstruct(labels[s : s + 65_536]) @ row
                        for s in range(0, len(labels), 65_536)
                    ]
                    or [np.zeros(0, np.float32)]
                ),
                ids,
                k,
            )
            for row in q
        ]
        return np.vstack([r[0] for r in results]), np.vstack([r[1] for r in results])

    def ids(self) -> np.ndarray:
        return self._alive()[0]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        labels = self._label_of[ids] if len(ids) and ids.max() < len(self._label_of) else None
        if labels is None or (labels < 0).any():
            return super().vectors(ids)  # raises for an id that is not there
        return self._reconstruct(labels)

    def vector(self, id_: int) -> np.ndarray:
        labels = self._labels(np.array([id_]))
        if not len(labels):
            raise RuntimeError(f"id {id_} is not in the index")
        return self._reconstruct(labels)[0]

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        ids, labels = self._alive()
        if not len(labels):
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        vecs = np.concatenate(
            [self._reconstruct(labels[s : s + 65_536]) for s in range(0, len(labels), 65_536)]
        )
        return ids, vecs

    def __len__(self) -> int:
        return self._count

    def write(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @staticmethod
    def _read_faiss(path: Path, dim: int) -> faiss.Index:
        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"index dimension {index.d} != expected {dim}")
        return index


class HnswIndex(_AnnIndex):
    """HNSW graph (IndexHNSWSQ fp16 / 8-bit, or IndexHNSWFlat) under an IndexIDMap."""

    COMPACT_SHARE = 0.25  # rebuild when tombstones are this share of the graph

    def __init__(
        self,
        dim: int,
        index: faiss.Index,
        *,
        ef_search: int = 256,
    ) -> None:
        super().__init__(dim)
        self._index = index
        self._inner = faiss.downcast_index(index.index)
        self.kind = "hnsw-f32"
        if isinstance(self._inner, faiss.IndexHNSWSQ):
            qtype = faiss.downcast_index(self._inner.storage).sq.qtype
            self.kind = "hnsw" if qtype == faiss.ScalarQuantizer.QT_fp16 else "hnsw-sq8"
        self.default_effort = ef_search
        by_label = self._ids_by_label()
        alive = np.flatnonzero(by_label >= 0)
        self._remember(by_label[alive], alive)
        self._count = len(alive)
        self._all = faiss.IDSelectorRange(0, 1 << 62)  # every live id (tombstones are -1)

    @classmethod
    def build(
        cls,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        storage: str = "fp16",
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
    ) -> HnswIndex:
        """storage: "fp16" | "f32" | "sq8"."""
        metric = faiss.METRIC_INNER_PRODUCT
        if storage == "f32":
            inner = faiss.IndexHNSWFlat(dim, m, metric)
        else:
            qtype = (
                faiss.ScalarQuantizer.QT_fp16
                if storage == "fp16"
                else faiss.ScalarQuantizer.QT_8bit
            )
            inner = faiss.IndexHNSWSQ(dim, qtype, m, metric)
            sample = vectors[:: max(1, len(vectors) // 100_000)]
            inner.train(np.ascontiguousarray(sample, dtype=np.float32))
        inner.hnsw.efConstruction = ef_construction
        index = faiss.IndexIDMap(inner)
        index.referenced_objects = [inner]  # keep the Python owner of `inner` alive
        made = cls(dim, index, ef_search=ef_search)
        for s in range(0, len(ids), 100_000):
            made.add(ids[s : s + 100_000], vectors[s : s + 100_000])
        return made

    def _ids_by_label(self) -> np.ndarray:
        n = self._index.id_map.size()
        if n == 0:
            return np.zeros(0, np.int64)
        return faiss.rev_swig_ptr(self._index.id_map.data(), n)  # a view: writes go through

    def _alive(self) -> tuple[np.ndarray, np.ndarray]:
        by_label = self._ids_by_label()
        labels = np.flatnonzero(by_label >= 0)
        return by_label[labels].copy(), labels

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        return self._inner.storage.reconstruct_batch(labels)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.remove(ids)  # a replaced vector leaves a tombstone
        start = int(self._index.ntotal)
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self._remember(ids, np.arange(start, start + len(ids), dtype=np.int64))
        self._count += len(ids)

    def remove(self, ids: np.ndarray) -> int:
        labels = self._labels(ids)
        if not len(labels):
            return 0
        by_label = self._ids_by_label()
        self._label_of[by_label[labels]] = -1
        by_label[labels] = -1
        self._count -= len(labels)
        return len(labels)

    def _alive_selector(self):
        return self._all if self.tombstones else None

    @property
    def tombstones(self) -> int:
        return int(self._index.ntotal) - self._count

    def needs_compaction(self) -> bool:
        return self.tombstones > self.COMPACT_SHARE * max(int(self._index.ntotal), 1)

    def _ann_search(self, q: np.ndarray, k: int, sel, effort: int):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(effort, k)
        if sel is not None:
            params.sel = sel
        return self._index.search(q, k, params=params)

    @classmethod
    def read(cls, path: Path, dim: int, **options: int) -> HnswIndex:
        index = cls._read_faiss(path, dim)
        if not isinstance(index, faiss.IndexIDMap) or not isinstance(
            faiss.downcast_index(index.index), faiss.IndexHNSW
        ):
            raise ValueError(f"expected an IndexIDMap over HNSW, found {type(index).__name__}")
        return cls(dim, index, ef_search=options.get("ef_search", 256))


class IvfPqIndex(_AnnIndex):
    """IndexIVFPQ (ids kept by the lists, removes natively, hashtable for reconstruct)."""

    kind = "ivf-pq"
    lossy = True
    MIN_USERS = 10_000  # enough to train the coarse quantizer and the codebooks

    def __init__(self, dim: int, index: faiss.IndexIVFPQ, *, nprobe: int = 32) -> None:
        super().__init__(dim)
        self._index = index
        self.default_effort = nprobe
        ids = self._list_ids()
        self._remember(ids, ids)  # the label is the id itself
        self._count = len(ids)

    def _list_ids(self) -> np.ndarray:
        invlists = self._index.invlists
        parts = []
        for lst in range(self._index.nlist):
            n = invlists.list_size(lst)
            if n:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @classmethod
    def build(
        cls, dim: int, ids: np.ndarray, vectors: np.ndarray, *, nprobe: int = 32
    ) -> IvfPqIndex:
        n = len(vectors)
        # ~sqrt(n) lists (1,000 at 1M users), each trained on ~40 points: k-means stays a
        # matter of seconds; at least 10,000 points for the 256-code product quantizer.
        nlist = int(np.clip(np.sqrt(n), 16, 2048))
        m = next(m for m in range(max(dim // 4, 1), 0, -1) if dim % m == 0)  # ~4 dims a code
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.referenced_objects = [quantizer]
        index.cp.niter = 10
        index.pq.cp.niter = 10
        rng = np.random.default_rng(0)
        size = min(n, max(40 * nlist, 10_000))
        sample = vectors[np.sort(rng.choice(n, size=size, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        made = cls(dim, index, nprobe=nprobe)
        for s in range(0, len(ids), 100_000):
            made.add(ids[s : s + 100_000], vectors[s : s + 100_000])
        return made

    def _alive(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.flatnonzero(self._label_of >= 0).astype(np.int64)
        return ids, ids

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        out = np.empty((len(labels), self.dim), np.float32)
        for i, label in enumerate(labels):
            out[i] = self._index.reconstruct(int(label))
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.remove(ids)
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self._remember(ids, ids)
        self._count += len(ids)

    def remove(self, ids: np.ndarray) -> int:
        labels = self._labels(ids)
        if not len(labels):
            return 0
        labels = np.ascontiguousarray(labels, dtype=np.int64)  # alive while the selector is
        removed = int(
            self._index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))
        )
        self._label_of[labels] = -1
        self._count -= removed
        return removed

    def _ann_search(self, q: np.ndarray, k: int, sel, effort: int):
        params = faiss.SearchParametersIVF()
        params.nprobe = min(effort, self._index.nlist)
        if sel is not None:
            params.sel = sel
        return self._index.search(q, k, params=params)

    @classmethod
    def read(cls, path: Path, dim: int, **options: int) -> IvfPqIndex:
        index = cls._read_faiss(path, dim)
        if not isinstance(index, faiss.IndexIVFPQ):
            raise ValueError(f"expected an IndexIVFPQ, found {type(index).__name__}")
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(dim, index, nprobe=options.get("nprobe", 32))


@dataclass(frozen=True)
class IndexOptions:
    """How to build an index of a given kind (from EngineConfig)."""

    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    ivf_nprobe: int = 32


HNSW_STORAGE = {"hnsw": "fp16", "hnsw-f32": "f32", "hnsw-sq8": "sq8"}


def build_index(
    options: IndexOptions, dim: int, ids: np.ndarray, vectors: np.ndarray
) -> VectorIndex:
    """A new index of `options.kind` holding the given vectors (trained on them if needed)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if options.kind == "flat":
        index = FlatIndex(dim)
        for s in range(0, len(ids), 100_000):
            index.add(ids[s : s + 100_000], vectors[s : s + 100_000])
        return index
    if options.kind in HNSW_STORAGE:
        return HnswIndex.build(
            dim,
            ids,
            vectors,
            storage=HNSW_STORAGE[options.kind],
            m=options.hnsw_m,
            ef_construction=options.hnsw_ef_construction,
            ef_search=options.hnsw_ef_search,
        )
    if options.kind == "ivf-pq":
        return IvfPqIndex.build(dim, ids, vectors, nprobe=options.ivf_nprobe)
    raise ValueError(f"unknown index kind {options.kind!r}")


def read_index(kind: str, path: Path, dim: int, options: IndexOptions) -> VectorIndex:
    if kind == "flat":
        return FlatIndex.read(path, dim)
    if kind in HNSW_STORAGE:
        return HnswIndex.read(path, dim, ef_search=options.hnsw_ef_search)
    if kind == "ivf-pq":
        return IvfPqIndex.read(path, dim, nprobe=options.ivf_nprobe)
    raise ValueError(f"unknown index kind {kind!r}")


INDEX_KINDS = ("flat", "hnsw", "hnsw-f32", "hnsw-sq8", "ivf-pq")


def new_index(kind: str, dim: int) -> VectorIndex:
    if kind != "flat":
        raise ValueError("only a flat index starts empty; ANN kinds are built from vectors")
    return FlatIndex(dim)


@dataclass(frozen=True)
class Manifest:
    generation: int
    sequence: int  # store sequence folded into this generation
    fingerprint: str  # vector fingerprint of the stored vectors it holds
    kind: str
    dim: int
    count: int
    sha256: str
    created: float


class Generations:
    """The index generations in one directory."""

    KEEP = 2  # the newest generations kept; older ones are deleted after a save

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):  # left by a crash mid-save
            stale.unlink()

    def manifests(self) -> list[Manifest]:
        """Readable manifests, newest first."""
        found = []
        for p in self.dir.glob("gen-*.json"):
            try:
                found.append(Manifest(**json.loads(p.read_text())))
            except (ValueError, TypeError) as exc:
                log.warning("Index - skipping unreadable manifest %s (%s)", p.name, exc)
        return sorted(found, key=lambda m: m.generation, reverse=True)

    def latest_generation(self) -> int:
        ms = self.manifests()
        return ms[0].generation if ms else 0

    def _file(self, generation: int) -> Path:
        return self.dir / f"gen-{generation:08d}.faiss"

    def save(self, index: VectorIndex, *, sequence: int, fingerprint: str) -> Manifest:
        generation = self.latest_generation() + 1
        path = self._file(generation)
        tmp = path.with_name(path.name + ".tmp")
        index.write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        manifest = Manifest(
            generation=generation,
            sequence=sequence,
            fingerprint=fingerprint,
            kind=index.kind,
            dim=index.dim,
            count=len(index),
            sha256=digest,
            created=time.time(),
        )
        write_durably(path.with_suffix(".json"), json.dumps(asdict(manifest)).encode())
        for old in self.manifests()[self.KEEP :]:
            self._file(old.generation).unlink(missing_ok=True)
            self._file(old.generation).with_suffix(".json").unlink(missing_ok=True)
        return manifest

    def load_latest(
        self,
        *,
        fingerprint: str,
        dim: int,
        options: IndexOptions | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[VectorIndex, Manifest] | None:
        """The newest generation that verifies and matches; None if there is none.

        Damaged generations are skipped, and said so in the log and in `warnings`.
        """
        for m in self.manifests():
            path = self._file(m.generation)
            if m.fingerprint != fingerprint or m.dim != dim or m.kind not in INDEX_KINDS:
                log.info(
                    "Index - generation %d was built with other settings; skipped", m.generation
                )
                continue
            problem = None
            if not path.exists() or sha256_file(path) != m.sha256:
                problem = "missing or does not match its checksum"
            else:
                try:
                    return read_index(m.kind, path, dim, options or IndexOptions()), m
                except (RuntimeError, ValueError) as exc:
                    problem = f"failed to load ({exc})"
            note = f"index generation {m.generation} {problem}; fell back"
            log.error("Index - %s", note)
            if warnings is not None:
                warnings.append(note)
        return None
