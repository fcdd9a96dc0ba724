"""audience.index: the engine (profile store, user encoder, vector index, lookalikes).

from audience.index import Engine, EngineConfig
engine = Engine.open(EngineConfig(data_dir="./data"))
"""

from ._config import DEFAULT_MODEL, AttributeSpec, EngineConfig, Limits
from ._embed import (
    SentenceTransformerEmbedder,
    TextEmbedder,
    make_embedder,
    resolve_model_path,
)
from ._encoder import UserEncoder
from ._engine import Engine, Progress
from ._errors import (
    AudienceError,
    Cancelled,
    IndexNotReady,
    InvalidQuery,
    LimitExceeded,
    PreconditionFailed,
    SegmentsNotBuilt,
    UnknownSegment,
    UnknownUser,
)
from ._onnx import OnnxEmbedder, export_onnx
from ._segments import Segment, SegmentModel, SegmentParams
from ._types import (
    AttrValue,
    Filter,
    LookalikeQuery,
    LookalikeResult,
    Profile,
    ScoredUser,
    Seed,
    Stats,
    StoredUser,
    TextItem,
)
from ._vectors import FlatIndex, VectorIndex

__all__ = [
    "DEFAULT_MODEL",
    "AttrValue",
    "AttributeSpec",
    "AudienceError",
    "Cancelled",
    "Engine",
    "EngineConfig",
    "Filter",
    "FlatIndex",
    "IndexNotReady",
    "InvalidQuery",
    "LimitExceeded",
    "Limits",
    "LookalikeQuery",
    "LookalikeResult",
    "OnnxEmbedder",
    "PreconditionFailed",
    "Profile",
    "Progress",
    "ScoredUser",
    "Seed",
    "Segment",
    "SegmentModel",
    "SegmentParams",
    "SegmentsNotBuilt",
    "SentenceTransformerEmbedder",
    "Stats",
    "StoredUser",
    "TextEmbedder",
    "TextItem",
    "UnknownSegment",
    "UnknownUser",
    "UserEncoder",
    "VectorIndex",
    "export_onnx",
    "make_embedder",
    "resolve_model_path",
]
