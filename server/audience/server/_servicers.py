"""Thin servicers: parse the request, call the engine, build the response.

Errors are not handled here: ErrorMappingInterceptor maps engine errors to status codes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

from audience.client._proto import audience_pb2 as pb
from audience.client._proto import audience_pb2_grpc as pb_grpc
from audience.index import (
    FIT_PREDICTORS,
    BackupResult,
    Engine,
    FitResult,
    IndexNotReady,
    InvalidQuery,
    PreconditionFailed,
    Progress,
    RayPlacer,
    RebuildResult,
    SegmentBuild,
    export_of,
)

from ._convert import (
    BACKUP,
    BUILD_SEGMENTS,
    REBUILD_INDEX,
    diagnostics_to_pb,
    filters_from_pb,
    fit_to_pb,
    job_to_pb,
    memberships_to_pb,
    predict_query_from_pb,
    predictions_to_pb,
    predictor_to_pb,
    profiles_from_pb,
    query_from_pb,
    segment_params_from_pb,
    segment_to_pb,
    stored_user_to_pb,
    with_extras,
    with_scored,
)

log = logging.getLogger("audience.server")

STREAM_CHUNK = 1000  # users per LookalikeChunk
ENCODER_CHUNK = 1 << 20  # bytes of an encoder file per GetEncoderResponse
JobSpec = tuple[str, Callable[[Progress], Any], dict[str, Any]]  # JobRunner.start's arguments


class ProgressLog:
    """Engine progress callback that logs a stage at most every `every` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every or done >= total:
            self._last = now
            log.info("Progress - %s: %d/%d", stage, done, total)


def tee(first: Progress, second: Progress) -> Progress:
    """One progress callback that calls two (the second may raise: a job's cancel)."""

    def both(stage: str, done: int, total: int) -> None:
        first(stage, done, total)
        second(stage, done, total)

    return both


