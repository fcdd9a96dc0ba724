"""Long jobs (rebuild the index, build segments, ...): started by a call that returns at
once, run on a thread of their own, watched (stage, counts), cancelled, at most one of a
kind at a time; journalled in the data dir so that a restart says what became of them.

A job's work is a function of a progress callback. The callback is where a cancel takes
effect: it raises `Cancelled` at the job's next progress report; work that must not stop
half-way runs in `with uncancellable():`.

The journal (`jobs/<id>.json`, sealed) is written when a job starts, changes stage and ends;
a job found RUNNING at start was interrupted (a crash, a kill) and is marked FAILED, saying
at which stage. The last KEEP jobs are kept.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from ._durable import read_sealed_json, seal_json, write_durably
from ._errors import AudienceError, Cancelled, PreconditionFailed, UnknownJob
from ._types import Progress

log = logging.getLogger("audience.index")

RUNNING, SUCCEEDED, FAILED, CANCELLED = "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
KEEP = 100  # finished jobs kept in the journal
JOBS_DIR = "jobs"  # the journal, in the data dir


@dataclass(frozen=True)
class Job:
    """A long job as seen from outside: a copy, never changed under the reader."""

    job_id: str
    kind: str
    state: str = RUNNING
    stage: str = "starting"
    done: int = 0
    total: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    cancel_requested: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why it failed or was cancelled
    error_type: str = ""  # the engine error's class name, for the status code

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def describe(self) -> str:
        where = f"stage {self.stage!r}" + (f" {self.done}/{self.total}" if self.total else "")
        started = time.strftime("%H:%M:%S", time.localtime(self.created_at))
        return f"{self.job_id} ({self.kind}, started {started}, {where})"


class _Running:
    """A job in progress: its current record and its cancel flag."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cancel = threading.Event()
        self.cancellable = True
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.value: Any = None


