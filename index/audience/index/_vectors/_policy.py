"""Which index kind serves how many users, with which options, and when a rebuild is due."""

from __future__ import annotations

import logging

from .._config import EngineConfig
from ._ann import IvfPqIndex
from ._base import IndexOptions, VectorIndex

log = logging.getLogger("audience.index")


class IndexPolicy:
    """The index settings of an `EngineConfig`, as decisions."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    def kind_for(self, users: int) -> str:
        """The index kind for this many users: exact below the ANN threshold."""
        kind = self.config.index_kind
        if kind == "flat" or users < self.config.ann_threshold:
            return "flat"
        if kind == "ivf-pq" and users < IvfPqIndex.MIN_USERS:
            return "flat"
        return "hnsw" if kind == "auto" else kind

    def options(self, kind: str) -> IndexOptions:
        c = self.config
        return IndexOptions(kind, c.hnsw_m, c.hnsw_ef_construction, c.hnsw_ef_search, c.ivf_nprobe)

    def rebuild_due(self, index: VectorIndex) -> bool:
        """Whether `index` should be rebuilt: another kind is due (the user count crossed the
        ANN threshold, with some slack going down, or the setting changed), or an HNSW graph
        holds many tombstones."""
        n, current = len(index), index.kind
        want = self.kind_for(n)
        if want != current and not (
            want == "flat"
            and n >= self.config.ann_threshold // 2
            and self.config.index_kind in ("auto", current)
        ):
            log.info("Index - %s index due for %d users (now %s)", want, n, current)
            return True
        if index.needs_compaction():
            log.info("Index - compacting: removed users take a large share of the graph")
            return True
        return False
