"""Building a segment model: sample -> project (PCA) -> reduce -> cluster -> place everyone
-> stable ids -> describe. Stages are objects (see _stages.py); the builder knows no store:
what it needs of the stored users comes in a `Population`.

    sample     the clustering is fitted on a random sample (default 20,000 users); every
               other user is placed afterwards, so a million users cost one projection
               and one k-NN search, not a million-point clustering
    project    PCA to `pca_dims` (persisted: it places users for the k-NN assignment)
    reduce     the reducer's space for the clusterer (default UMAP, cosine, to 5 dims)
    cluster    the clusterer labels the fit sample (default HDBSCAN; k-means for exactly K)
    place      an outlier of the fit, and every user outside the sample, joins the segment
               most of its k nearest clustered fit users (in PCA space) belong to when that
               share is at least `min_vote`; otherwise it stays an outlier. The placer runs
               here or on Ray (_place.py)
    ids        matched to the previous model's segments by member overlap (_ids.py)
    describe   the describer on a uniform sample of at most 30,000 users
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .._errors import PreconditionFailed
from .._types import Progress
from ._ids import match_segments
from ._model import Segment, SegmentModel, project, used_dims
from ._params import SegmentParams
from ._place import LocalPlacer, Placer
from ._stages import Clusterer, Describer, FitSample, Reducer, Stages, default_stages

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

        t0 = time.perf_counter()
        space = self.stages.reducer.reduce(FitSample(sample, fit_coords, progress))
        if space is not fit_coords:
            timings["reduce_s"] = time.perf_counter() - t0
        if progress:
            progress("reduce", 2, 3)

        t0 = time.perf_counter()
        found = self.stages.clusterer.cluster(space)
        fit_labels = np.asarray(found.labels, np.int32)
        timings["cluster_s"] = time.perf_counter() - t0
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
        )

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
        old_members: dict[str, np.ndarray] = {}
        next_number = 1
        if previous is not None:
            next_number = int(previous.stats.get("next_number", 1))
            for seg in previous.segments:
                mem = previous.member_iids[previous.member_labels == seg.label]
                old_members[seg.segment_id] = np.sort(mem)
        id_of, status, lineage, next_number = match_segments(new_members, old_members, next_number)

        t1 = time.perf_counter()
        described = self._describe(users, labels)
        if progress:
            progress("describe", 1, 1)

        segments = []
        n = len(iids)
        for lab, members in new_members.items():
            rows_of = np.flatnonzero(labels == lab)
            z = clustering.coords[rows_of]
            centre = z.mean(axis=0)
            centre /= np.linalg.norm(centre) or 1.0
            sims = z @ centre
            top = rows_of[np.argsort(-sims)[:EXEMPLARS]]
            d = described.get(lab)
            segments.append(
                Segment(
                    segment_id=id_of[lab],
                    label=lab,
                    size=len(members),
                    share=len(members) / n,
                    keywords=d.keywords if d else [],
                    exemplar_user_ids=[
                        users.user_id[int(iids[j])] for j in top if int(iids[j]) in users.user_id
                    ],
                    persistence=clustering.persistence.get(lab, 0.0),
                    cohesion=round(float(sims.mean()), 4),
                    status=status[lab][0],
                    parents=status[lab][1],
                    attribute_profile=d.attribute_profile if d else {},
                )
            )
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
            **{k: round(v, 2) for k, v in clustering.timings.items()},
            "describe_s": round(time.perf_counter() - t1, 2),
            "stages": self.stages.names(),
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
        )
        log.info(
            "Segments - Completed: %d segments, %.1f%% outliers, %.1fs",
            len(segments),
            100 * outliers,
            seconds,
        )
        return model

    def _describe(self, users: Population, labels: np.ndarray) -> dict:
        """The describer on a uniform sample of users (texts and attributes from the store)."""
        iids = users.iids
        rng = np.random.default_rng(self.params.seed)
        pick = np.sort(rng.choice(len(iids), size=min(len(iids), DESCRIBE_SAMPLE), replace=False))
        rows = users.texts_and_attributes(iids[pick].tolist())
        keep = [j for j in pick if int(iids[j]) in rows]
        docs = ["\n".join(t[0] for t in rows[int(iids[j])][0]) for j in keep]
        attrs = [rows[int(iids[j])][1] for j in keep]
        return self.stages.describer.describe(labels[keep], docs, attrs)


def with_text_dims(params: SegmentParams, text_dims: int, attribute_dims: int) -> SegmentParams:
    """`params` set to cluster on the text channels only (the leading `text_dims`), unless it
    asks to use attributes or there are none."""
    if params.use_attributes or not attribute_dims:
        return params
    return replace(params, dims_used=text_dims)
