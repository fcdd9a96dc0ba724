"""Segments: built offline from the user vectors, served online.

_params.py    SegmentParams: what a build is asked for (checked; saved with the model)
_builder.py   SegmentBuilder: sample -> project -> reduce -> cluster -> place -> ids ->
              describe, over a Population; knows no store
_stages.py    the swappable stages: reducers, clusterers, the describer; default_stages
_describe.py  keywords (c-TF-IDF) and attribute profiles per segment
_ids.py       stable ids across builds (member overlap) and lineage
_tree.py      SegmentTree: the groups above the segments (Ward merges), coarse to fine
_parts.py     Parts: the sub-segments below them (segments split in two, and again)
_model.py     SegmentModel: the fitted model, saved and loaded (JSON + .npz + sha256)
_place.py     where users outside the fit sample are placed: here, or on Ray
"""

from ._builder import Clustering, Population, SegmentBuilder, with_text_dims
from ._describe import SegmentDescription, describe_segments, segment_keywords
from ._model import Segment, SegmentBuild, SegmentList, SegmentModel, used_dims
from ._params import SegmentParams
from ._place import LocalPlacer, Placer, RayPlacer
from ._stages import (
    Clusterer,
    ClusterResult,
    CtfidfDescriber,
    Describer,
    FitSample,
    HdbscanClusterer,
    KMeansClusterer,
    PcaReducer,
    Reducer,
    Stages,
    UmapReducer,
    default_stages,
    umap_cosine,
)

__all__ = [
    "LocalPlacer",
    "Placer",
    "RayPlacer",
    "ClusterResult",
    "Clusterer",
    "Clustering",
    "CtfidfDescriber",
    "Describer",
    "FitSample",
    "HdbscanClusterer",
    "KMeansClusterer",
    "PcaReducer",
    "Population",
    "Reducer",
    "Segment",
    "SegmentBuild",
    "SegmentBuilder",
    "SegmentDescription",
    "SegmentList",
    "SegmentModel",
    "SegmentParams",
    "Stages",
    "UmapReducer",
    "default_stages",
    "describe_segments",
    "segment_keywords",
    "umap_cosine",
    "with_text_dims",
    "used_dims",
]
