"""`audience` commands for long jobs: rebuild-index and segments build start a job on the
server and follow it (a progress bar per stage; Ctrl-C detaches, the job goes on), or return
at once with --detach; `audience jobs list | show | watch | cancel`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from . import _cli_format as fmt
from ._cli_commands import _client

if TYPE_CHECKING:
    from audience.client import AudienceClient, Job


def cmd_rebuild(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _started(args, client, client.start_rebuild_index(reembed=args.reembed))


def cmd_segments_build(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.start_build_segments(
            target_segments=args.target_segments,
            reducer=args.reducer or "",
            min_cluster_size=args.min_cluster_size or 0,
            sample_size=args.sample_size or 0,
            engine=args.engine,
            method=args.method or "",
        )
        return _started(args, client, job)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs(kind=args.kind or "")
    if args.json:
        print(json.dumps([asdict(j) for j in jobs]))
    else:
        print("\n".join(fmt.job_rows(jobs)) if jobs else "no jobs yet")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job_id)
    if args.json:
        print(json.dumps(asdict(job)))
    else:
        print("\n".join(fmt.job_card(job)))
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, client.get_job(args.job_id), quiet=args.no_progress)


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job_id)
        if job.done:
            print(f"{job.job_id} had already ended: {job.state.lower()}")
            return 0
        print(f"{job.job_id}: cancel requested; it stops at its next checkpoint", file=sys.stderr)
        if not args.wait:
            return 0
        job = client.wait_job(job.job_id, poll=0.2)
    if job.state == "SUCCEEDED":  # it was past its last checkpoint when the cancel came
        print(f"{job.job_id} had already ended: succeeded (past its last checkpoint)")
        return 0
    print(f"{job.job_id} {job.state.lower()}" + (f": {job.error}" if job.error else ""))
    return 0


def _started(args: argparse.Namespace, client: AudienceClient, job: Job) -> int:
    if args.detach:
        print(job.job_id)
        print(
            f"started {job.job_id} ({job.kind}); follow it with `audience jobs watch "
            f"{job.job_id}`, stop it with `audience jobs cancel {job.job_id}`",
            file=sys.stderr,
        )
        return 0
    return _follow(client, job, quiet=args.no_progress)


def _follow(client: AudienceClient, job: Job, *, quiet: bool = False) -> int:
    """Show the job's progress until it ends; its result (0) or its error (2). Ctrl-C
    detaches: the job goes on on the server."""
    bar = None if quiet else StageBar()
    try:
        job = client.wait_job(job.job_id, on_update=bar, poll=0.5)
    except KeyboardInterrupt:
        print(
            f"\ndetached from {job.job_id}; it goes on on the server: `audience jobs watch "
            f"{job.job_id}` to follow it, `audience jobs cancel {job.job_id}` to stop it",
            file=sys.stderr,
        )
        return 130
    finally:
        if bar is not None:
            bar.close()
    if job.state == "SUCCEEDED":
        print(fmt.job_result(job))
        return 0
    print(f"error: {job.error_code}: {job.error}", file=sys.stderr)
    return 2


class StageBar:
    """A progress bar per stage of a job (tqdm on stderr), fed with polled job states."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage = ""
        self._started = time.monotonic()

    def __call__(self, job: Job) -> None:
        from tqdm.auto import tqdm

        if job.done or job.stage == "starting":  # no bar before the first stage reports
            return
        if job.stage != self._stage:
            self.close()
            self._stage = job.stage
            self._bar = tqdm(
                desc=f"{job.job_id} {job.stage}",
                total=job.stage_total or None,
                disable=None,  # no bar when stderr is not a terminal (a log, a script)
            )
        if self._bar is not None:
            if job.stage_total and self._bar.total != job.stage_total:
                self._bar.total = job.stage_total
            self._bar.n = job.stage_done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
