"""Python client of Audience: lookalike audiences and user segments over gRPC.

Needs only grpcio and protobuf::

    from audience.client import AudienceClient, Profile

    with AudienceClient("127.0.0.1:50051") as client:
        client.upsert_users([Profile("u1", texts=["I bake sourdough"], attributes={"age": 31})])
        for user in client.find_lookalikes(seed_ids=["u1"], k=10).users:
            print(user.user_id, user.score)

:class:`AsyncAudienceClient` has the same methods as coroutines. Filters are
:class:`Filter` objects or expressions (``"age>=30"``, ``"region in EU,US"``). Every error
is an :class:`AudienceError` subclass named after its gRPC status.

Importing this package changes nothing in the process: grpc runs with its own defaults. For
lower latency per call, start the process with
``GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener`` (see the README).
"""

from ._async import AsyncAudienceClient
from ._errors import (
    AudienceError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    map_rpc_error,
)
from ._predictions import FitResult, PredictedValue, Predictor, TagScore, UserPrediction
from ._segment_types import Segment, SegmentBuild, SegmentTree, UserSegment
from ._sync import AudienceClient
from ._types import (
    STRATEGIES,
    AudienceQuality,
    BackupResult,
    DeleteResult,
    EncoderExport,
    Filter,
    Job,
    LookalikeQuery,
    LookalikeResult,
    Profile,
    PublishResult,
    ReachEstimate,
    RebuildResult,
    Replication,
    ScoredUser,
    Seed,
    SeedDiagnostics,
    SeedInterest,
    SnapshotResult,
    Stats,
    Text,
    UpsertResult,
    UserRecord,
)

__all__ = [
    "STRATEGIES",
    "AudienceQuality",
    "SeedDiagnostics",
    "SeedInterest",
    "AsyncAudienceClient",
    "AudienceClient",
    "AudienceError",
    "BackupResult",
    "Cancelled",
    "DeadlineExceeded",
    "DeleteResult",
    "EncoderExport",
    "FailedPrecondition",
    "Filter",
    "FitResult",
    "InvalidArgument",
    "Job",
    "LookalikeQuery",
    "LookalikeResult",
    "NotFound",
    "PermissionDenied",
    "PredictedValue",
    "Predictor",
    "Profile",
    "PublishResult",
    "ReachEstimate",
    "RebuildResult",
    "Replication",
    "ResourceExhausted",
    "ScoredUser",
    "Seed",
    "Segment",
    "SegmentBuild",
    "SegmentTree",
    "ServerError",
    "SnapshotResult",
    "Stats",
    "TagScore",
    "Text",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UpsertResult",
    "UserPrediction",
    "UserRecord",
    "UserSegment",
    "map_rpc_error",
]

# Show public names as members of this package in reprs and tracebacks, as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("audience.client._"):
        _obj.__module__ = __name__
del _name, _obj
