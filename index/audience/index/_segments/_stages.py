"""The swappable stages of a segment build, as objects (BERTopic's shape: `umap_model`,
`hdbscan_model`, `representation_model`): a reducer gives the space the clusterer runs in, a
clusterer labels the fit sample, a describer writes what a marketer reads. `SegmentBuilder`
takes any object with the method of its stage; `default_stages` builds the defaults from
`SegmentParams` when none are given.

    Reducer.reduce(sample) -> space           PcaReducer, UmapReducer
    Clusterer.cluster(space) -> ClusterResult  HdbscanClusterer, KMeansClusterer (exactly K)
    Describer.describe(labels, docs, attributes, groups=, embed=)
                                            -> {label or group: SegmentDescription}
                                               CtfidfDescriber
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .._types import Progress
from ._describe import SegmentDescription, describe_segments
from ._keywords import Embed
from ._params import SegmentParams


@dataclass(frozen=True)
class FitSample:
    """The users a build is fitted on, in the two forms a reducer may start from."""

    vectors: np.ndarray  # their user vectors (the dimensions the build uses), unit rows
    pca: np.ndarray  # the same users in the model's PCA space, unit rows
    progress: Progress | None = None  # a long reducer reports here (and may be cancelled)


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # per sample user: 0..k-1 by decreasing size, -1 = outlier
    strength: np.ndarray  # membership strength in [0, 1]
    persistence: dict[int, float]  # per label: how stable the segment is, relative (0, 1]


class Reducer(Protocol):
    def reduce(self, sample: FitSample) -> np.ndarray:
        """The space the clusterer sees: one row per sample user."""
        ...


class Clusterer(Protocol):
    def cluster(self, space: np.ndarray) -> ClusterResult: ...


class Describer(Protocol):
    def describe(
        self,
        labels: np.ndarray,
        docs: Sequence[str],
        attributes: Sequence[Mapping[str, float | str | bool]],
        *,
        groups: Mapping[Hashable, Sequence[int]] | None = None,
        embed: Embed | None = None,
    ) -> dict[Any, SegmentDescription]:
        """One description per segment label, and per group key (its segments' labels)."""
        ...


@dataclass(frozen=True)
class Stages:
    reducer: Reducer
    clusterer: Clusterer
    describer: Describer

    def names(self) -> dict[str, str]:
        return {
            "reducer": repr(self.reducer),
            "clusterer": repr(self.clusterer),
            "describer": repr(self.describer),
        }


def default_stages(params: SegmentParams, *, min_group_size: int = 0) -> Stages:
    """The stages `params` asks for.

    Free build (target_segments 0): HDBSCAN decides how many segments, on UMAP of the PCA
    coordinates (on UMAP of the full vectors it found 2 segments on THUCNews).
    `target_segments` K: k-means with exactly K, on UMAP of the full vectors. Measured
    offline on the sample (NMI against the labels): THUCNews 10 topics 0.43, against 0.32
    merging HDBSCAN clusters along the condensed tree and 0.35 for k-means on UMAP of the PCA
    coordinates; StackOverflow 20 tags 0.74 (0.76 merging).
    `reducer="pca"`: the clusterer runs on the PCA coordinates themselves.
    """
    exact_k = params.target_segments > 0
    reducer: Reducer = (
        PcaReducer()
        if params.reducer == "pca"
        else UmapReducer(
            on="vectors" if exact_k else "pca",
            dims=params.umap_dims,
            neighbors=params.umap_neighbors,
            seed=params.seed,
        )
    )
    clusterer: Clusterer = (
        KMeansClusterer(params.target_segments, seed=params.seed)
        if exact_k
        else HdbscanClusterer(
            min_cluster_size=params.min_cluster_size,
            min_samples=params.min_samples,
            backend=params.backend,
        )
    )
    return Stages(reducer, clusterer, CtfidfDescriber(min_group_size=min_group_size))


# ---------------------------------------------------------------------- reducers


class PcaReducer:
    """The PCA coordinates as they are."""

    def reduce(self, sample: FitSample) -> np.ndarray:
        return sample.pca

    def __repr__(self) -> str:
        return "pca"


class UmapReducer:
    """UMAP (cosine) of the PCA coordinates (`on="pca"`) or of the user vectors
    (`on="vectors"`); samples too small for the neighbourhood stay in PCA space."""

    def __init__(
        self, *, on: str = "pca", dims: int = 5, neighbors: int = 15, seed: int = 0
    ) -> None:
        if on not in ("pca", "vectors"):
            raise ValueError("on must be 'pca' or 'vectors'")
        self.on, self.dims, self.neighbors, self.seed = on, dims, neighbors, seed

    def reduce(self, sample: FitSample) -> np.ndarray:
        if len(sample.pca) <= self.neighbors + 2:
            return sample.pca
        points = sample.vectors if self.on == "vectors" else sample.pca
        return umap_cosine(
            points,
            n_components=self.dims,
            n_neighbors=self.neighbors,
            min_dist=0.0,
            random_state=self.seed,
            low_memory=True,
            tqdm_kwds=_EpochReport.kwds(sample.progress),
        )

    def __repr__(self) -> str:
        return f"umap(of {self.on}, {self.dims} dims, {self.neighbors} neighbours)"


UMAP_EXACT_BELOW = 4096  # UMAP finds the neighbours of fewer rows exactly itself


def umap_cosine(points: np.ndarray, *, n_neighbors: int = 15, **options: Any) -> np.ndarray:
    """UMAP (cosine) of the rows; from UMAP_EXACT_BELOW rows on, with their exact neighbours
    (`cosine_neighbours`) instead of pynndescent's. options: UMAP's own."""
    import umap

    knn = (None, None, None)  # below UMAP_EXACT_BELOW rows UMAP's own search is exact
    if len(points) >= UMAP_EXACT_BELOW:
        knn = (*cosine_neighbours(points, n_neighbors), None)
    with warnings.catch_warnings():
        # "transforming new data will be unavailable": nothing here transforms
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        return umap.UMAP(
            n_neighbors=n_neighbors, metric="cosine", precomputed_knn=knn, **options
        ).fit_transform(points)


def cosine_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest rows by cosine (itself first), exactly, as UMAP takes them
    (`precomputed_knn`: indices, cosine distances). UMAP itself finds them exactly below
    UMAP_EXACT_BELOW rows and with pynndescent above, whose numba code is compiled in every
    process on first use (45-60 s on 2 cores, not cached); a flat FAISS search over a fit
    sample of 20,000 rows in 50 PCA dimensions takes 2-3 s."""
    import faiss

    unit = np.ascontiguousarray(points, np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    sims, found = index.search(unit, k + 1)
    rows = np.arange(len(unit))
    # itself first, whatever rounding or a duplicate row says; then the k - 1 others in order
    others = np.argsort(found == rows[:, None], axis=1, kind="stable")[:, : k - 1]
    indices = np.hstack([rows[:, None], np.take_along_axis(found, others, axis=1)])
    distances = np.hstack([np.zeros((len(unit), 1)), 1.0 - np.take_along_axis(sims, others, 1)])
    return indices.astype(np.int32), np.maximum(distances, 0.0).astype(np.float32)


class _EpochReport:
    """The file UMAP's epoch bar (tqdm) writes to: each line ("done total") becomes a
    progress report, so a long layout shows how far it is, and a job's cancel (raised by the
    report) stops it between two epochs.

    tqdm's `refresh` takes its lock without try/finally, so an exception raised while it
    writes would leave tqdm's process-wide lock held and hang the next bar. The report
    releases that lock before letting a cancel through; anywhere else (the bar's close, under
    a `with`) the cancel is kept for the build's next report. Pinned tqdm; test_jobs cancels
    a layout and then runs another one."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stopped = False

    @classmethod
    def kwds(cls, progress: Progress | None) -> dict | None:
        if progress is None:
            return None
        return {
            "disable": False,
            "file": cls(progress),
            "bar_format": "{n} {total}\n",
            "mininterval": 0.5,
            "desc": "",
        }

    def write(self, text: str) -> None:
        parts = text.split()
        if self.stopped or len(parts) != 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            return
        try:
            self.progress("reduce: umap epochs", int(parts[0]), int(parts[1]))
        except Exception:
            self.stopped = True
            from tqdm.std import tqdm

            caller = sys._getframe(1)
            while caller is not None and caller.f_code is not tqdm.refresh.__code__:
                caller = caller.f_back
            if caller is None:  # not under refresh's bare acquire: the next report raises
                return
            caller.f_locals["self"]._lock.release()
            raise

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------- clusterers


