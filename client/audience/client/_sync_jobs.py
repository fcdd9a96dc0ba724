# Generated from _async_jobs.py by scripts/unasync.py: edit _async_jobs.py, then run it again.
"""The job calls of :class:`AudienceClient` (start a long job, follow it, cancel it), a
part of the hand-written client kept in a file of its own; `_sync_jobs.py` is generated from
it by `scripts/unasync.py` like `_sync.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import _convert as cv
from ._channel import Stubs
from ._options import DEFAULT, Timeout
from ._proto import audience_pb2 as pb
from ._types import Job


class JobCalls:
    """Mixed into the client, which provides `_live` and `_unary`."""

    _live: Stubs

    def _unary(self, method: Callable[..., Any], request: Any, timeout: Timeout) -> Any:
        raise NotImplementedError  # the client's own

    def start_rebuild_index(
        self, *, reembed: bool = False, timeout: Timeout = DEFAULT
    ) -> Job:
        """Start a rebuild of the index as a job and return at once (see :meth:`wait_job`)."""
        request = cv.rebuild_request(reembed)
        return cv.job(self._unary(self._live.admin.StartRebuildIndex, request, timeout))

    def start_build_segments(
        self,
        *,
        target_segments: int = 0,
        reducer: str = "",
        min_cluster_size: int = 0,
        sample_size: int = 0,
        engine: str = "",
        method: str = "",
        timeout: Timeout = DEFAULT,
    ) -> Job:
        """Start a segment build as a job and return at once (arguments: :meth:`build_segments`).
        A second build while one runs is refused (FailedPrecondition names the running one)."""
        request = cv.segments_build(
            target_segments, reducer, min_cluster_size, sample_size, engine, method
        )
        return cv.job(self._unary(self._live.admin.StartBuildSegments, request, timeout))

    def get_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> Job:
        """A job's state, stage and counts; its result or error once done."""
        request = pb.GetJobRequest(job_id=cv.job_request(job_id))
        return cv.job(self._unary(self._live.admin.GetJob, request, timeout))

    def list_jobs(self, *, kind: str = "", timeout: Timeout = DEFAULT) -> list[Job]:
        """Running jobs first, then the last finished ones; newest first."""
        request = pb.ListJobsRequest(kind=cv.string("kind", kind))
        response = self._unary(self._live.admin.ListJobs, request, timeout)
        return [cv.job(j) for j in response.jobs]

    def cancel_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> Job:
        """Ask a running job to stop; it does within seconds, and what it would have replaced
        stays served. FailedPrecondition while it rewrites stored data it must not leave
        half-changed."""
        request = pb.CancelJobRequest(job_id=cv.job_request(job_id))
        return cv.job(self._unary(self._live.admin.CancelJob, request, timeout))

    def wait_job(
        self,
        job_id: str,
        *,
        on_update: Callable[[Job], None] | None = None,
        poll: float = 0.5,
        timeout: float | None = None,
    ) -> Job:
        """Poll a job every ``poll`` seconds until it is done and return it (check ``state``);
        ``on_update`` gets every state seen (for a progress bar). After ``timeout`` seconds the
        job is returned as it is, still running."""
        polls = None if timeout is None else max(1, round(timeout / poll))
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.done or polls == 0:
                return job
            polls = None if polls is None else polls - 1
            time.sleep(poll)
