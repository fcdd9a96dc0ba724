"""The exact index: inner product over every vector (faiss IndexFlatIP under IndexIDMap2)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ._base import VectorIndex


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
