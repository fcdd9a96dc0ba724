"""Exactly K segments, with the method chosen per corpus without labels.

No one method wins everywhere: k-means on UMAP of the vectors beat k-means on the vectors on
short Chinese headlines (NMI 0.43 vs 0.35 on THUCNews) and lost on long English articles
(0.77 vs 0.88 on BBC news), where the layout splits what the full space keeps together. So a
build asked for K runs every candidate on its fit sample and keeps the one whose segments
best keep each user with its own nearest neighbours in the full space (the vectors the build
uses, cosine): neighbour agreement = the share of each user's 10 nearest neighbours in its
segment (an outlier agrees with no one). A partition that cuts through a dense topic, or
lumps two apart, loses agreement there.

UMAP's layout is built from the same neighbour graph, so it starts ahead: a candidate other
than plain k-means must beat k-means' agreement by `MARGIN` (0.05) to be chosen; below that
the simpler method is kept. Measured on the fit samples (agreement, NMI against the labels):
THUCNews k-means 0.669 / 0.346, k-means on UMAP of the vectors 0.781 / 0.429 (chosen);
StackOverflow 0.777 / 0.727 and 0.851 / 0.738 (chosen); blogs by industry 0.415 / 0.085 and
0.453 / 0.083 (k-means kept).

    candidates  "kmeans"        k-means on the vectors (the build's dimensions)
                "umap-kmeans"   k-means on UMAP (cosine, 5 dims) of the vectors
                "tree"          HDBSCAN as the free build runs it, its segments merged
                                to K by Ward on their mean vectors (texts are read only
                                after clustering; outliers stay outliers), or when it
                                finds fewer than K, split into parts as the tree's levels
                                below the segments are (_parts.py)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._stages import ClusterResult

MARGIN = 0.05
NEIGHBOURS = 10
MAX_JUDGED = 20_000  # users whose neighbours are compared (a sample of the fit sample)


@dataclass(frozen=True)
class Candidate:
    method: str
    result: ClusterResult
    agreement: float
    seconds: float


@dataclass(frozen=True)
class Choice:
    method: str
    reason: str
    candidates: tuple[Candidate, ...]

    def summary(self) -> dict:
        """Plain JSON for the model's stats."""
        return {
            "method": self.method,
            "reason": self.reason,
            "candidates": [
                {
                    "method": c.method,
                    "neighbour_agreement": round(c.agreement, 4),
                    "seconds": round(c.seconds, 2),
                }
                for c in self.candidates
            ],
        }


def neighbours(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(judged rows, their 10 nearest other rows by cosine): a sample of at most MAX_JUDGED
    users and their neighbours among all these users; found once, used for every candidate."""
    import faiss

    n = len(vectors)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    rng = np.random.default_rng(seed)
    judged = np.sort(rng.choice(n, size=min(n, MAX_JUDGED), replace=False))
    k = min(NEIGHBOURS + 1, n)
    _, nn = index.search(x[judged], k)
    return judged, nn[:, 1:]


def neighbour_agreement(graph: tuple[np.ndarray, np.ndarray], labels: np.ndarray) -> float:
    """Share of the judged users' nearest neighbours in their segment; outliers (-1) agree
    with no one."""
    judged, nn = graph
    if nn.size == 0:
        return 0.0
    own = labels[judged][:, None]
    return float(((labels[nn] == own) & (own >= 0)).mean())


def choose(
    runs: dict[str, Callable[[], ClusterResult]],
    vectors: np.ndarray,
    seed: int = 0,
    k: int = 0,
) -> Choice:
    """Run each candidate (method name -> a call giving its labels on the fit sample) and
    keep the one with the best neighbour agreement, "kmeans" unless another is MARGIN
    better. With `k`, a candidate that found fewer segments than asked for is not chosen
    while another found them all."""
    graph = neighbours(vectors, seed) if len(runs) > 1 else (np.zeros(0, int), np.zeros((0, 0)))
    done = []
    for method, run in runs.items():
        t0 = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - t0
        agreement = neighbour_agreement(graph, np.asarray(result.labels))
        done.append(Candidate(method, result, agreement, seconds))
    if len(done) == 1:
        return Choice(done[0].method, "asked for", tuple(done))
    found = {c.method: len(np.unique(c.result.labels[c.result.labels >= 0])) for c in done}
    whole = [c for c in done if found[c.method] >= k] or done
    short = [f"{c.method} found {found[c.method]} of {k}" for c in done if c not in whole]
    base = next((c for c in whole if c.method == "kmeans"), None)
    best = max(whole, key=lambda c: c.agreement)
    if base is not None and best is not base and best.agreement < base.agreement + MARGIN:
        reason = (
            f"neighbour agreement {base.agreement:.3f}; {best.method} {best.agreement:.3f} "
            f"is not {MARGIN} better"
        )
        return Choice("kmeans", reason + "".join(f"; {s}" for s in short), tuple(done))
    others = ", ".join(f"{c.method} {c.agreement:.3f}" for c in whole if c is not best)
    reason = f"best neighbour agreement {best.agreement:.3f}" + (f" ({others})" if others else "")
    return Choice(best.method, reason + "".join(f"; {s}" for s in short), tuple(done))