class JobRunner:
    """The jobs of one data dir. `start` returns at once; `wait` blocks for the end."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._finished: dict[str, Job] = {}
        for job in self._read_journal():
            if job.state == RUNNING:  # the process ended while it ran
                job = replace(
                    job,
                    state=FAILED,
                    finished_at=time.time(),
                    error=(
                        f"interrupted: the server stopped while this job was at stage "
                        f"{job.stage!r} ({job.done}/{job.total}); nothing it did was served. "
                        "Start it again."
                    ),
                    error_type="Interrupted",
                )
                self._write(job)
                log.warning("Jobs - %s was interrupted by a restart; marked failed", job.job_id)
            self._finished[job.job_id] = job
        numbers = [int(j.rsplit("-", 1)[-1]) for j in self._finished if j[-6:].isdigit()]
        self._numbers = itertools.count(max(numbers, default=0) + 1)

    # ------------------------------------------------------------ starting and running

    def start(
        self, kind: str, work: Callable[[Progress], Any], params: dict[str, Any] | None = None
    ) -> Job:
        """Run `work(progress)` on a thread; PreconditionFailed if a `kind` job runs."""
        return self._start(kind, work, params).job

    def run(
        self, kind: str, work: Callable[[Progress], Any], params: dict[str, Any] | None = None
    ) -> Any:
        """Start a job and wait for it: what `work` returned, or what it raised (Cancelled
        if it was cancelled). The job goes on if the caller stops waiting."""
        run = self._start(kind, work, params)
        run.done.wait()
        if run.error is not None:
            raise run.error
        return run.value

    def _start(
        self, kind: str, work: Callable[[Progress], Any], params: dict[str, Any] | None
    ) -> _Running:
        with self._lock:
            for run in self._running.values():
                if run.job.kind == kind:
                    raise PreconditionFailed(
                        f"a {kind} job is already running: {run.job.describe()}; follow it "
                        f"with `audience jobs watch {run.job.job_id}` or stop it with "
                        f"`audience jobs cancel {run.job.job_id}`"
                    )
            now = time.time()
            job = Job(
                f"job-{next(self._numbers):06d}",
                kind,
                created_at=now,
                updated_at=now,
                params=dict(params or {}),
            )
            run = self._running[job.job_id] = _Running(job)
        self._write(job)
        log.info("Jobs - %s started (%s)", job.job_id, kind)
        threading.Thread(target=self._run, args=(run, work), name=job.job_id, daemon=True).start()
        return run

    def _run(self, run: _Running, work: Callable[[Progress], Any]) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            if run.cancel.is_set() and run.cancellable:
                raise Cancelled(f"{run.job.job_id} cancelled at stage {stage!r}")
            changed = stage != run.job.stage
            run.job = replace(
                run.job,
                stage=stage,
                done=int(done),
                total=int(total),
                updated_at=time.time(),
                cancel_requested=run.cancel.is_set(),  # a cancel() meanwhile is not lost
            )
            if changed:
                self._write(run.job)
                log.info("Jobs - %s: %s", run.job.job_id, stage)

        _current.run = run
        end: dict[str, Any] = {}
        try:
            run.value = work(progress)
            end = {"state": SUCCEEDED, "result": _as_dict(run.value)}
        except Cancelled as exc:
            run.error = exc
            end = {"state": CANCELLED, "error": str(exc), "error_type": "Cancelled"}
        except AudienceError as exc:
            run.error = exc
            end = {"state": FAILED, "error": str(exc), "error_type": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - a bug; logged, reported without detail
            log.exception("Jobs - %s failed with %s", run.job.job_id, type(exc).__name__)
            run.error = exc
            end = {"state": FAILED, "error": "internal error; see the server log"}
        _current.run = None
        job = replace(run.job, finished_at=time.time(), updated_at=time.time(), **end)
        with self._lock:
            run.job = job
            self._finished[job.job_id] = job
            del self._running[job.job_id]
            self._forget_old()
        self._write(job)
        log.info("Jobs - %s %s", job.job_id, job.state.lower())
        run.done.set()

    # ------------------------------------------------------------ watching and stopping

    def get(self, job_id: str) -> Job:
        with self._lock:
            run = self._running.get(job_id)
            job = run.job if run else self._finished.get(job_id)
        if job is None:
            raise UnknownJob(f"job_id: no job {job_id!r} (`audience jobs list` shows them)")
        return job

    def list(self, kind: str = "") -> list[Job]:
        """Running jobs first, then the finished ones; newest first in each."""
        with self._lock:
            jobs = [r.job for r in self._running.values()] + list(self._finished.values())
        jobs = [j for j in jobs if not kind or j.kind == kind]
        return sorted(jobs, key=lambda j: (j.finished, -j.created_at))

    def cancel(self, job_id: str) -> Job:
        """Ask a running job to stop (it does at its next progress report); a finished
        job is returned as it is."""
        with self._lock:
            run = self._running.get(job_id)
            if run is not None and not run.cancellable:
                raise PreconditionFailed(
                    f"{run.job.describe()} is rewriting data that must not be left half-"
                    "changed (the stored vectors); it cannot stop now and ends on its own"
                )
            if run is not None:
                run.cancel.set()
                run.job = replace(run.job, cancel_requested=True, updated_at=time.time())
        if run is not None:
            log.info("Jobs - %s: cancel requested", job_id)
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished (or as it is after `timeout` seconds)."""
        with self._lock:
            run = self._running.get(job_id)
        if run is not None:
            run.done.wait(timeout)
        return self.get(job_id)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel the running jobs and wait for them (at most `timeout` seconds)."""
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.cancel.set()
        for run in running:
            run.done.wait(timeout)

    # ------------------------------------------------------------ the journal

    def _write(self, job: Job) -> None:
        try:
            write_durably(self.dir / f"{job.job_id}.json", seal_json(asdict(job), indent=1))
        except OSError as exc:  # a full disk does not stop the job; the state is in memory
            log.error("Jobs - journal of %s not written (%s)", job.job_id, exc)

    def _read_journal(self) -> list[Job]:
        jobs = []
        for path in sorted(self.dir.glob("job-*.json")):
            try:
                doc, _ = read_sealed_json(path)
                jobs.append(Job(**doc))
            except (ValueError, TypeError, OSError) as exc:
                log.warning("Jobs - %s skipped (%s)", path.name, exc)
        return jobs

    def _forget_old(self) -> None:
        """(under the lock) Keep the last KEEP finished jobs."""
        old = sorted(self._finished.values(), key=lambda j: j.created_at)[:-KEEP]
        for job in old:
            del self._finished[job.job_id]
            (self.dir / f"{job.job_id}.json").unlink(missing_ok=True)


_current = threading.local()  # the job whose work runs on this thread, if any


@contextmanager
def uncancellable() -> Iterator[None]:
    """Work in this block is not stopped by a cancel (it would leave data half-changed): a
    cancel asked meanwhile takes effect at the first progress report after the block. Outside
    a job, it does nothing."""
    run: _Running | None = getattr(_current, "run", None)
    if run is None:
        yield
        return
    run.cancellable = False
    try:
        yield
    finally:
        run.cancellable = True


def _as_dict(value: Any) -> dict[str, Any]:
    """A result as JSON-able fields: numbers, texts, and lists of them or of plain records
    (a fit's predictors); anything else (paths, models) is left out."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in asdict(value).items() if _plain(v)}
    return {}


def _plain(v: Any) -> bool:
    if isinstance(v, (int, float, str)):
        return True
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return isinstance(v, (list, tuple)) and all(_plain(x) for x in v)
