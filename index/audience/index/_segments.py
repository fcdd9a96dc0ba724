"""Segments: reduce -> HDBSCAN -> handle noise -> stable ids, fitted offline, served online.

    sample     the clustering is fitted on a random sample (default 20,000 users); every
               other user is assigned afterwards, so a million users cost one projection
               and one k-NN search, not a million-point HDBSCAN
    reduce     PCA to `pca_dims` (persisted: it places users for the k-NN assignment below),
               then UMAP (cosine) to `umap_dims` for the clustering only
    cluster    HDBSCAN (fast_hdbscan, or the hdbscan package) on UMAP of the PCA
               coordinates; min_cluster_size defaults to 1% of the sample, so HDBSCAN decides
               how many segments there are. With `target_segments`: k-means with that k on
               UMAP of the full vectors instead. Measured offline on the sample (NMI against
               the labels): THUCNews 10 topics 0.43, against 0.32 merging HDBSCAN clusters
               along the condensed tree and 0.35 for k-means on UMAP of the PCA coordinates;
               StackOverflow 20 tags 0.74 (0.76 merging). Without a target, HDBSCAN on UMAP of
               the full vectors found 2 segments on THUCNews, so it keeps the PCA input
    noise      an outlier, and every user outside the sample, joins the segment most of its
               k nearest clustered neighbours (in PCA space) belong to when that share is at
               least `min_vote`; otherwise it stays an outlier
    ids        a rebuild matches new segments to the old ones by member overlap (Jaccard)
               and keeps their ids; the lineage (kept, split, merged, new, gone) is recorded

The model is saved as JSON + .npz of plain arrays with a sha256 manifest; never pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from ._durable import write_durably

log = logging.getLogger("audience.index")

Progress = Callable[[str, int, int], None]
KEEP_MODELS = 2  # segment model versions kept on disk (the current one and one before)


@dataclass(frozen=True)
class SegmentParams:
    reducer: str = "umap"  # "umap" | "pca": the space HDBSCAN runs in
    pca_dims: int = 50
    umap_dims: int = 5
    umap_neighbors: int = 15
    min_cluster_size: int | None = None  # None: 1% of the fit sample, at least 10
    min_samples: int = 30  # tuned on the StackOverflow titles (NMI 0.77 vs 0.75 at 15)
    target_segments: int = 0  # 0: HDBSCAN decides
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
        if self.reducer not in ("umap", "pca"):
            raise ValueError("reducer must be umap or pca")
        if self.backend not in ("fast_hdbscan", "hdbscan"):
            raise ValueError("backend must be fast_hdbscan or hdbscan")
        if self.target_segments < 0 or self.sample_size < 50 or self.pca_dims < 2:
            raise ValueError("target_segments >= 0, sample_size >= 50, pca_dims >= 2")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise ValueError("min_cluster_size must be >= 2")


# ---------------------------------------------------------------------- the fitted model


@dataclass
class Segment:
    segment_id: str
    label: int
    size: int
    share: float
    keywords: list[str] = field(default_factory=list)
    exemplar_user_ids: list[str] = field(default_factory=list)
    persistence: float = 0.0  # HDBSCAN stability, relative to the most stable segment
    cohesion: float = 0.0  # mean cosine of members to the segment centre (PCA space)
    status: str = "new"  # kept | split | merged | new
    parents: list[str] = field(default_factory=list)  # previous segment ids it came from
    attribute_profile: dict = field(default_factory=dict)


class SegmentModel:
    """Projection, the clustered fit sample (for k-NN assignment) and every user's label."""

    def __init__(
        self,
        *,
        version: str,
        params: SegmentParams,
        segments: list[Segment],
        pca_mean: np.ndarray,
        pca_components: np.ndarray,
        fit_coords: np.ndarray,
        fit_labels: np.ndarray,
        member_iids: np.ndarray,
        member_labels: np.ndarray,
        member_strength: np.ndarray,
        lineage: list[dict],
        stats: dict,
    ) -> None:
        self.version = version
        self.params = params
        self.segments = segments
        self.pca_mean = pca_mean.astype(np.float32)
        self.pca_components = pca_components.astype(np.float32)
        self.fit_coords = fit_coords.astype(np.float32)
        self.fit_labels = fit_labels.astype(np.int32)
        self.member_iids = member_iids.astype(np.int64)
        self.member_labels = member_labels.astype(np.int32)
        self.member_strength = member_strength.astype(np.float32)
        self.lineage = lineage
        self.stats = stats
        self.by_id = {s.segment_id: s for s in segments}
        self.by_label = {s.label: s for s in segments}
        clustered = self.fit_labels >= 0
        self._knn_labels = self.fit_labels[clustered]
        self._knn = faiss.IndexFlatIP(self.fit_coords.shape[1])
        self._knn.add(np.ascontiguousarray(self.fit_coords[clustered]))

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return _project(_used(vectors, self.params.dims_used), self.pca_mean, self.pca_components)

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, strength) for user vectors; label -1 = outlier."""
        return _vote(
            self._knn,
            self._knn_labels,
            self.project(vectors),
            self.params.knn,
            self.params.min_vote,
        )

    # ------------------------------------------------------------------ persistence

    def save(self, root: Path) -> Path:
        """Write `root/<version>/` (model.json + arrays.npz) and point `root/CURRENT` at it."""
        target = root / self.version
        target.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(
            buf,
            pca_mean=self.pca_mean,
            pca_components=self.pca_components,
            fit_coords=self.fit_coords,
            fit_labels=self.fit_labels,
            member_iids=self.member_iids,
            member_labels=self.member_labels,
            member_strength=self.member_strength,
        )
        data = buf.getvalue()
        write_durably(target / "arrays.npz", data)
        doc = {
            "version": self.version,
            "params": asdict(self.params),
            "segments": [asdict(s) for s in self.segments],
            "lineage": self.lineage,
            "stats": self.stats,
            "arrays_sha256": hashlib.sha256(data).hexdigest(),
        }
        write_durably(target / "model.json", json.dumps(doc, ensure_ascii=False).encode())
        write_durably(root / "CURRENT", self.version.encode())
        for old in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True)[KEEP_MODELS:]:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        return target

    @classmethod
    def load(cls, root: Path, warnings: list[str] | None = None) -> SegmentModel | None:
        """The current model, or the newest earlier one that verifies if it is damaged
        (said so in the log and in `warnings`); None before any build."""
        current = root / "CURRENT"
        if not current.exists():
            return None
        name = current.read_text().strip()
        others = sorted(
            (p.name for p in root.iterdir() if p.is_dir() and p.name != name), reverse=True
        )
        for version in [name, *others]:
            try:
                return cls._load_version(root / version)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                note = f"segment model {version} unreadable ({exc}); fell back"
                log.error("Segments - %s", note)
                if warnings is not None:
                    warnings.append(note)
        return None

    @classmethod
    def _load_version(cls, target: Path) -> SegmentModel:
        doc = json.loads((target / "model.json").read_text())
        data = (target / "arrays.npz").read_bytes()
        if hashlib.sha256(data).hexdigest() != doc["arrays_sha256"]:
            raise ValueError(f"segment model {target.name} does not match its checksum")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(
            version=doc["version"],
            params=SegmentParams(**doc["params"]),
            segments=[Segment(**s) for s in doc["segments"]],
            lineage=doc["lineage"],
            stats=doc["stats"],
            **arrays,
        )


# ---------------------------------------------------------------------- fitting


@dataclass
class Clustering:
    """What `fit_clusters` returns: labels per user (aligned with the input order)."""

    labels: np.ndarray  # -1 = outlier
    strength: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    fit_index: np.ndarray  # rows of the input that formed the fit sample
    fit_coords: np.ndarray
    fit_labels: np.ndarray
    persistence: dict[int, float]
    coords: np.ndarray  # every user in PCA space (normalised), for exemplars and cohesion
    timings: dict[str, float]


def _used(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` dimensions (all when 0), rows L2-normalised again."""
    if not dims or dims >= vectors.shape[1]:
        return vectors
    part = np.array(vectors[:, :dims], dtype=np.float32)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    np.divide(part, norms, out=part, where=norms > 0)
    return part


