"""The asyncio client, :class:`AsyncAudienceClient`: the one hand-written client.

`_sync.py` (:class:`AudienceClient`) is generated from this file by `scripts/unasync.py`
(``async def`` -> ``def``, ``await`` -> nothing, ``grpc.aio`` -> ``grpc``, ...), as httpcore
does; a test fails when it is stale. Requests are built and responses parsed in `_convert`,
shared by both; only running many calls at once differs (`_concurrency`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence, Sized
from typing import Any, TypeVar

import grpc
import grpc.aio  # unasync: remove

from . import _convert as cv
from ._async_jobs import AsyncJobCalls
from ._async_predict import AsyncPredictCalls
from ._channel import Stubs, open_stubs
from ._concurrency import AsyncProfiles, async_batches, async_run_many
from ._errors import AudienceError, map_rpc_error
from ._options import (
    DEFAULT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    ClientOptions,
    Timeout,
)
from ._policy import ReadyWait
from ._progress import Progress, ProgressArg
from ._proto import audience_pb2 as pb
from ._proto import health_pb2
from ._segment_types import Segment, SegmentBuild, SegmentTree, UserSegment
from ._types import (
    BackupResult,
    DeleteResult,
    EncoderExport,
    Filter,
    LookalikeQuery,
    LookalikeResult,
    PublishResult,
    ReachEstimate,
    RebuildResult,
    ScoredUser,
    Seed,
    SeedDiagnostics,
    SnapshotResult,
    Stats,
    UpsertResult,
    UserRecord,
    as_tuple,
)

T = TypeVar("T")


class AsyncAudienceClient(AsyncJobCalls, AsyncPredictCalls):
    """Client of the Audience service for asyncio: methods are coroutines, streams are async
    iterators. One client per event loop; the channel opens on first use.

    target: ``host:port``, or several (a list, or a name like ``dns:///audience:50051``):
        reads (lookalikes, segments, GetUser) spread over them with gRPC's round_robin.
    primary: ``host:port`` for writes and admin calls (the replicas' primary); default target.
    timeout: default deadline of each call in seconds (None: no deadline); every method
        takes ``timeout=`` to override it for that call.
    token: sent as ``authorization: Bearer <token>`` on every call.
    retries / retry_backoff: unary calls are retried on UNAVAILABLE up to ``retries`` times,
        pausing ``retry_backoff`` seconds first and doubling (jittered), within the deadline.
    max_message_bytes: largest message sent or received.
    root_certificates / private_key / certificate_chain: PEM bytes; TLS when
        root_certificates is given (client certificate optional), plaintext otherwise.

    Every method raises :class:`AudienceError` subclasses, never ``grpc.RpcError``.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        primary: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        retries: int = 3,
        retry_backoff: float = 0.2,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        self._options = ClientOptions(
            target=target if isinstance(target, str) else tuple(target),
            primary=primary,
            timeout=timeout,
            token=token,
            retries=retries,
            retry_backoff=retry_backoff,
            max_message_bytes=max_message_bytes,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        self._stubs: Stubs | None = None
        self._opening = threading.Lock()
        self._closed = False

    @property
    def target(self) -> str:
        t = self._options.target
        return t if isinstance(t, str) else ",".join(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    async def __aenter__(self) -> AsyncAudienceClient:
        self._live  # noqa: B018  (open the channel now)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Closing twice is fine."""
        with self._opening:
            self._closed = True
            stubs, self._stubs = self._stubs, None
        if stubs is not None:
            for channel in stubs.channels:
                await channel.close()

    @property
    def _live(self) -> Stubs:
        stubs = self._stubs
        if stubs is None:
            with self._opening:
                if self._closed:
                    raise RuntimeError(f"the {type(self).__name__} is closed")
                if self._stubs is None:
                    self._stubs = open_stubs(self._options, grpc.aio)
                stubs = self._stubs
        return stubs

    # ------------------------------------------------------------ call helpers

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        """One unary call, retried on UNAVAILABLE within its deadline."""
        attempts = self._options.attempts(timeout)
        while True:
            try:
                return await method(
                    request, timeout=attempts.timeout(), metadata=self._options.metadata
                )
            except grpc.RpcError as exc:
                await asyncio.sleep(attempts.backoff(exc))

    async def _server_stream(
        self, method: Any, request: Any, timeout: Timeout, parse: Callable[[Any], list[T]]
    ) -> AsyncIterator[T]:
        """Items of a server stream; retried on UNAVAILABLE only before the first message.

        ``timeout`` bounds the whole stream. Stopping early cancels the call.
        """
        attempts = self._options.attempts(timeout)
        received = False
        while True:
            call = method(request, timeout=attempts.timeout(), metadata=self._options.metadata)
            try:
                async for message in call:
                    received = True
                    for item in parse(message):
                        yield item
                return
            except grpc.RpcError as exc:
                if received:
                    raise map_rpc_error(exc) from exc
                pause = attempts.backoff(exc)
            finally:
                call.cancel()  # a no-op once the stream has ended
            await asyncio.sleep(pause)

    # ------------------------------------------------------------ health

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll the standard health service until the server is SERVING.

        timeout: how long to wait, seconds. Raises :class:`Unavailable` when time is up.
        """
        waiter = ReadyWait(timeout, self.target)
        while True:
            try:
                response = await self._live.health.Check(
                    health_pb2.HealthCheckRequest(),
                    timeout=waiter.attempt_timeout(),
                    metadata=self._options.metadata,
                    wait_for_ready=True,
                )
                if waiter.serving(response.status):
                    return
            except grpc.RpcError as exc:
                waiter.failed(exc)
            await asyncio.sleep(waiter.pause())

    # ------------------------------------------------------------ profiles

    async def upsert_users(
        self,
        profiles: AsyncProfiles,
        *,
        batch_size: int = 256,
        progress: ProgressArg = False,
        timeout: Timeout = DEFAULT,
        text_fingerprint: str = "",
    ) -> UpsertResult:
        """Insert or replace profiles, ``batch_size`` per request, reading ``profiles`` lazily.

        Each batch is all-or-nothing and durable when acknowledged; batches are retried on
        UNAVAILABLE (an upsert is idempotent). If a batch fails, the batches before it stay
        written. progress: True for a bar (tqdm if installed, else stderr lines; with a total
        and the time left when ``profiles`` has a length), or a callable given the number of
        users written so far after each batch.
        timeout: deadline of each batch's request, seconds.
        text_fingerprint: with profiles that carry a ``text_vector``: the fingerprint of the
        encoder that made them (:meth:`get_encoder`); the server refuses any other.
        """
        batcher = cv.Batcher(batch_size)
        cv.check_profiles(profiles)
        expected = len(profiles) if isinstance(profiles, Sized) else None
        reporter = Progress(progress, expected=expected)
        totals = cv.UpsertTotals()
        try:
            async for batch in async_batches(batcher, profiles):
                request = cv.upsert_request(batch, text_fingerprint)
                response = await self._unary(self._live.profiles.UpsertUsers, request, timeout)
                reporter.update(totals.add(response))
        finally:
            reporter.close()
        return totals.result()

    async def stream_upsert_users(
        self,
        profiles: AsyncProfiles,
        *,
        batch_size: int = 256,
        timeout: Timeout = DEFAULT,
    ) -> UpsertResult:
        """Bulk load over one client stream, each batch committed as it arrives (not retried).

        timeout: deadline of the whole stream, seconds. If ``profiles`` raises (or holds a
        malformed profile) the stream is ended, the batches already sent stay written, and
        the error is raised.
        """
        batcher = cv.Batcher(batch_size)
        cv.check_profiles(profiles)
        failures: list[Exception] = []
        sent = 0

        async def requests() -> AsyncIterator[pb.UpsertUsersRequest]:
            nonlocal sent
            try:  # runs inside grpc: the error is raised to the caller below
                async for batch in async_batches(batcher, profiles):
                    sent += 1
                    yield cv.upsert_request(batch)
            except Exception as exc:
                failures.append(exc)

        try:
            response = await self._live.profiles.StreamUpsertUsers(
                requests(),
                timeout=self._options.resolve_timeout(timeout),
                metadata=self._options.metadata,
            )
        except grpc.RpcError as exc:
            if failures:
                raise failures[0] from None
            raise map_rpc_error(exc) from exc
        if failures:
            raise failures[0]
        totals = cv.UpsertTotals()
        totals.add(response, batches=sent)
        return totals.result()

    async def delete_users(
        self, user_ids: Iterable[str], *, timeout: Timeout = DEFAULT
    ) -> DeleteResult:
        """Erase users from the store and the index; unknown ids are reported, not errors."""
        request = cv.delete_request(user_ids)
        response = await self._unary(self._live.profiles.DeleteUsers, request, timeout)
        return cv.delete_result(response)

    async def get_user(
        self, user_id: str, *, include_vector: bool = False, timeout: Timeout = DEFAULT
    ) -> UserRecord:
        """A stored profile; with include_vector, also its indexed vector."""
        request = cv.get_user_request(user_id, include_vector)
        return cv.user_record(await self._unary(self._live.read_profiles.GetUser, request, timeout))

    # ------------------------------------------------------------ lookalikes

    async def find_lookalikes(
        self,
        seed_ids: Sequence[str] | LookalikeQuery = (),
        seed_texts: Sequence[str] = (),
        *,
        seeds: Sequence[Seed] = (),
        k: int | None = None,
        fraction: float | None = None,
        filters: Sequence[Filter | str] = (),
        negative_ids: Sequence[str] = (),
        negative_weight: float | None = None,
        exclude_ids: Sequence[str] = (),
        include_seeds: bool = False,
        min_score: float | None = None,
        segment_ids: Sequence[str] = (),
        exclude_segment_ids: Sequence[str] = (),
        search_effort: int | None = None,
        exact: bool = False,
        include_attributes: Sequence[str] = (),
        strategy: str | None = None,
        estimate_quality: bool = False,
        explain: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> LookalikeResult:
        """Users most like the seeds, best first (see :class:`LookalikeQuery` for the fields).

        Also takes one :class:`LookalikeQuery` alone: ``find_lookalikes(query)``.
        """
        query = cv.build_query(
            seed_ids,
            seed_texts,
            seeds=seeds,
            k=k,
            fraction=fraction,
            filters=filters,
            negative_ids=negative_ids,
            negative_weight=negative_weight,
            exclude_ids=exclude_ids,
            include_seeds=include_seeds,
            min_score=min_score,
            segment_ids=segment_ids,
            exclude_segment_ids=exclude_segment_ids,
            search_effort=search_effort,
            exact=exact,
            include_attributes=include_attributes,
            strategy=strategy,
            estimate_quality=estimate_quality,
            explain=explain,
        )
        return await self._find(cv.lookalike_request(query), timeout)

    async def _find(self, request: pb.LookalikeRequest, timeout: Timeout) -> LookalikeResult:
        response = await self._unary(self._live.lookalike.FindLookalikes, request, timeout)
        return cv.lookalike_result(response, bool(request.include_attributes or request.explain))

    async def diagnose_seeds(
        self, query: LookalikeQuery, *, timeout: Timeout = DEFAULT
    ) -> SeedDiagnostics:
        """What the seeds of a query are: cohesion, the interests among them (sizes, keywords),
        outliers, warnings, and the held-out quality of its strategy at its size."""
        request = cv.lookalike_request(query)
        response = await self._unary(self._live.lookalike.DiagnoseSeeds, request, timeout)
        return cv.seed_diagnostics(response)

    def stream_lookalikes(
        self,
        seed_ids: Sequence[str] | LookalikeQuery = (),
        seed_texts: Sequence[str] = (),
        *,
        seeds: Sequence[Seed] = (),
        k: int | None = None,
        fraction: float | None = None,
        filters: Sequence[Filter | str] = (),
        negative_ids: Sequence[str] = (),
        negative_weight: float | None = None,
        exclude_ids: Sequence[str] = (),
        include_seeds: bool = False,
        min_score: float | None = None,
        segment_ids: Sequence[str] = (),
        exclude_segment_ids: Sequence[str] = (),
        search_effort: int | None = None,
        exact: bool = False,
        include_attributes: Sequence[str] = (),
        strategy: str | None = None,
        estimate_quality: bool = False,
        explain: bool = False,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[ScoredUser]:
        """The same query for large audiences, streamed best first.

        The query is checked now; the call starts when the first user is asked for.
        timeout: deadline of the whole stream, seconds.
        """
        query = cv.build_query(
            seed_ids,
            seed_texts,
            seeds=seeds,
            k=k,
            fraction=fraction,
            filters=filters,
            negative_ids=negative_ids,
            negative_weight=negative_weight,
            exclude_ids=exclude_ids,
            include_seeds=include_seeds,
            min_score=min_score,
            segment_ids=segment_ids,
            exclude_segment_ids=exclude_segment_ids,
            search_effort=search_effort,
            exact=exact,
            include_attributes=include_attributes,
            strategy=strategy,
            estimate_quality=estimate_quality,
            explain=explain,
        )
        request = cv.lookalike_request(query)
        extras = query.include_attributes or query.explain
        read = cv.scored_users_with_attributes if extras else cv.scored_users
        return self._server_stream(self._live.lookalike.StreamLookalikes, request, timeout, read)

    async def find_lookalikes_many(
        self,
        queries: Iterable[LookalikeQuery],
        *,
        concurrency: int = 8,
        timeout: Timeout = DEFAULT,
        return_exceptions: bool = False,
    ) -> list[LookalikeResult | AudienceError]:
        """Run many queries, up to ``concurrency`` at once; results in input order.

        With return_exceptions, a failed query's :class:`AudienceError` takes its place in
        the list; otherwise the first failure is raised and the other queries are dropped
        (those not yet started) or cancelled. timeout: deadline of each query, seconds.
        """
        requests = [cv.lookalike_request(q) for q in as_tuple("queries", queries)]
        cv.check_concurrency(concurrency)

        async def find(request: pb.LookalikeRequest) -> LookalikeResult:
            return await self._find(request, timeout)

        return await async_run_many(
            find, requests, concurrency=concurrency, return_exceptions=return_exceptions
        )

    async def estimate_reach(
        self,
        filters: Sequence[Filter | str] = (),
        *,
        exclude_ids: Sequence[str] = (),
        segment_ids: Sequence[str] = (),
        exclude_segment_ids: Sequence[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> ReachEstimate:
        """How many users pass ``filters`` (Filter objects or expressions), less exclusions."""
        request = cv.reach_request(filters, exclude_ids, segment_ids, exclude_segment_ids)
        response = await self._unary(self._live.lookalike.EstimateReach, request, timeout)
        return cv.reach_estimate(response)

    # ------------------------------------------------------------ admin

    async def rebuild_index(
        self, *, reembed: bool = False, timeout: Timeout = None
    ) -> RebuildResult:
        """Rebuild the vector index and swap it in atomically (a long job: no deadline unless
        ``timeout`` seconds are given). reembed: embed every stored text again."""
        request = cv.rebuild_request(reembed)
        response = await self._unary(self._live.admin.RebuildIndex, request, timeout)
        return cv.rebuild_result(response)

    async def build_segments(
        self,
        *,
        target_segments: int = 0,
        reducer: str = "",
        min_cluster_size: int = 0,
        sample_size: int = 0,
        engine: str = "",
        method: str = "",
        timeout: Timeout = None,
    ) -> SegmentBuild:
        """Build a new segment model (a long job: no deadline unless ``timeout`` is given).

        target_segments: exactly this many segments; 0 lets HDBSCAN decide. method (with
        target_segments): "auto" ("" = it: every method runs, a label-free criterion
        chooses; the result says which and why), "kmeans", "umap-kmeans" or "tree".
        reducer: "umap" or "pca" ("" = server default); min_cluster_size: smallest segment
        (0 = 1% of the fit sample); sample_size: users the clustering is fitted on (0 = 20,000).
        engine: where the users outside the fit sample are placed: "local" (default) or
        "ray" (Ray workers; the server's --ray-address).
        """
        request = cv.segments_build(
            target_segments, reducer, min_cluster_size, sample_size, engine, method
        )
        response = await self._unary(self._live.admin.BuildSegments, request, timeout)
        return cv.segment_build(response)

    async def backup(self, out_dir: str, *, timeout: Timeout = None) -> BackupResult:
        """Write a consistent, checksummed copy of everything the server needs into
        ``out_dir``, a new or empty directory on the server's machine, outside its data dir
        (another disk is best). ``audience restore`` verifies and restores it."""
        request = pb.BackupRequest(out_dir=cv.string("out_dir", out_dir))
        return cv.backup_result(await self._unary(self._live.admin.Backup, request, timeout))

    async def publish(self, *, timeout: Timeout = None) -> PublishResult:
        """Publish a checksummed generation for read replicas (server: ``--publish-to``)."""
        response = await self._unary(self._live.admin.Publish, pb.PublishRequest(), timeout)
        return cv.publish_result(response)

    async def get_encoder(self, *, timeout: Timeout = None) -> EncoderExport:
        """What a batch worker needs to embed as the server does (``Profile.text_vector``)."""
        messages = self._server_stream(
            self._live.profiles.GetEncoder, pb.GetEncoderRequest(), timeout, lambda m: [m]
        )
        return cv.encoder_export([m async for m in messages])

    async def snapshot(self, *, timeout: Timeout = DEFAULT) -> SnapshotResult:
        """Write a consistent copy of the store and the index under the server's data dir."""
        response = await self._unary(self._live.admin.Snapshot, pb.SnapshotRequest(), timeout)
        return cv.snapshot_result(response)

    async def stats(self, *, timeout: Timeout = DEFAULT) -> Stats:
        """What the server holds: users, indexed vectors, model, generation, attributes."""
        response = await self._unary(self._live.admin.GetStats, pb.GetStatsRequest(), timeout)
        return cv.stats(response)

    # ------------------------------------------------------------ segments

    async def list_segments(self, *, timeout: Timeout = DEFAULT) -> list[Segment]:
        """Every segment of the current segment model."""
        return (await self.segment_tree(timeout=timeout)).segments

    async def segment_tree(self, *, timeout: Timeout = DEFAULT) -> SegmentTree:
        """The segments, the groups of segments above them (the tree's inner nodes, whose
        ids work wherever a segment id does) and how the segments were found."""
        request = pb.ListSegmentsRequest(include_groups=True)
        response = await self._unary(self._live.segments.ListSegments, request, timeout)
        return cv.segment_tree(response)

    async def get_segment(self, segment_id: str, *, timeout: Timeout = DEFAULT) -> Segment:
        """One segment: size, keywords, attribute profile, exemplar users, persistence."""
        request = cv.segment_request(segment_id)
        return cv.segment(await self._unary(self._live.segments.GetSegment, request, timeout))

    async def get_user_segments(
        self, user_ids: Iterable[str], *, timeout: Timeout = DEFAULT
    ) -> list[UserSegment]:
        """The segment of each stored user, with membership strength and outlier flag."""
        request = cv.user_segments_request(user_ids)
        response = await self._unary(self._live.segments.GetUserSegments, request, timeout)
        return cv.user_segments(response)

    async def assign_segments(
        self, profiles: Iterable[cv.ProfileLike], *, timeout: Timeout = DEFAULT
    ) -> list[UserSegment]:
        """Segments for profiles that are not stored (nothing is written)."""
        request = cv.assign_request(profiles)
        response = await self._unary(self._live.segments.AssignSegments, request, timeout)
        return cv.user_segments(response)

    def stream_segment_members(
        self,
        segment_id: str,
        *,
        include_attributes: Sequence[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[ScoredUser]:
        """Members of a segment, strongest first, streamed (``score`` is the membership
        strength), with the stored attributes asked for. timeout: of the whole stream, s."""
        request = cv.members_request(segment_id, include_attributes)
        read = cv.scored_users_with_attributes if include_attributes else cv.scored_users
        return self._server_stream(self._live.segments.StreamSegmentMembers, request, timeout, read)
