"""What the engine needs from an index kind (`VectorIndex`), and how to build one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


@dataclass(frozen=True)
class IndexOptions:
    """How to build an index of a given kind (from EngineConfig)."""

    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    ivf_nprobe: int = 32