def _project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    z = (np.asarray(vectors, dtype=np.float32) - mean) @ components.T
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    np.divide(z, norms, out=z, where=norms > 0)
    return np.ascontiguousarray(z, dtype=np.float32)


def _vote(
    index: faiss.Index, labels: np.ndarray, coords: np.ndarray, k: int, min_vote: float
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label among the k nearest clustered fit users; -1 below `min_vote`."""
    n = len(coords)
    if n == 0 or index.ntotal == 0:
        return np.full(n, -1, np.int32), np.zeros(n, np.float32)
    k = min(k, index.ntotal)
    out_l = np.empty(n, np.int32)
    out_s = np.empty(n, np.float32)
    for start in range(0, n, 50_000):
        _, nn = index.search(coords[start : start + 50_000], k)
        votes = labels[nn]  # (m, k)
        top = np.zeros(len(votes), np.int32)
        share = np.zeros(len(votes), np.float32)
        for c in np.unique(votes):
            s = (votes == c).mean(axis=1)
            better = s > share
            top[better], share[better] = c, s[better]
        out_l[start : start + len(votes)] = np.where(share >= min_vote, top, -1)
        out_s[start : start + len(votes)] = share
    return out_l, out_s


def fit_clusters(
    vectors: np.ndarray, params: SegmentParams, progress: Progress | None = None
) -> Clustering:
    """Cluster user vectors (n, D) into segments; see the module docstring."""
    from sklearn.utils.extmath import randomized_svd

    timings: dict[str, float] = {}
    rng = np.random.default_rng(params.seed)
    n = len(vectors)
    fit_index = np.sort(rng.choice(n, size=min(n, params.sample_size), replace=False))
    t0 = time.perf_counter()
    sample = _used(np.asarray(vectors[fit_index], dtype=np.float32), params.dims_used)
    mean = sample.mean(axis=0)
    dims = min(params.pca_dims, sample.shape[1], len(sample) - 1)
    _, _, vt = randomized_svd(sample - mean, n_components=dims, n_iter=4, random_state=params.seed)
    coords = np.concatenate(
        [
            _project(_used(vectors[s : s + 100_000], params.dims_used), mean, vt)
            for s in range(0, n, 100_000)
        ]
    )
    fit_coords = coords[fit_index]
    timings["reduce_pca_s"] = time.perf_counter() - t0
    if progress:
        progress("reduce", 1, 3)

    space = fit_coords
    if params.reducer == "umap" and len(fit_coords) > params.umap_neighbors + 2:
        import umap

        t0 = time.perf_counter()
        space = umap.UMAP(
            n_components=params.umap_dims,
            n_neighbors=params.umap_neighbors,
            min_dist=0.0,
            metric="cosine",
            random_state=params.seed,
            low_memory=True,
        ).fit_transform(sample if params.target_segments else fit_coords)
        timings["reduce_umap_s"] = time.perf_counter() - t0
    if progress:
        progress("reduce", 2, 3)

    t0 = time.perf_counter()
    if params.target_segments:
        fit_labels, probs, persistence = _kmeans(space, params.target_segments, params.seed)
    else:
        mcs = min(params.min_cluster_size or max(10, len(fit_coords) // 100), len(fit_coords))
        fit_labels, probs, tree = _hdbscan(space, mcs, params)
        fit_labels = _relabel(fit_labels)
        persistence = _persistence(tree, len(space), fit_labels)
    timings["cluster_s"] = time.perf_counter() - t0
    if progress:
        progress("cluster", 1, 1)

    # Outliers of the fit, then everyone else: majority of the k nearest clustered users.
    t0 = time.perf_counter()
    clustered = fit_labels >= 0
    knn = faiss.IndexFlatIP(fit_coords.shape[1])
    knn.add(np.ascontiguousarray(fit_coords[clustered]))
    labels = np.full(n, -1, np.int32)
    strength = np.zeros(n, np.float32)
    labels[fit_index] = fit_labels
    strength[fit_index] = np.where(clustered, probs, 0.0)
    todo = np.ones(n, bool)
    todo[fit_index[clustered]] = False
    idx = np.flatnonzero(todo)
    voted, share = _vote(knn, fit_labels[clustered], coords[idx], params.knn, params.min_vote)
    labels[idx], strength[idx] = voted, share
    fit_final = labels[fit_index]
    timings["assign_s"] = time.perf_counter() - t0
    return Clustering(
        labels, strength, mean, vt, fit_index, fit_coords, fit_final, persistence, coords, timings
    )


def _kmeans(space: np.ndarray, k: int, seed: int):
    """k-means with exactly min(k, n) segments: (labels, strength, persistence).

    strength = 1 - d(own centre) / d(second centre), in [0, 1]; a segment's persistence is
    its members' mean strength relative to the segment with the highest."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(space)))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(space)
    dist = km.transform(space)
    labels = km.labels_.astype(np.int32)
    if k > 1:
        part = np.partition(dist, 1, axis=1)
        strength = 1.0 - part[:, 0] / np.maximum(part[:, 1], 1e-12)
    else:
        strength = np.ones(len(space))
    labels = _relabel(labels)
    means = {int(c): float(strength[labels == c].mean()) for c in np.unique(labels) if c >= 0}
    top = max(means.values(), default=1.0) or 1.0
    return labels, strength.astype(np.float32), {c: m / top for c, m in means.items()}


def _hdbscan(space: np.ndarray, mcs: int, params: SegmentParams):
    if params.backend == "hdbscan":
        import hdbscan

        h = hdbscan.HDBSCAN(
            min_cluster_size=mcs, min_samples=min(params.min_samples, mcs), core_dist_n_jobs=1
        ).fit(space)
    else:
        import fast_hdbscan

        h = fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min(params.min_samples, mcs))
        h.fit(space)
    return (
        h.labels_.astype(np.int32),
        h.probabilities_.astype(np.float32),
        h.condensed_tree_._raw_tree,
    )


