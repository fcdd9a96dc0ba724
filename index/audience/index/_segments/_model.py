"""The fitted segment model: segments, the groups above them and the parts below them, the
projection users are placed in, the clustered fit sample (for k-NN assignment), every user's
label and leaf part; saved as JSON + .npz of plain arrays with a sha256 manifest, never pickle.

Placing a user (`SegmentModel.assign`, and every user outside the fit sample at build time):
the user's vector in the model's PCA space joins the segment most of its k nearest clustered
fit users belong to when that share is at least `min_vote`; otherwise it is an outlier.
`SegmentModel.place` then takes it down its segment's splits to a leaf part (_parts.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .._durable import read_sealed_json, seal_json, write_durably
from .._errors import UnknownSegment
from ._params import SegmentParams
from ._parts import Parts

log = logging.getLogger("audience.index")

KEEP_MODELS = 2  # segment model versions kept on disk (the current one and one before)


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
    name: str = ""  # from the top keywords, e.g. "bash / script / command"
    # "segment", "group" (of segments, above them in the tree) or "part" (a sub-segment:
    # part of a segment, below it; `label` is then the part's number)
    kind: str = "segment"
    parent_id: str = ""  # the node above it in the tree ("" at the top level)
    children: list[str] = field(default_factory=list)  # the two nodes below it, if split
    leaf_labels: list[int] = field(default_factory=list)  # a group's segments, a part's parts
    split_order: int = 0  # walking down the tree splits it n-th (1 first; 0: never)


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
        groups: list[Segment] | None = None,
        parts: list[Segment] | None = None,
        member_parts: np.ndarray | None = None,
        part_centres: np.ndarray | None = None,
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
        self.groups = list(groups or [])  # the tree's inner nodes, coarsest first
        self.parts = list(parts or [])  # the sub-segments, in the order they were split off
        # each member's leaf part (-1: an outlier, or in a segment that was not split)
        no_parts = np.full(len(self.member_iids), -1, np.int32)
        self.member_parts = no_parts if member_parts is None else member_parts.astype(np.int32)
        dims = self.pca_components.shape[0]
        centres = np.zeros((0, dims), np.float32) if part_centres is None else part_centres
        self.part_centres = centres.astype(np.float32)
        self._splits = Parts.from_json(stats.get("parts", []), self.part_centres)
        self.by_id = {s.segment_id: s for s in [*segments, *self.groups, *self.parts]}
        self.by_label = {s.label: s for s in segments}
        self.by_part = {s.label: s for s in self.parts}
        clustered = self.fit_labels >= 0
        self._knn_labels = self.fit_labels[clustered]
        self._knn = faiss.IndexFlatIP(self.fit_coords.shape[1])
        self._knn.add(np.ascontiguousarray(self.fit_coords[clustered]))

    def node(self, segment_id: str) -> Segment:
        """A node of the tree (segment, group or part) by id (UnknownSegment if none)."""
        seg = self.by_id.get(segment_id)
        if seg is None:
            raise UnknownSegment(f"segment_id: unknown segment {segment_id!r}")
        return seg

    def holds(self, segment_id: str) -> tuple[list[int], list[int]]:
        """(segment labels, leaf parts) of the users a node holds: a segment's or a group's
        segments, or a part's leaf parts (then no segment label)."""
        seg = self.node(segment_id)
        if seg.kind == "part":
            return [], list(seg.leaf_labels) or [seg.label]
        return (list(seg.leaf_labels) if seg.kind == "group" else [seg.label]), []

    def nodes(self) -> list[Segment]:
        """Every node of the tree: groups (coarsest first), segments, parts."""
        return [*self.groups, *self.segments, *self.parts]

    def project(self, vectors: np.ndarray) -> np.ndarray:
        used = used_dims(vectors, self.params.dims_used)
        return project(used, self.pca_mean, self.pca_components)

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, strength) for user vectors; label -1 = outlier."""
        return self._vote(self.project(vectors))

    def place(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, strength, leaf parts) for user vectors, as the build placed its users
        (part -1: an outlier, or in a segment that was not split)."""
        coords = self.project(vectors)
        labels, strength = self._vote(coords)
        return labels, strength, self._splits.place(coords, labels)

    def _vote(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return vote(self._knn, self._knn_labels, coords, self.params.knn, self.params.min_vote)

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
            member_parts=self.member_parts,
            part_centres=self.part_centres,
        )
        data = buf.getvalue()
        write_durably(target / "arrays.npz", data)
        doc = {
            "version": self.version,
            "params": asdict(self.params),
            "segments": [asdict(s) for s in self.segments],
            "groups": [asdict(s) for s in self.groups],
            "parts": [asdict(s) for s in self.parts],
            "lineage": self.lineage,
            "stats": self.stats,
            "arrays_sha256": hashlib.sha256(data).hexdigest(),
        }
        write_durably(target / "model.json", seal_json(doc))
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
        doc, sealed = read_sealed_json(target / "model.json", legacy_ok=True)
        if not sealed:  # written before model.json carried its checksum: seal it now
            write_durably(target / "model.json", seal_json(doc))
        data = (target / "arrays.npz").read_bytes()
        if hashlib.sha256(data).hexdigest() != doc["arrays_sha256"]:
            raise ValueError(f"segment model {target.name} does not match its checksum")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(
            version=doc["version"],
            params=SegmentParams(**doc["params"]),
            segments=[Segment(**s) for s in doc["segments"]],
            groups=[Segment(**s) for s in doc.get("groups", [])],  # none before the tree
            parts=[Segment(**s) for s in doc.get("parts", [])],  # none before sub-segments
            lineage=doc["lineage"],
            stats=doc["stats"],
            **arrays,
        )


