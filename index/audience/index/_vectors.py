"""Vector indexes behind one interface, and their on-disk generations.

Vectors are L2-normalised, so the inner product is the cosine similarity. Ids are the
store's int64 iids. Filters reach the search as a bitmap over iids (faiss IDSelectorBitmap),
so filtering happens inside the search, not by over-fetching.

A generation is `index/gen-NNNNNNNN.faiss` plus `gen-NNNNNNNN.json` (manifest: store sequence,
vector fingerprint, count, sha256 of the index file). Both are written to a temp file, fsynced
and renamed, then the directory is fsynced; a file whose checksum does not match is skipped
at load time. FAISS's own format is read, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ._durable import write_durably

log = logging.getLogger("audience.index")


class VectorIndex(ABC):
    """What the engine needs from an index type (exact now; ANN types plug in here)."""

    kind: str
    dim: int

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; `allowed` is a bool mask over ids (None = all)."""

    @abstractmethod
    def ids(self) -> np.ndarray: ...

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
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
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


INDEX_TYPES: dict[str, type[FlatIndex]] = {"flat": FlatIndex}


def new_index(kind: str, dim: int) -> VectorIndex:
    return INDEX_TYPES[kind](dim)


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        digest = _sha256(tmp)
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
        self, *, fingerprint: str, dim: int, warnings: list[str] | None = None
    ) -> tuple[VectorIndex, Manifest] | None:
        """The newest generation that verifies and matches; None if there is none.

        Damaged generations are skipped, and said so in the log and in `warnings`.
        """
        for m in self.manifests():
            path = self._file(m.generation)
            if m.fingerprint != fingerprint or m.dim != dim or m.kind not in INDEX_TYPES:
                log.info(
                    "Index - generation %d was built with other settings; skipped", m.generation
                )
                continue
            problem = None
            if not path.exists() or _sha256(path) != m.sha256:
                problem = "missing or does not match its checksum"
            else:
                try:
                    return INDEX_TYPES[m.kind].read(path, dim), m
                except (RuntimeError, ValueError) as exc:
                    problem = f"failed to load ({exc})"
            note = f"index generation {m.generation} {problem}; fell back"
            log.error("Index - %s", note)
            if warnings is not None:
                warnings.append(note)
        return None