def _relabel(labels: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------- stable ids


def match_segments(
    new_members: dict[int, np.ndarray], old_members: dict[str, np.ndarray], next_number: int
) -> tuple[dict[int, str], dict[int, tuple[str, list[str]]], list[dict], int]:
    """Give new clusters ids: the old id of the segment they mostly continue, else a new one.

    Returns (id per label, (status, parents) per label, lineage entries, next free number).
    """
    pairs = []
    for lab, mem in new_members.items():
        for sid, old in old_members.items():
            inter = len(np.intersect1d(mem, old, assume_unique=True))
            if inter:
                union = len(mem) + len(old) - inter
                pairs.append((inter / union, inter, lab, sid))
    pairs.sort(reverse=True)
    id_of: dict[int, str] = {}
    taken: set[str] = set()
    for jaccard, _, lab, sid in pairs:
        if jaccard >= 0.5 and lab not in id_of and sid not in taken:
            id_of[lab], _ = sid, taken.add(sid)
    status: dict[int, tuple[str, list[str]]] = {}
    for lab, mem in new_members.items():
        sources = [(inter, sid) for _, inter, lb, sid in pairs if lb == lab]
        sources.sort(reverse=True)
        parents = [sid for inter, sid in sources if inter >= 0.2 * len(mem)]
        if lab in id_of:
            status[lab] = ("kept", [id_of[lab]])
        else:
            id_of[lab] = f"seg-{next_number:04d}"
            next_number += 1
            if len(parents) >= 2:
                status[lab] = ("merged", parents)
            elif len(parents) == 1:
                status[lab] = ("split", parents)
            else:
                status[lab] = ("new", [])
    lineage = [
        {"segment_id": id_of[lab], "status": st, "parents": ps}
        for lab, (st, ps) in sorted(status.items())
    ]
    for sid in old_members:
        if sid not in taken:
            heirs = [id_of[lab] for lab, (st, ps) in status.items() if sid in ps]
            lineage.append({"segment_id": sid, "status": "gone", "children": heirs})
    return id_of, status, lineage, next_number
