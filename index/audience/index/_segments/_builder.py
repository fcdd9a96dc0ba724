"""Building a segment model: sample -> project (PCA) -> reduce -> cluster -> place everyone
-> stable ids -> describe. Stages are objects (see _stages.py); the builder knows no store:
what it needs of the stored users comes in a `Population`.

    sample     the clustering is fitted on a random sample (default 20,000 users); every
               other user is placed afterwards, so a million users cost one projection
               and one k-NN search, not a million-point clustering
    project    PCA to `pca_dims` (persisted: it places users for the k-NN assignment)
    reduce     the reducer's space for the clusterer (default UMAP, cosine, to 5 dims)
    cluster    the clusterer labels the fit sample (default HDBSCAN). Asked for exactly K
               with the default stages, the build runs every method of _choose.py and keeps
               the one a label-free criterion prefers (`params.method` forces one)
    place      an outlier of the fit, and every user outside the sample, joins the segment
               most of its k nearest clustered fit users (in PCA space) belong to when that
               share is at least `min_vote`; otherwise it stays an outlier. The placer runs
               here or on Ray (_place.py)
    ids        matched to the previous model's segments by member overlap (_ids.py)
    tree       segments merged by Ward's criterion into groups, coarse to fine (_tree.py);
               groups get ids (grp-NNNN) matched to the previous model's groups the same way
    describe   the describer on a uniform sample of at most 30,000 users, segments and
               groups alike
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from .._errors import PreconditionFailed
from .._types import Progress
from ._choose import Choice, choose
from ._describe import SegmentDescription
from ._ids import match_segments
from ._keywords import term_gram
from ._model import Segment, SegmentModel, project, used_dims
from ._params import SegmentParams
from ._parts import Parts
from ._place import LocalPlacer, Placer
from ._stages import (
    Clusterer,
    ClusterResult,
    Describer,
    FitSample,
    HdbscanClusterer,
    KMeansClusterer,
    Reducer,
    Stages,
    UmapReducer,
    default_stages,
    relabel,
)
from ._tree import SegmentTree

log = logging.getLogger("audience.index")

MIN_USERS = 20
DESCRIBE_SAMPLE = 30_000
EXEMPLARS = 5
CHUNK = 100_000  # users projected / assigned between two progress reports


@dataclass(frozen=True)
class Population:
    """The users to segment, as the engine saw them when the build started."""

    iids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32 user vectors, exact
    user_id: dict[int, str]  # iid -> user id
    # iids -> {iid: (texts as [[text, weight, timestamp]], attributes)} of those still stored
    texts_and_attributes: Callable[[Sequence[int]], dict[int, tuple[list, dict]]]
    sequence: int = 0  # the store's sequence when the vectors were read
    embed_terms: Callable[[Sequence[str]], np.ndarray] | None = None  # keywords' diversity


@dataclass
class Clustering:
    """Every user's label, and what the model keeps to place users later."""

    labels: np.ndarray  # per input row; -1 = outlier
    strength: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    fit_index: np.ndarray  # rows of the input that formed the fit sample
    fit_coords: np.ndarray
    fit_labels: np.ndarray
    persistence: dict[int, float]
    coords: np.ndarray  # every user in PCA space (normalised), for exemplars and cohesion
    timings: dict[str, float]
    choice: Choice | None = None  # how a build asked for K found its segments


