"""What a segment build is asked for: `SegmentParams` (a request; checked here, persisted with
the model it made)."""

from __future__ import annotations

from dataclasses import dataclass

from .._config import HDBSCAN_BACKENDS, SEGMENT_METHODS, SEGMENT_REDUCERS
from .._errors import InvalidQuery


@dataclass(frozen=True)
class SegmentParams:
    reducer: str = "umap"  # "umap" | "pca": the space the clusterer runs in
    pca_dims: int = 50
    umap_dims: int = 5
    umap_neighbors: int = 15
    min_cluster_size: int | None = None  # None: 1% of the fit sample, at least 10
    min_samples: int = 30  # tuned on the StackOverflow titles (NMI 0.77 vs 0.75 at 15)
    target_segments: int = 0  # 0: HDBSCAN decides; K: exactly K segments (see `method`)
    # With target_segments: "auto" runs every method and keeps the best by a label-free
    # criterion (_choose.py); "kmeans", "umap-kmeans" or "tree" runs that one only.
    method: str = "auto"
    sample_size: int = 20_000
    knn: int = 15
    min_vote: float = 0.35
    backend: str = "fast_hdbscan"  # or "hdbscan"
    seed: int = 0
    # Leading vector dimensions the clustering sees (0 = all). The engine sets this to the
    # text channels unless `use_attributes`: segments are about what users write, and their
    # attribute profile describes them (declared categorical attributes would otherwise split
    # the users along those categories first).
    use_attributes: bool = False
    dims_used: int = 0

    def __post_init__(self) -> None:
        if self.reducer not in SEGMENT_REDUCERS:
            raise InvalidQuery("reducer", f"must be one of {', '.join(SEGMENT_REDUCERS)}")
        if self.method not in SEGMENT_METHODS:
            raise InvalidQuery("method", f"must be one of {', '.join(SEGMENT_METHODS)}")
        if self.backend not in HDBSCAN_BACKENDS:
            raise InvalidQuery("backend", f"must be one of {', '.join(HDBSCAN_BACKENDS)}")
        for name, least in (("target_segments", 0), ("sample_size", 50), ("pca_dims", 2)):
            if getattr(self, name) < least:
                raise InvalidQuery(name, f"must be >= {least}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise InvalidQuery("min_cluster_size", "must be >= 2")
