"""The approximate kinds: HNSW graphs (fp16, float32 or 8-bit storage) and IVF-PQ.

Both map iids to their own internal labels. A filter that leaves few users is answered by
an exact search over those users. One that leaves more is searched in the index; a graph's
effort is raised by the inverse of the filter's share, so that about as many eligible users
are visited as an unfiltered search visits (a graph loses recall when most of the nodes it
reaches are filtered out). At 1M StackOverflow users, seeds of one tag, HNSW effort 200,
recall@100 of a filter leaving 10% went from 0.63 at the unfiltered effort to 0.99 at
effort 2000 (8.6 ms); a filter leaving 5% was scanned exactly in 16 ms, where effort 4000
took 21 ms.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ._base import VectorIndex

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
            if not (exact or n_allowed <= EXACT_BELOW_USERS):  # (none allowed: exact too)
                effort = self._filtered_effort(effort, k, n_allowed / self._count)
            if exact or n_allowed <= EXACT_BELOW_USERS or self._scan_is_cheaper(n_allowed, effort):
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

    def _filtered_effort(self, effort: int, k: int, share: float) -> int:
        """The effort of a search that may return only `share` of the users. The lists an
        IVF probes hold the nearest eligible users as they hold the nearest users: no more."""
        return effort

    def _scan_is_cheaper(self, n_allowed: int, effort: int) -> bool:
        """Whether an exact search over `n_allowed` users costs less than the index searched
        at `effort` (already raised for their share)."""
        return n_allowed <= EXACT_BELOW_SHARE * self._count

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
        self._storage = faiss.downcast_index(self._inner.storage)
        self.kind = "hnsw-f32"
        self._row_type: type | None = np.float32  # how the codes hold a vector (None: 8-bit)
        if isinstance(self._inner, faiss.IndexHNSWSQ):
            qtype = self._storage.sq.qtype
            self.kind = "hnsw" if qtype == faiss.ScalarQuantizer.QT_fp16 else "hnsw-sq8"
            self._row_type = np.float16 if self.kind == "hnsw" else None
        if (
            self._row_type is not None
            and self._storage.code_size != dim * np.dtype(self._row_type).itemsize
        ):
            self._row_type = None  # not plain values after all: let faiss decode
        self.default_effort = ef_search
        self._plain_params: dict[int, faiss.SearchParametersHNSW] = {}  # by efSearch
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
        rows = self._rows()
        if rows is None:  # 8-bit codes: faiss decodes them
            return self._storage.reconstruct_batch(labels)
        return rows[labels].astype(np.float32)

    def _rows(self) -> np.ndarray | None:
        """The stored vectors as a (ntotal, dim) view of faiss's own codes (fp16 or float32:
        both kept as the plain IEEE values), or None for 8-bit codes. Made on each call (an
        add may move the codes). 20 seeds' vectors out of 1M (fp16, no huge pages): 48 us
        back to back and 176 us 2 ms apart, where reconstruct_batch took 111 and 278 us."""
        if self._row_type is None:
            return None
        n = int(self._storage.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), self._row_type)
        size = n * self.dim * np.dtype(self._row_type).itemsize
        codes = faiss.rev_swig_ptr(self._storage.codes.data(), size)
        return codes.view(self._row_type).reshape(n, self.dim)

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

    # A unit of graph effort costs about as much as scanning this many stored vectors (1M
    # users, fp16: effort 2000 took 8.6 ms, 4000 21 ms; a scan 6 ms + 0.2 ms a 1,000 users).
    SCAN_USERS_PER_EFFORT = 20

    def _filtered_effort(self, effort: int, k: int, share: float) -> int:
        return int(np.ceil(max(effort, k) / share))  # the graph searches at least k deep

    def _scan_is_cheaper(self, n_allowed: int, effort: int) -> bool:
        return n_allowed <= self.SCAN_USERS_PER_EFFORT * effort

    def _exact(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's own vectors scanned (in faiss, skipping everyone not in `ids`)."""
        labels = self._labels(ids)
        member = np.zeros(int(self._index.ntotal), bool)
        member[labels] = True
        bits = np.packbits(member, bitorder="little")  # kept alive for the whole search
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(bits)
        scores, found = self._storage.search(q, k, params=params)  # -1 past the members
        del bits
        ids = np.where(found >= 0, self._ids_by_label()[np.maximum(found, 0)], -1)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids

    @property
    def tombstones(self) -> int:
        return int(self._index.ntotal) - self._count

    def needs_compaction(self) -> bool:
        return self.tombstones > self.COMPACT_SHARE * max(int(self._index.ntotal), 1)

    def _ann_search(self, q: np.ndarray, k: int, sel, effort: int):
        ef = max(effort, k)
        if sel is None:  # the common case: parameters made once per depth, then only read
            params = self._plain_params.get(ef)
            if params is None:
                params = self._params(ef)
                if len(self._plain_params) < 64:  # callers may ask for any depth
                    self._plain_params[ef] = params
        else:
            params = self._params(ef)
            params.sel = sel
        return self._index.search(q, k, params=params)

    @staticmethod
    def _params(ef: int) -> faiss.SearchParametersHNSW:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        return params

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
