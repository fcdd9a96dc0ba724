"""audience.index: the engine (profile store, user encoder, vector index, lookalikes, segments).

    from audience.index import Engine, EngineConfig
    engine = Engine.open(EngineConfig(data_dir="./data"))

Names load on first use (PEP 562), so `import audience.index` is cheap and reading one
setting (`from audience.index import INDEX_KIND_SETTINGS`) does not load FAISS or a model.
Importing changes nothing outside this package (no environment, no logging settings).
The parts and which may use which: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the private module that defines it
_EXPORTS = {
    "DEFAULT_MODEL": "._config",
    "ENCODER_BACKENDS": "._config",
    "INDEX_KIND_SETTINGS": "._config",
    "INDEX_KINDS": "._config",
    "ONNX_VARIANTS": "._config",
    "SEGMENT_METHODS": "._config",
    "SEGMENT_REDUCERS": "._config",
    "STRATEGY_NAMES": "._config",
    "AttributeSpec": "._config",
    "EngineConfig": "._config",
    "Limits": "._config",
    "BackupResult": "._backup",
    "Published": "._publish",
    "GENERATION": "._publish",
    "DataDirLock": "._durable",
    "fetch_generation": "._publish",
    "read_current": "._publish",
    "RestoreResult": "._backup",
    "AudienceError": "._errors",
    "Cancelled": "._errors",
    "ConfigError": "._errors",
    "DataDamaged": "._errors",
    "IndexNotReady": "._errors",
    "InvalidQuery": "._errors",
    "LimitExceeded": "._errors",
    "PreconditionFailed": "._errors",
    "SegmentsNotBuilt": "._errors",
    "StorageFull": "._errors",
    "UnknownSegment": "._errors",
    "UnknownJob": "._errors",
    "UnknownUser": "._errors",
    "AttrValue": "._types",
    "DeleteResult": "._types",
    "Filter": "._types",
    "AudienceQuality": "._types",
    "LookalikeQuery": "._types",
    "SeedDiagnostics": "._types",
    "SeedInterest": "._types",
    "LookalikeResult": "._types",
    "LookalikeStream": "._types",
    "Membership": "._types",
    "Profile": "._types",
    "Progress": "._types",
    "ReachEstimate": "._types",
    "RebuildResult": "._types",
    "ScoredUser": "._types",
    "ScoredUsers": "._types",
    "Seed": "._types",
    "SnapshotResult": "._types",
    "Stats": "._types",
    "StoredUser": "._types",
    "TextItem": "._types",
    "UpsertResult": "._types",
    "FitResult": "._types",
    "PredictedValue": "._types",
    "PredictorInfo": "._types",
    "PredictQuery": "._types",
    "TagScore": "._types",
    "UserPrediction": "._types",
    "FIT_PREDICTORS": "._predicting",
    "Engine": "._engine",
    "Job": "._jobs",
    "JobRunner": "._jobs",
    "Catalog": "._catalog",
    "Validator": "._validate",
    "BatchTextEncoder": "._encode",
    "EncodedProfiles": "._encode",
    "EncoderExport": "._encode",
    "export_of": "._encode",
    "LexicalModel": "._encode",
    "OnnxEmbedder": "._encode",
    "ProfileEncoder": "._encode",
    "SentenceTransformerEmbedder": "._encode",
    "TextEmbedder": "._encode",
    "make_embedder": "._encode",
    "resolve_model_path": "._encode",
    "Background": "._background",
    "LookalikeScorer": "._lookalike",
    "Search": "._search",
    "SeedSet": "._search",
    "STRATEGIES": "._strategies",
    "Centroid": "._strategies",
    "SeedStrategy": "._strategies",
    "strategy_named": "._strategies",
    "Clusterer": "._segments",
    "CtfidfDescriber": "._segments",
    "Describer": "._segments",
    "HdbscanClusterer": "._segments",
    "KMeansClusterer": "._segments",
    "LocalPlacer": "._segments",
    "Placer": "._segments",
    "RayPlacer": "._segments",
    "PcaReducer": "._segments",
    "Population": "._segments",
    "Reducer": "._segments",
    "Segment": "._segments",
    "SegmentBuild": "._segments",
    "SegmentBuilder": "._segments",
    "SegmentList": "._segments",
    "SegmentModel": "._segments",
    "SegmentParams": "._segments",
    "UmapReducer": "._segments",
    "FlatIndex": "._vectors",
    "VectorIndex": "._vectors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._background import Background
    from ._backup import BackupResult, RestoreResult
    from ._catalog import Catalog
    from ._config import (
        DEFAULT_MODEL,
        ENCODER_BACKENDS,
        INDEX_KIND_SETTINGS,
        INDEX_KINDS,
        ONNX_VARIANTS,
        SEGMENT_METHODS,
        SEGMENT_REDUCERS,
        STRATEGY_NAMES,
        AttributeSpec,
        EngineConfig,
        Limits,
    )
    from ._durable import DataDirLock
    from ._encode import (
        BatchTextEncoder,
        EncodedProfiles,
        EncoderExport,
        LexicalModel,
        OnnxEmbedder,
        ProfileEncoder,
        SentenceTransformerEmbedder,
        TextEmbedder,
        export_of,
        make_embedder,
        resolve_model_path,
    )
    from ._engine import Engine
    from ._errors import (
        AudienceError,
        Cancelled,
        ConfigError,
        DataDamaged,
        IndexNotReady,
        InvalidQuery,
        LimitExceeded,
        PreconditionFailed,
        SegmentsNotBuilt,
        StorageFull,
        UnknownJob,
        UnknownSegment,
        UnknownUser,
    )
    from ._jobs import Job, JobRunner
    from ._lookalike import LookalikeScorer
    from ._predicting import FIT_PREDICTORS
    from ._publish import GENERATION, Published, fetch_generation, read_current
    from ._search import Search, SeedSet
    from ._segments import (
        Clusterer,
        CtfidfDescriber,
        Describer,
        HdbscanClusterer,
        KMeansClusterer,
        LocalPlacer,
        PcaReducer,
        Placer,
        Population,
        RayPlacer,
        Reducer,
        Segment,
        SegmentBuild,
        SegmentBuilder,
        SegmentList,
        SegmentModel,
        SegmentParams,
        UmapReducer,
    )
    from ._strategies import STRATEGIES, Centroid, SeedStrategy, strategy_named
    from ._types import (
        AttrValue,
        AudienceQuality,
        DeleteResult,
        Filter,
        FitResult,
        LookalikeQuery,
        LookalikeResult,
        LookalikeStream,
        Membership,
        PredictedValue,
        PredictorInfo,
        PredictQuery,
        Profile,
        Progress,
        ReachEstimate,
        RebuildResult,
        ScoredUser,
        ScoredUsers,
        Seed,
        SeedDiagnostics,
        SeedInterest,
        SnapshotResult,
        Stats,
        StoredUser,
        TagScore,
        TextItem,
        UpsertResult,
        UserPrediction,
    )
    from ._validate import Validator
    from ._vectors import FlatIndex, VectorIndex