def withdraw_exemplars(root: Path, erased: Callable[[str, dict], bool]) -> int:
    """Rewrite every saved model version under `root` without the exemplar ids for which
    `erased(user_id, model_stats)` is true; returns how many ids were withdrawn. A version
    that cannot be read is left as it is (loading falls back past it)."""
    withdrawn = 0
    for version in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else ():
        try:
            doc, _ = read_sealed_json(version / "model.json", legacy_ok=True)
        except (OSError, ValueError):
            continue
        gone = 0
        for seg in [*doc.get("segments", []), *doc.get("groups", []), *doc.get("parts", [])]:
            kept = [u for u in seg.get("exemplar_user_ids", []) if not erased(u, doc["stats"])]
            gone += len(seg.get("exemplar_user_ids", [])) - len(kept)
            seg["exemplar_user_ids"] = kept
        if gone:
            write_durably(version / "model.json", seal_json(doc))
            withdrawn += gone
    return withdrawn


@dataclass(frozen=True)
class SegmentList:
    model_version: str
    segments: list[Segment]
    groups: list[Segment] = field(default_factory=list)  # the tree's inner nodes
    method: str = ""
    method_reason: str = ""
    parts: list[Segment] = field(default_factory=list)  # sub-segments, below the segments

    @classmethod
    def of(cls, model: SegmentModel) -> SegmentList:
        how = model.stats.get("choice") or {}
        return cls(
            model.version,
            list(model.segments),
            list(model.groups),
            how.get("method", ""),
            how.get("reason", ""),
            list(model.parts),
        )


@dataclass(frozen=True)
class SegmentBuild:
    """What a segment build reports."""

    model_version: str
    segments: int
    users: int
    fit_users: int
    outlier_share: float
    seconds: float
    stages: dict[str, str]  # stage -> what ran, e.g. {"clusterer": "hdbscan(...)"}
    method: str = ""  # how the segments were found, e.g. "umap-kmeans"
    method_reason: str = ""  # why that method (a build asked for K chooses among several)
    groups: int = 0  # inner nodes of the segment tree
    parts: int = 0  # sub-segments below the segments

    @classmethod
    def of(cls, model: SegmentModel) -> SegmentBuild:
        s = model.stats
        choice = s.get("choice") or {}
        return cls(
            model_version=model.version,
            segments=s["segments"],
            users=s["users"],
            fit_users=s["fit_users"],
            outlier_share=s["outlier_share"],
            seconds=s["seconds"],
            stages=dict(s.get("stages", {})),
            method=choice.get("method", ""),
            method_reason=choice.get("reason", ""),
            groups=len(model.groups),
            parts=len(model.parts),
        )


# ---------------------------------------------------------------------- placing users


def used_dims(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` dimensions (all when 0), rows L2-normalised again."""
    if not dims or dims >= vectors.shape[1]:
        return vectors
    part = np.array(vectors[:, :dims], dtype=np.float32)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    np.divide(part, norms, out=part, where=norms > 0)
    return part


def project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    z = (np.asarray(vectors, dtype=np.float32) - mean) @ components.T
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    np.divide(z, norms, out=z, where=norms > 0)
    return np.ascontiguousarray(z, dtype=np.float32)


def vote(
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
