"""The place stage: every user outside the fit sample (and each outlier of the fit) joins the
segment most of its k nearest clustered fit users belong to (in PCA space), when that share
is at least `min_vote`. Where it runs is a choice:

    LocalPlacer    in this process, in chunks (the default)
    RayPlacer      chunks as Ray tasks (`segments build --engine ray`): the fit users go to
                   the object store once, each task builds its own k-NN index and votes.
                   The same function on the same inputs: the labels equal a local build's.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np

from .._types import Progress
from ._model import vote

CHUNK = 100_000  # users placed between two progress reports


class Placer(Protocol):
    name: str

    def place(
        self,
        fit_coords: np.ndarray,
        fit_labels: np.ndarray,
        coords: np.ndarray,
        k: int,
        min_vote: float,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(label, vote share) of each row of `coords`, from the clustered fit users."""
        ...


def _knn(fit_coords: np.ndarray) -> faiss.Index:
    knn = faiss.IndexFlatIP(fit_coords.shape[1])
    knn.add(np.ascontiguousarray(fit_coords, dtype=np.float32))
    return knn


def place_chunk(
    fit_coords: np.ndarray, fit_labels: np.ndarray, coords: np.ndarray, k: int, min_vote: float
) -> tuple[np.ndarray, np.ndarray]:
    return vote(_knn(fit_coords), fit_labels, coords, k, min_vote)


class LocalPlacer:
    name = "local"

    def place(self, fit_coords, fit_labels, coords, k, min_vote, progress=None):
        knn = _knn(fit_coords)
        labels = np.full(len(coords), -1, np.int32)
        share = np.zeros(len(coords), np.float32)
        for s in range(0, len(coords), CHUNK):
            part = slice(s, s + CHUNK)
            labels[part], share[part] = vote(knn, fit_labels, coords[part], k, min_vote)
            if progress:
                progress("assign", min(s + CHUNK, len(coords)), len(coords))
        return labels, share


class RayPlacer:
    """Chunks of `chunk` users placed by Ray tasks (Ray must be initialised: `ray.init()`
    or the cluster the caller joined)."""

    name = "ray"

    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk

    def place(self, fit_coords, fit_labels, coords, k, min_vote, progress=None):
        import ray

        task = ray.remote(num_cpus=1, max_retries=3)(place_chunk)
        fit_c, fit_l = ray.put(np.ascontiguousarray(fit_coords)), ray.put(fit_labels)
        starts = list(range(0, len(coords), self.chunk))
        pending = {
            task.remote(fit_c, fit_l, coords[s : s + self.chunk], k, min_vote): s for s in starts
        }
        labels = np.full(len(coords), -1, np.int32)
        share = np.zeros(len(coords), np.float32)
        done = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                s = pending.pop(ready[0])
                part_l, part_s = ray.get(ready[0])
                labels[s : s + len(part_l)], share[s : s + len(part_s)] = part_l, part_s
                done += len(part_l)
                if progress:
                    progress("assign", done, len(coords))  # may raise Cancelled
        finally:
            for ref in pending:
                ray.cancel(ref)
        return labels, share