class EngineHolder:
    """The engine once loaded; until then (and after shutdown) calls answer UNAVAILABLE.

    On a read replica `read_only` says why writes are refused (FAILED_PRECONDITION); the
    engine is swapped for each new generation (`set` returns the one it replaces)."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.read_only: str | None = None
        self.publisher: Any = None  # _replication.Publisher on a primary that publishes
        self.replication: Callable[[], pb.Replication] | None = None  # for GetStats
        self.ray_address: str | None = None  # for segment builds on Ray (None: a local Ray)

    @property
    def writable(self) -> Engine:
        """The engine, for a write; FAILED_PRECONDITION on a read replica."""
        if self.read_only:
            raise PreconditionFailed(self.read_only)
        return self.engine

    @property
    def engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise IndexNotReady("the service is loading its index or shutting down; retry shortly")
        return engine

    def set(self, engine: Engine) -> Engine | None:
        with self._lock:
            old, self._engine = self._engine, engine
        return old

    def take(self) -> Engine | None:
        """Detach the engine (new calls get UNAVAILABLE) and return it."""
        with self._lock:
            engine, self._engine = self._engine, None
        return engine


class ProfilesServicer(pb_grpc.ProfilesServicer):
    def __init__(self, holder: EngineHolder) -> None:
        self._holder = holder

    def UpsertUsers(
        self, request: pb.UpsertUsersRequest, context: grpc.ServicerContext
    ) -> pb.UpsertUsersResponse:
        engine = self._holder.writable
        done = engine.upsert(profiles_from_pb(request.profiles), request.text_fingerprint)
        return pb.UpsertUsersResponse(upserted=done.upserted, sequence=done.sequence)

    def StreamUpsertUsers(
        self, request_iterator: Iterable[pb.UpsertUsersRequest], context: grpc.ServicerContext
    ) -> pb.UpsertUsersResponse:
        total, seq = 0, 0
        for request in request_iterator:  # each message is committed as it arrives
            profiles = profiles_from_pb(request.profiles)
            done = self._holder.writable.upsert(profiles, request.text_fingerprint)
            total, seq = total + done.upserted, done.sequence
        return pb.UpsertUsersResponse(upserted=total, sequence=seq)

    def DeleteUsers(
        self, request: pb.DeleteUsersRequest, context: grpc.ServicerContext
    ) -> pb.DeleteUsersResponse:
        done = self._holder.writable.delete(list(request.user_ids))
        return pb.DeleteUsersResponse(deleted=done.deleted, not_found=done.not_found)

    def GetUser(
        self, request: pb.GetUserRequest, context: grpc.ServicerContext
    ) -> pb.GetUserResponse:
        user = self._holder.engine.get_user(request.user_id, include_vector=request.include_vector)
        return stored_user_to_pb(user)

    def GetEncoder(
        self, request: pb.GetEncoderRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetEncoderResponse]:
        export = export_of(self._holder.engine.encoder)
        yield pb.GetEncoderResponse(
            settings_json=json.dumps(export.settings, sort_keys=True),
            text_fingerprint=export.text_fingerprint,
        )
        for path, content in export.files.items():
            for at in range(0, max(1, len(content)), ENCODER_CHUNK):
                yield pb.GetEncoderResponse(path=path, chunk=content[at : at + ENCODER_CHUNK])


class LookalikeServicer(pb_grpc.LookalikeServicer):
    def __init__(self, holder: EngineHolder) -> None:
        self._holder = holder

    def FindLookalikes(
        self, request: pb.LookalikeRequest, context: grpc.ServicerContext
    ) -> pb.LookalikeResponse:
        result = self._holder.engine.find_lookalikes(query_from_pb(request))
        response = pb.LookalikeResponse(eligible=result.eligible, warnings=result.warnings)
        return with_scored(with_extras(response, result), result.users)

    def StreamLookalikes(
        self, request: pb.LookalikeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LookalikeChunk]:
        stream = self._holder.engine.stream_lookalikes(query_from_pb(request), STREAM_CHUNK)
        first = True  # warnings, strategy, quality, diagnostics: on the first chunk only
        for chunk in stream.chunks:
            if not context.is_active():  # the caller went away: stop sending
                return
            message = pb.LookalikeChunk(eligible=stream.eligible)
            if first:
                message.warnings.extend(stream.warnings)
                with_extras(message, stream)
                first = False
            yield with_scored(message, chunk)

    def DiagnoseSeeds(
        self, request: pb.LookalikeRequest, context: grpc.ServicerContext
    ) -> pb.SeedDiagnostics:
        return diagnostics_to_pb(self._holder.engine.diagnose_seeds(query_from_pb(request)))

    def EstimateReach(
        self, request: pb.EstimateReachRequest, context: grpc.ServicerContext
    ) -> pb.EstimateReachResponse:
        reach = self._holder.engine.estimate_reach(
            filters_from_pb(request.filters),
            list(request.exclude_user_ids),
            list(request.segment_ids),
            list(request.exclude_segment_ids),
        )
        return pb.EstimateReachResponse(
            reach=reach.reach, total=reach.total, warnings=reach.warnings
        )


class PredictionsServicer(pb_grpc.PredictionsServicer):
    def __init__(self, holder: EngineHolder) -> None:
        self._holder = holder

    def PredictAttributes(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        return predictions_to_pb(self._holder.engine.predict(predict_query_from_pb(request)))

    def ListPredictors(
        self, request: pb.ListPredictorsRequest, context: grpc.ServicerContext
    ) -> pb.ListPredictorsResponse:
        found = self._holder.engine.predictors()
        return pb.ListPredictorsResponse(predictors=[predictor_to_pb(p) for p in found])


class SegmentsServicer(pb_grpc.SegmentsServicer):
    def __init__(self, holder: EngineHolder) -> None:
        self._holder = holder

    def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.ServicerContext
    ) -> pb.ListSegmentsResponse:
        listed = self._holder.engine.list_segments()
        return pb.ListSegmentsResponse(
            segments=[segment_to_pb(s) for s in listed.segments],
            model_version=listed.model_version,
            groups=[segment_to_pb(s) for s in listed.groups] if request.include_groups else [],
            parts=[segment_to_pb(s) for s in listed.parts] if request.include_groups else [],
            method=listed.method,
            method_reason=listed.method_reason,
        )

    def GetSegment(
        self, request: pb.GetSegmentRequest, context: grpc.ServicerContext
    ) -> pb.Segment:
        return segment_to_pb(self._holder.engine.get_segment(request.segment_id))

    def GetUserSegments(
        self, request: pb.GetUserSegmentsRequest, context: grpc.ServicerContext
    ) -> pb.GetUserSegmentsResponse:
        found = self._holder.engine.user_segments(list(request.user_ids))
        return pb.GetUserSegmentsResponse(memberships=memberships_to_pb(found))

    def AssignSegments(
        self, request: pb.AssignSegmentsRequest, context: grpc.ServicerContext
    ) -> pb.AssignSegmentsResponse:
        found = self._holder.engine.assign_segments(profiles_from_pb(request.profiles))
        return pb.AssignSegmentsResponse(memberships=memberships_to_pb(found))

    def StreamSegmentMembers(
        self, request: pb.StreamSegmentMembersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LookalikeChunk]:
        chunks = self._holder.engine.segment_members(
            request.segment_id, STREAM_CHUNK, tuple(request.include_attributes)
        )
        for chunk in chunks:
            if not context.is_active():
                return
            yield with_scored(pb.LookalikeChunk(), chunk)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, holder: EngineHolder) -> None:
        self._holder = holder

    def RebuildIndex(
        self, request: pb.RebuildIndexRequest, context: grpc.ServicerContext
    ) -> pb.RebuildIndexResponse:
        done = self._holder.writable.jobs.run(*self._rebuild(request))
        return pb.RebuildIndexResponse(
            users=done.users, generation=done.generation, seconds=done.seconds
        )

    def BuildSegments(
        self, request: pb.BuildSegmentsRequest, context: grpc.ServicerContext
    ) -> pb.BuildSegmentsResponse:
        done = self._holder.writable.jobs.run(*self._build_segments(request))
        return pb.BuildSegmentsResponse(
            model_version=done.model_version,
            segments=done.segments,
            seconds=done.seconds,
            outlier_share=done.outlier_share,
            users=done.users,
            method=done.method,
            method_reason=done.method_reason,
            groups=done.groups,
            parts=done.parts,
        )

    def StartRebuildIndex(
        self, request: pb.RebuildIndexRequest, context: grpc.ServicerContext
    ) -> pb.Job:
        return job_to_pb(self._holder.writable.jobs.start(*self._rebuild(request)))

    def StartBuildSegments(
        self, request: pb.BuildSegmentsRequest, context: grpc.ServicerContext
    ) -> pb.Job:
        return job_to_pb(self._holder.writable.jobs.start(*self._build_segments(request)))

    def FitPredictors(
        self, request: pb.FitPredictorsRequest, context: grpc.ServicerContext
    ) -> pb.FitPredictorsResponse:
        return fit_to_pb(self._holder.writable.jobs.run(*self._fit_predictors(request)))

    def StartFitPredictors(
        self, request: pb.FitPredictorsRequest, context: grpc.ServicerContext
    ) -> pb.Job:
        return job_to_pb(self._holder.writable.jobs.start(*self._fit_predictors(request)))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._holder.engine.jobs.get(request.job_id))

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        jobs = self._holder.engine.jobs.list(request.kind)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in jobs])

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._holder.writable.jobs.cancel(request.job_id))

    def Backup(self, request: pb.BackupRequest, context: grpc.ServicerContext) -> pb.BackupResponse:
        engine = self._holder.writable
        if not request.out_dir:
            raise InvalidQuery("out_dir", "give a directory on the server's machine")
        out = Path(request.out_dir)

        def work(progress: Progress) -> BackupResult:
            return engine.backup(out, progress)

        done = engine.jobs.run(BACKUP, work, {"out_dir": str(out)})
        return pb.BackupResponse(
            path=str(done.path),
            files=done.files,
            bytes=done.bytes,
            generation=done.generation,
            sequence=done.sequence,
            seconds=done.seconds,
        )

    def _rebuild(self, request: pb.RebuildIndexRequest) -> JobSpec:
        engine, log_progress = self._holder.engine, ProgressLog()

        def work(progress: Progress) -> RebuildResult:
            return engine.rebuild_index(
                reembed=request.reembed, progress=tee(log_progress, progress)
            )

        return REBUILD_INDEX, work, {"reembed": request.reembed}

    def _build_segments(self, request: pb.BuildSegmentsRequest) -> JobSpec:
        engine, log_progress = self._holder.engine, ProgressLog()
        params = segment_params_from_pb(request)  # checked before the job starts
        where = request.engine or "local"
        if where not in ("local", "ray"):
            raise InvalidQuery("engine", f"must be 'local' or 'ray', not {where!r}")
        ray_address = self._holder.ray_address

        def work(progress: Progress) -> SegmentBuild:
            placer = None
            if where == "ray":
                from ._ray_ingest import connect

                connect(ray_address)
                placer = RayPlacer()
            return engine.build_segments(params, tee(log_progress, progress), placer)

        asked = ("reducer", "target_segments", "min_cluster_size", "sample_size")
        return BUILD_SEGMENTS, work, {"engine": where, **{k: getattr(params, k) for k in asked}}

    def _fit_predictors(self, request: pb.FitPredictorsRequest) -> JobSpec:
        engine, log_progress, attributes = (
            self._holder.engine,
            ProgressLog(),
            list(request.attributes),
        )

        def work(progress: Progress) -> FitResult:
            return engine.fit_predictors(attributes, tee(log_progress, progress))

        return FIT_PREDICTORS, work, {"attributes": attributes}

    def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.ServicerContext
    ) -> pb.SnapshotResponse:
        done = self._holder.writable.snapshot()
        return pb.SnapshotResponse(generation=done.generation, path=str(done.path))

    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        s = self._holder.engine.stats()
        return pb.GetStatsResponse(
            users=s.users,
            indexed=s.indexed,
            dimension=s.dimension,
            model=s.model,
            index_type=s.index_type,
            generation=s.generation,
            sequence=s.sequence,
            data_dir=s.data_dir,
            attributes=list(s.attributes),
            lexical_model=s.lexical_model,
            lexical_documents=s.lexical_documents,
            lexical_weight=s.lexical_weight,
            warnings=list(s.warnings),
            replication=self._holder.replication() if self._holder.replication else None,
            text_dimension=s.text_dimension,
        )

    def Publish(
        self, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> pb.PublishResponse:
        publisher, read_only = self._holder.publisher, self._holder.read_only
        if read_only:
            raise PreconditionFailed(read_only)
        if publisher is None:
            raise PreconditionFailed(
                "this server publishes nowhere: start it with --publish-to DIR"
            )
        done = publisher.publish(ProgressLog())
        return pb.PublishResponse(
            generation=done.generation,
            path=str(done.path),
            users=done.users,
            bytes=done.bytes,
            seconds=done.seconds,
        )