class SegmentBuilder:
    """`SegmentBuilder(params, reducer=..., clusterer=..., describer=...)`; a stage left None
    is the default that `params` asks for (`default_stages`)."""

    def __init__(
        self,
        params: SegmentParams | None = None,
        *,
        reducer: Reducer | None = None,
        clusterer: Clusterer | None = None,
        describer: Describer | None = None,
        min_group_size: int = 0,
        placer: Placer | None = None,
    ) -> None:
        self.params = params or SegmentParams()
        self.placer = placer or LocalPlacer()  # where the users outside the sample are placed
        # Asked for K with the default stages: the methods of _choose.py compete.
        self.choosing = self.params.target_segments > 0 and not (reducer or clusterer)
        self.choosing &= self.params.reducer == "umap"
        default = default_stages(self.params, min_group_size=min_group_size)
        self.stages = Stages(
            reducer or default.reducer,
            clusterer or default.clusterer,
            describer or default.describer,
        )

    # ------------------------------------------------------------ the numeric part

    def cluster(self, vectors: np.ndarray, progress: Progress | None = None) -> Clustering:
        """Label user vectors (n, D): sample, project, reduce, cluster, place everyone."""
        from sklearn.utils.extmath import randomized_svd

        params = self.params
        timings: dict[str, float] = {}
        rng = np.random.default_rng(params.seed)
        n = len(vectors)
        fit_index = np.sort(rng.choice(n, size=min(n, params.sample_size), replace=False))
        t0 = time.perf_counter()
        sample = used_dims(np.asarray(vectors[fit_index], dtype=np.float32), params.dims_used)
        mean = sample.mean(axis=0)
        dims = min(params.pca_dims, sample.shape[1], len(sample) - 1)
        _, _, vt = randomized_svd(
            sample - mean, n_components=dims, n_iter=4, random_state=params.seed
        )
        parts = []
        for s in range(0, n, CHUNK):
            parts.append(project(used_dims(vectors[s : s + CHUNK], params.dims_used), mean, vt))
            if progress:
                progress("project", min(s + CHUNK, n), n)
        coords = np.concatenate(parts)
        fit_coords = coords[fit_index]
        timings["reduce_pca_s"] = time.perf_counter() - t0
        if progress:
            progress("reduce", 1, 3)

        choice = None
        fit = FitSample(sample, fit_coords, progress)
        if self.choosing:
            t0 = time.perf_counter()
            choice = choose(self._methods(fit), sample, params.seed, params.target_segments)
            found = next(c.result for c in choice.candidates if c.method == choice.method)
            timings["cluster_s"] = time.perf_counter() - t0
            log.info("Segments - Method: %s (%s)", choice.method, choice.reason)
        else:
            t0 = time.perf_counter()
            space = self.stages.reducer.reduce(fit)
            if space is not fit_coords:
                timings["reduce_s"] = time.perf_counter() - t0
            if progress:
                progress("reduce", 2, 3)
            t0 = time.perf_counter()
            found = self.stages.clusterer.cluster(space)
            timings["cluster_s"] = time.perf_counter() - t0
        fit_labels = np.asarray(found.labels, np.int32)
        if progress:
            progress("cluster", 1, 1)

        # Outliers of the fit, then everyone else: majority of the k nearest clustered users.
        t0 = time.perf_counter()
        clustered = fit_labels >= 0
        labels = np.full(n, -1, np.int32)
        strength = np.zeros(n, np.float32)
        labels[fit_index] = fit_labels
        strength[fit_index] = np.where(clustered, found.strength, 0.0)
        todo = np.ones(n, bool)
        todo[fit_index[clustered]] = False
        idx = np.flatnonzero(todo)
        labels[idx], strength[idx] = self.placer.place(
            fit_coords[clustered], fit_labels[clustered], coords[idx], params.knn,
            params.min_vote, progress,
        )  # fmt: skip
        timings["assign_s"] = time.perf_counter() - t0
        return Clustering(
            labels,
            strength,
            mean,
            vt,
            fit_index,
            fit_coords,
            labels[fit_index],
            found.persistence,
            coords,
            timings,
            choice,
        )

    def _methods(self, fit: FitSample) -> dict[str, Callable[[], ClusterResult]]:
        """The candidates for exactly K segments (all of them, or the one asked for)."""
        p = self.params
        k = p.target_segments
        kmeans = KMeansClusterer(k, seed=p.seed)
        umap_of = partial(UmapReducer, dims=p.umap_dims, neighbors=p.umap_neighbors, seed=p.seed)
        hdbscan = HdbscanClusterer(
            min_cluster_size=p.min_cluster_size, min_samples=p.min_samples, backend=p.backend
        )

        def tree() -> ClusterResult:
            found = hdbscan.cluster(umap_of(on="pca").reduce(fit))
            n = int(found.labels.max()) + 1
            if n == k:
                return found
            if n < k:  # the tree's level with k nodes lies below the segments: among parts,
                # here down to half the smallest segment (K was asked for)
                min_part = max(5, self._min_cluster_size(len(fit.pca)) // 2)
                parts = Parts.fit(fit.pca, found.labels, min_part=min_part, splits=k - n)
                labels = relabel(parts.leaves(fit.pca, found.labels))
                count = int(labels.max()) + 1
                return ClusterResult(labels, found.strength, dict.fromkeys(range(count), 1.0))
            cut = SegmentTree.of(*_centres(fit.pca, found.labels, n)).cut(k)
            labels = np.array([cut[lab] if lab >= 0 else -1 for lab in found.labels], np.int32)
            return ClusterResult(relabel(labels), found.strength, dict.fromkeys(range(k), 1.0))

        runs = {
            "kmeans": lambda: kmeans.cluster(fit.vectors),
            "umap-kmeans": lambda: kmeans.cluster(umap_of(on="vectors").reduce(fit)),
            "tree": tree,
        }
        return runs if p.method == "auto" else {p.method: runs[p.method]}

    def _stage_names(self, choice: Choice | None) -> dict[str, str]:
        """What ran: the stages, or for a build that chose its method, that method's."""
        names = self.stages.names()
        if choice is None:
            return names
        p = self.params
        umap = f"{p.umap_dims} dims, {p.umap_neighbors} neighbours"
        hdbscan = HdbscanClusterer(min_cluster_size=p.min_cluster_size, min_samples=p.min_samples)
        names["reducer"], names["clusterer"] = {
            "kmeans": ("none (the vectors)", f"kmeans(k={p.target_segments})"),
            "umap-kmeans": (f"umap(of vectors, {umap})", f"kmeans(k={p.target_segments})"),
            "tree": (
                f"umap(of pca, {umap})",
                f"{hdbscan!r} cut at {p.target_segments} by the segment tree",
            ),
        }[choice.method]
        return names

    # ------------------------------------------------------------ the whole build

    def build(
        self,
        users: Population,
        previous: SegmentModel | None = None,
        progress: Progress | None = None,
    ) -> SegmentModel:
        """A new segment model over `users` (not saved), its ids matched to `previous`."""
        t0 = time.perf_counter()
        iids = users.iids
        if len(iids) < MIN_USERS:
            raise PreconditionFailed(
                f"segments need at least {MIN_USERS} users; {len(iids)} are stored"
            )
        log.info("Segments - Start (%d users; %s)", len(iids), self.stages.names())
        clustering = self.cluster(users.vectors, progress)
        labels = clustering.labels

        new_members = {
            int(lab): np.sort(iids[labels == lab]) for lab in np.unique(labels) if lab >= 0
        }
        t1 = time.perf_counter()
        keep = self._describe_rows(users)
        sample = (labels[keep[0]], *keep[1:])
        gram = term_gram(sample[0], sample[1], len(new_members))
        tree = (
            SegmentTree.of_gram(gram, np.ones(len(gram)))
            if gram is not None
            else SegmentTree.of(*_centres(clustering.coords, labels, len(new_members)))
        )
        under = tree.groups()  # node -> its segments' labels
        group_members = {
            node: np.sort(np.concatenate([new_members[lab] for lab in held]))
            for node, held in under.items()
        }
        stats_before = previous.stats if previous is not None else {}
        old = _old_members(previous)
        id_of, status, lineage, next_number = match_segments(
            new_members, old[0], int(stats_before.get("next_number", 1))
        )
        group_id, group_status, _, next_group = match_segments(
            group_members, old[1], int(stats_before.get("next_group_number", 1)), prefix="grp"
        )
        id_of.update(group_id)
        status.update(group_status)

        embed = _remembered(users.embed_terms)  # the parts' terms are mostly the segments'
        described = self.stages.describer.describe(*sample, groups=under, embed=embed)
        if progress:
            progress("describe", 1, 1)

        parent = tree.parent()
        children = tree.children()
        order = {g: i + 1 for i, g in enumerate(sorted(under, reverse=True))}  # coarsest first
        parts = Parts.fit(
            clustering.fit_coords,
            labels[clustering.fit_index],
            min_part=self._min_cluster_size(len(clustering.fit_index)),
            seed=self.params.seed,
        )
        split_of = parts.split_of()
        n = len(iids)
        node = partial(_Node, clustering.coords, iids, users.user_id, n)
        segments, groups = [], []
        for lab in [*new_members, *group_members]:
            held = under.get(lab, [lab])
            split = split_of.get(("segment", lab))
            seg = node(np.isin(labels, held), described.get(lab)).segment(
                segment_id=id_of[lab],
                label=lab,
                persistence=clustering.persistence.get(lab, 0.0),
                status=status[lab][0],
                parents=status[lab][1],
                kind="group" if lab in under else "segment",
                parent_id=id_of[parent[lab]] if lab in parent else "",
                children=[id_of[c] for c in children[lab]] if lab in under else [],
                leaf_labels=list(held) if lab in under else [],
                split_order=order[lab] if lab in under else 0,
            )
            if split is not None:
                seg.split_order = len(order) + split + 1
            (groups if lab in under else segments).append(seg)
        part_labels = parts.place(clustering.coords, labels)
        part_nodes, next_part = self._parts(
            parts, part_labels, keep, iids, embed, node, id_of, previous, len(order) + 1
        )
        for seg in segments:
            seg.children = [p.segment_id for p in part_nodes if p.parent_id == seg.segment_id]
        groups.sort(key=lambda g: -g.label)  # the coarsest (latest merge) first
        segments.sort(key=lambda s: -s.size)
        outliers = float((labels < 0).mean())
        seconds = round(time.perf_counter() - t0, 2)
        build_number = int(previous.stats.get("build", 0)) + 1 if previous else 1
        stats = {
            "users": n,
            "fit_users": len(clustering.fit_index),
            "segments": len(segments),
            "outlier_share": round(outliers, 4),
            "seconds": seconds,
            "next_number": next_number,
            "next_group_number": next_group,
            "next_part_number": next_part,
            "parts": parts.to_json(),
            "tree": tree.to_json(),
            "choice": clustering.choice.summary() if clustering.choice else None,
            **{k: round(v, 2) for k, v in clustering.timings.items()},
            "describe_s": round(time.perf_counter() - t1, 2),
            "stages": self._stage_names(clustering.choice),
            "build": build_number,
            "store_sequence": users.sequence,
        }
        version = f"v{build_number:06d}-{time.strftime('%Y%m%dT%H%M%S')}"  # sorts by build
        model = SegmentModel(
            version=version,
            params=self.params,
            segments=segments,
            pca_mean=clustering.pca_mean,
            pca_components=clustering.pca_components,
            fit_coords=clustering.fit_coords,
            fit_labels=clustering.fit_labels,
            member_iids=iids,
            member_labels=labels,
            member_strength=clustering.strength,
            lineage=lineage,
            stats=stats,
            groups=groups,
            parts=part_nodes,
            member_parts=part_labels,
            part_centres=parts.centres,
        )
        log.info(
            "Segments - Completed: %d segments, %.1f%% outliers, %.1fs",
            len(segments),
            100 * outliers,
            seconds,
        )
        return model

    def _describe_rows(self, users: Population) -> tuple[np.ndarray, list[str], list[dict]]:
        """(rows, documents, attributes) of a uniform sample of users still stored, what the
        describer and the tree read."""
        iids = users.iids
        rng = np.random.default_rng(self.params.seed)
        pick = np.sort(rng.choice(len(iids), size=min(len(iids), DESCRIBE_SAMPLE), replace=False))
        rows = users.texts_and_attributes(iids[pick].tolist())
        keep = np.array([j for j in pick if int(iids[j]) in rows], np.int64)
        docs = ["\n".join(t[0] for t in rows[int(iids[j])][0]) for j in keep]
        attrs = [rows[int(iids[j])][1] for j in keep]
        return keep, docs, attrs

    def _min_cluster_size(self, fit_users: int) -> int:
        return self.params.min_cluster_size or max(10, fit_users // 100)

    def _parts(
        self,
        parts: Parts,
        part_labels: np.ndarray,
        sample: tuple[np.ndarray, list[str], list[dict]],
        iids: np.ndarray,
        embed: Callable[[Sequence[str]], np.ndarray] | None,
        node: Callable[..., _Node],
        id_of: dict[int, str],
        previous: SegmentModel | None,
        first_order: int,
    ) -> tuple[list[Segment], int]:
        """The sub-segments as nodes of the tree: described, with ids kept from the previous
        model's parts of the same segment."""
        leaves = parts.leaves_under()
        inner = {p: held for p, held in leaves.items() if held != [p]}
        described = self.stages.describer.describe(
            part_labels[sample[0]], *sample[1:], groups=inner, embed=embed
        )
        segment_of_part = parts.segment_of_part()
        split_of = parts.split_of()
        members = {p: np.sort(iids[np.isin(part_labels, held)]) for p, held in leaves.items()}
        old = _old_parts(previous)
        part_id: dict[int, str] = {}
        status: dict[int, tuple[str, list[str]]] = {}
        number = int(previous.stats.get("next_part_number", 1)) if previous else 1
        for lab in sorted(set(segment_of_part.tolist())):
            mine = {p: members[p] for p in members if segment_of_part[p] == lab}
            got, st, _, number = match_segments(mine, old.get(id_of[lab], {}), number, prefix="sub")
            part_id.update(got)
            status.update(st)
        out = []
        for i, s in enumerate(parts.splits):
            above = id_of[s.node] if s.kind == "segment" else part_id[s.node]
            for p in (2 * i, 2 * i + 1):
                split = split_of.get(("part", p))
                below = [part_id[2 * split], part_id[2 * split + 1]] if split is not None else []
                out.append(
                    node(np.isin(part_labels, leaves[p]), described.get(p)).segment(
                        segment_id=part_id[p],
                        label=p,
                        status=status[p][0],
                        parents=status[p][1],
                        kind="part",
                        parent_id=above,
                        children=below,
                        leaf_labels=leaves[p] if split is not None else [],
                        split_order=first_order + split if split is not None else 0,
                    )
                )
        return out, number


@dataclass
class _Node:
    """What every node of the tree is described by: size, exemplars, cohesion, the
    describer's keywords and profile."""

    coords: np.ndarray  # every user in the model's PCA space
    iids: np.ndarray
    user_id: dict[int, str]
    n: int
    inside: np.ndarray  # (n,) bool: the node's users
    described: SegmentDescription | None

    def segment(self, **fields) -> Segment:
        rows = np.flatnonzero(self.inside)
        z = self.coords[rows]
        centre = z.mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        sims = z @ centre
        top = rows[np.argsort(-sims)[:EXEMPLARS]]
        d = self.described
        return Segment(
            size=len(rows),
            share=len(rows) / self.n,
            keywords=d.keywords if d else [],
            exemplar_user_ids=[
                self.user_id[int(self.iids[j])] for j in top if int(self.iids[j]) in self.user_id
            ],
            cohesion=round(float(sims.mean()), 4),
            attribute_profile=d.attribute_profile if d else {},
            name=d.name if d else "",
            **fields,
        )


def _centres(coords: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean of each label's rows, member count), labels 0..n-1."""
    sizes = np.bincount(labels[labels >= 0], minlength=n).astype(np.float64)
    sums = np.zeros((n, coords.shape[1]))
    np.add.at(sums, labels[labels >= 0], coords[labels >= 0])
    return sums / np.maximum(sizes, 1)[:, None], sizes


def _old_members(previous: SegmentModel | None) -> tuple[dict, dict]:
    """The previous model's members per segment id and per group id."""
    if previous is None:
        return {}, {}
    of_label = {
        seg.label: np.sort(previous.member_iids[previous.member_labels == seg.label])
        for seg in previous.segments
    }
    leaves = {seg.segment_id: of_label[seg.label] for seg in previous.segments}
    grouped = {
        g.segment_id: np.sort(np.concatenate([of_label[lab] for lab in g.leaf_labels]))
        for g in previous.groups
    }
    return leaves, grouped


def _remembered(
    embed: Callable[[Sequence[str]], np.ndarray] | None,
) -> Callable[[Sequence[str]], np.ndarray] | None:
    """`embed`, each term encoded once however often it is asked for."""
    if embed is None:
        return None
    seen: dict[str, np.ndarray] = {}

    def terms(wanted: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(wanted) if t not in seen]
        if new:
            seen.update(zip(new, np.asarray(embed(new), dtype=np.float32)))
        return np.array([seen[t] for t in wanted], dtype=np.float32)

    return terms


def _old_parts(previous: SegmentModel | None) -> dict[str, dict[str, np.ndarray]]:
    """The previous model's parts' members, per the id of the segment they lie in."""
    if previous is None:
        return {}
    seg_of = {p.segment_id: p.parent_id for p in previous.parts}
    out: dict[str, dict[str, np.ndarray]] = {}
    for p in previous.parts:
        top = p.parent_id
        while top in seg_of:
            top = seg_of[top]
        held = p.leaf_labels or [p.label]
        mine = previous.member_iids[np.isin(previous.member_parts, held)]
        out.setdefault(top, {})[p.segment_id] = np.sort(mine)
    return out


def with_text_dims(params: SegmentParams, text_dims: int, attribute_dims: int) -> SegmentParams:
    """`params` set to cluster on the text channels only (the leading `text_dims`), unless it
    asks to use attributes or there are none."""
    if params.use_attributes or not attribute_dims:
        return params
    return replace(params, dims_used=text_dims)