# fast_hdbscan hands a space of more than this many dimensions to pynndescent, whose numba
# code is compiled in every process on first use (~1 min on 2 cores, not cached on disk)
FAST_HDBSCAN_TREE_DIMS = 30
# below this many users such a space goes to the reference `hdbscan` library instead: its
# whole fit costs less than that compile (2.2 s at 5,000 users in 50 PCA dimensions against
# 1.5 s for fast_hdbscan once compiled), and it clusters alike (adjusted Rand 0.97-1.00
# between the two at 1,000 and 3,000 StackOverflow titles)
REFERENCE_BELOW = 5_000


class HdbscanClusterer:
    """HDBSCAN decides how many segments; `min_cluster_size` None = 1% of the sample (at
    least 10). Persistence: each segment's stability in the condensed tree, relative.
    backend "fast_hdbscan" (the default) runs the reference `hdbscan` library on small
    samples of many dimensions (REFERENCE_BELOW)."""

    def __init__(
        self,
        *,
        min_cluster_size: int | None = None,
        min_samples: int = 30,
        backend: str = "fast_hdbscan",
    ) -> None:
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.backend = backend

    def cluster(self, space: np.ndarray) -> ClusterResult:
        n = len(space)
        mcs = min(self.min_cluster_size or max(10, n // 100), n)
        min_samples = min(self.min_samples, mcs)
        small = n < REFERENCE_BELOW and space.shape[1] > FAST_HDBSCAN_TREE_DIMS
        if self.backend == "hdbscan" or small:
            import hdbscan

            h = hdbscan.HDBSCAN(
                min_cluster_size=mcs, min_samples=min_samples, core_dist_n_jobs=1
            ).fit(space)
        else:
            import fast_hdbscan

            h = fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min_samples)
            h.fit(space)
        labels = relabel(h.labels_.astype(np.int32))
        persistence = _persistence(h.condensed_tree_._raw_tree, n, labels)
        return ClusterResult(labels, h.probabilities_.astype(np.float32), persistence)

    def __repr__(self) -> str:
        size = self.min_cluster_size or "1% of the sample"
        return f"hdbscan(min_cluster_size={size}, min_samples={self.min_samples})"


class KMeansClusterer:
    """Exactly min(k, n) segments. strength = 1 - d(own centre) / d(second centre), in
    [0, 1]; a segment's persistence is its members' mean strength relative to the highest."""

    def __init__(self, k: int, *, seed: int = 0) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k, self.seed = k, seed

    def cluster(self, space: np.ndarray) -> ClusterResult:
        from sklearn.cluster import KMeans

        k = max(1, min(self.k, len(space)))
        km = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(space)
        dist = km.transform(space)
        if k > 1:
            part = np.partition(dist, 1, axis=1)
            strength = 1.0 - part[:, 0] / np.maximum(part[:, 1], 1e-12)
        else:
            strength = np.ones(len(space))
        labels = relabel(km.labels_.astype(np.int32))
        means = {int(c): float(strength[labels == c].mean()) for c in np.unique(labels) if c >= 0}
        top = max(means.values(), default=1.0) or 1.0
        persistence = {c: m / top for c, m in means.items()}
        return ClusterResult(labels, strength.astype(np.float32), persistence)

    def __repr__(self) -> str:
        return f"kmeans(k={self.k})"


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 by decreasing size; -1 stays."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    remap = np.full(labels.max() + 2 if len(labels) else 1, -1, np.int32)
    remap[order] = np.arange(len(order))
    return np.where(labels >= 0, remap[labels], -1).astype(np.int32)


def _tree_parts(tree: np.ndarray, n_points: int):
    parent = tree["parent"].astype(np.int64)
    child = tree["child"].astype(np.int64)
    lam = tree["lambda_val"].astype(np.float64)
    is_cluster = child >= n_points
    cluster_parent = dict(zip(child[is_cluster], parent[is_cluster]))
    birth = dict(zip(child[is_cluster], lam[is_cluster]))
    point_cluster = np.full(n_points, -1, np.int64)
    point_lambda = np.zeros(n_points)
    pts = ~is_cluster
    point_cluster[child[pts]] = parent[pts]
    point_lambda[child[pts]] = lam[pts]
    return cluster_parent, birth, point_cluster, point_lambda


def _node_of_labels(
    labels: np.ndarray, point_cluster: np.ndarray, cluster_parent: dict
) -> dict[int, int]:
    """The condensed-tree node that each flat label stands for (the members' common node)."""
    nodes: dict[int, int] = {}
    for lab in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == lab)
        chains = []
        for node in point_cluster[members[:: max(1, len(members) // 50)]]:
            chain = [int(node)]
            while chain[-1] in cluster_parent:
                chain.append(int(cluster_parent[chain[-1]]))
            chains.append(chain[::-1])
        common = chains[0]
        for ch in chains[1:]:
            i = 0
            while i < min(len(common), len(ch)) and common[i] == ch[i]:
                i += 1
            common = common[:i]
        nodes[int(lab)] = common[-1]
    return nodes


def _persistence(tree: np.ndarray, n_points: int, labels: np.ndarray) -> dict[int, float]:
    """HDBSCAN stability of each flat cluster, relative to the most stable one (0..1]."""
    if labels.max() < 0:
        return {}
    cluster_parent, birth, point_cluster, point_lambda = _tree_parts(tree, n_points)
    node_of = _node_of_labels(labels, point_cluster, cluster_parent)
    raw = {}
    for lab, node in node_of.items():
        members = labels == lab
        raw[lab] = float(np.sum(np.maximum(point_lambda[members] - birth.get(node, 0.0), 0.0)))
    top = max(raw.values()) or 1.0
    return {lab: round(v / top, 4) for lab, v in raw.items()}


# ---------------------------------------------------------------------- describer


class CtfidfDescriber:
    """Keywords by class-based TF-IDF and an attribute profile with lift, per segment
    (`describe_segments`); groups under `min_group_size` are withheld (k-anonymity)."""

    def __init__(self, *, min_group_size: int = 0, top_n: int = 10) -> None:
        self.min_group_size, self.top_n = min_group_size, top_n

    def describe(
        self,
        labels: np.ndarray,
        docs: Sequence[str],
        attributes: Sequence[Mapping[str, float | str | bool]],
        *,
        groups: Mapping[Hashable, Sequence[int]] | None = None,
        embed: Embed | None = None,
    ) -> dict[Any, SegmentDescription]:
        return describe_segments(
            labels,
            docs,
            attributes,
            top_n=self.top_n,
            min_group_size=self.min_group_size,
            groups=groups,
            embed=embed,
        )

    def __repr__(self) -> str:
        return f"c-tf-idf(top {self.top_n})"
