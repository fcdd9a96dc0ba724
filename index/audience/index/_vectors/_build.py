"""Making an index of a given kind: built from vectors, or read from a generation file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._ann import HnswIndex, IvfPqIndex
from ._base import IndexOptions, VectorIndex
from ._flat import FlatIndex

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
