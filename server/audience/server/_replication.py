"""Read replicas: the primary publishes generations, replicas load them (index/_publish.py
has the files; this module has the schedule, the swap and the state both report).

    Publisher        (primary, --publish-to DIR) publishes on demand (Publish, `audience
                     publish`) and every --publish-every seconds when something changed; each
                     publish runs as a job of kind "publish"
    ReplicaFollower  (replica, --replica-of DIR) polls DIR/CURRENT; a new generation is
                     copied to the replica's own data dir, every file checked, opened as an
                     engine beside the one serving, and swapped in: a call sees the old
                     engine or the new one, never a mix. The old one is closed once the calls
                     that took it have had `retire_s` to finish. A damaged generation is
                     refused (logged, in GetStats) and the served one stays. Health is
                     SERVING once a generation is loaded, and NOT_SERVING while the data
                     served are older than --max-lag (when given)
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from audience.client._proto import audience_pb2 as pb
from audience.index import (
    GENERATION,
    DataDirLock,
    Engine,
    EngineConfig,
    PreconditionFailed,
    Progress,
    Published,
    fetch_generation,
    read_current,
)

from ._convert import PUBLISH

log = logging.getLogger("audience.server")

RETIRE_S = 60.0  # an engine swapped out is closed this long after (calls in flight on it)
NEVER = 1 << 62  # a replica never fits a lexical model of its own


@dataclass
class ReplicationState:
    """What GetStats reports (pb.Replication)."""

    role: str
    source: str
    generation: int = 0
    published_at: float = 0.0
    loaded_at: float = 0.0
    primary: str = ""
    last_error: str = ""

    def to_pb(self) -> pb.Replication:
        lag = time.time() - self.published_at if self.role == "replica" and self.generation else 0
        return pb.Replication(
            role=self.role,
            source=self.source,
            generation=self.generation,
            published_at=self.published_at,
            lag_s=lag,
            loaded_at=self.loaded_at,
            primary=self.primary,
            last_error=self.last_error,
        )


class Publisher:
    """The primary's side. `engine`: a callable giving the serving engine."""

    def __init__(
        self, engine: Callable[[], Engine], source: Path, every_s: float = 0.0, keep: int = 2
    ) -> None:
        self._engine, self.source, self.every_s, self.keep = engine, Path(source), every_s, keep
        self.state = ReplicationState("primary", str(self.source))
        try:
            current = read_current(self.source)
        except ValueError as exc:
            current, self.state.last_error = None, f"{self.source}/CURRENT: {exc}"
        if current:
            self.state.generation = current["generation"]
            self.state.published_at = current["published_at"]
        self._published_seq: tuple[int, str] | None = None  # (store sequence, segment model)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def publish(self, progress: Progress | None = None) -> Published:
        """Publish now (as a job of kind "publish"; one at a time)."""
        engine = self._engine()

        def work(progress: Progress) -> Published:
            mark = self._mark(engine)
            done = engine.publish(self.source, self.keep, progress)
            self._published_seq = mark
            self.state.generation, self.state.published_at = done.generation, done.published_at
            self.state.last_error = ""
            return done

        try:
            return engine.jobs.run(PUBLISH, work, {"source": str(self.source)})
        except Exception as exc:
            self.state.last_error = f"publish failed: {exc}"
            raise

    @staticmethod
    def _mark(engine: Engine) -> tuple[int, str]:
        segments = engine.catalog.segments
        return engine.catalog.store.sequence, segments.version if segments is not None else ""

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                engine = self._engine()
                if self._mark(engine) != self._published_seq:  # something changed
                    self.publish()
            except PreconditionFailed as exc:  # a publish already running, say
                log.info("Publish - skipped this round: %s", exc)
            except Exception as exc:  # noqa: BLE001 - logged, reported, tried next round
                log.error("Publish - failed (%s); trying again in %.0fs", exc, self.every_s)


class ReplicaFollower:
    """The replica's side: loads generations from `source` into `data_dir` and hands each
    opened engine to `serve(engine)`, which returns the engine it replaces (or None)."""

    def __init__(
        self,
        source: Path,
        data_dir: Path,
        base: EngineConfig,
        serve: Callable[[Engine], Engine | None],
        *,
        poll_s: float = 2.0,
        primary: str = "",
        retire_s: float = RETIRE_S,
        max_lag_s: float | None = None,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        self.source, self.data_dir, self.base = Path(source), Path(data_dir), base
        self._serve, self.poll_s, self.retire_s = serve, poll_s, retire_s
        self.state = ReplicationState("replica", str(self.source), primary=primary)
        self._refused: int | None = None  # a damaged generation: not tried again
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one load at a time
        self._retired: list[tuple[float, Engine]] = []
        self._thread = threading.Thread(target=self._loop, name="replica", daemon=True)
        self._lock_dir: DataDirLock | None = None
        self.max_lag_s, self._on_health = max_lag_s, on_health

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_dir = DataDirLock(self.data_dir)  # one replica per data dir
        for old in self.data_dir.iterdir():  # copies from an earlier run: taken again
            if GENERATION.match(old.name) or old.name.startswith(".gen-"):
                shutil.rmtree(old, ignore_errors=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        for _, engine in self._retired:
            self._close(engine)
        self._retired.clear()
        if self._lock_dir is not None:
            self._lock_dir.release()

    def poll(self) -> bool:
        """Load the newest published generation if it is not served yet; True if it was."""
        with self._lock:
            try:
                pointer = read_current(self.source)
            except (OSError, ValueError) as exc:
                self.state.last_error = f"{self.source}/CURRENT unreadable: {exc}"
                return False
            number = pointer["generation"] if pointer else 0
            if not pointer or number in (self.state.generation, self._refused):
                return False
            t0 = time.perf_counter()
            try:
                local, manifest = fetch_generation(self.source, pointer, self.data_dir)
            except ValueError as exc:
                self._refused = number
                self.state.last_error = f"generation {number} refused: {exc}"
                log.error("Replica - %s; still serving generation %d", exc, self.state.generation)
                return False
            try:
                config = EngineConfig.from_settings(
                    manifest["settings"], local, lexical_min_users=NEVER, limits=self.base.limits
                )
                engine = Engine.open(config)
            except Exception as exc:  # noqa: BLE001 - reported; the served engine stays
                self._refused = number  # not tried again until another one is published
                shutil.rmtree(local, ignore_errors=True)
                self.state.last_error = f"generation {number} could not be opened: {exc}"
                log.exception("Replica - generation %d could not be opened", number)
                return False
            old = self._serve(engine)
            self.state = replace(
                self.state,
                generation=number,
                published_at=float(manifest["published_at"]),
                loaded_at=time.time(),
                last_error="",
            )
            log.info("Replica - serving generation %d (%d users; loaded in %.1fs, %.1fs after "
                     "it was published)", number, len(engine.catalog.iid_of),
                     time.perf_counter() - t0, time.time() - self.state.published_at)  # fmt: skip
            if old is not None:
                self._retired.append((time.monotonic() + self.retire_s, old))
            return True

    def _loop(self) -> None:
        waiting_logged = False
        while not self._stop.is_set():
            try:
                if not self.poll() and not self.state.generation and not waiting_logged:
                    log.info("Replica - waiting for a generation in %s", self.source)
                    waiting_logged = True
            except Exception as exc:  # noqa: BLE001 - reported; the served engine stays
                self.state.last_error = f"loading a generation failed: {exc}"
                log.exception("Replica - loading a generation failed")
            if self.state.generation and self._on_health is not None:
                lag = time.time() - self.state.published_at
                self._on_health(self.max_lag_s is None or lag <= self.max_lag_s)
            now = time.monotonic()
            for due, engine in [r for r in self._retired if r[0] <= now]:
                self._retired.remove((due, engine))
                self._close(engine)
            self._stop.wait(self.poll_s)

    @staticmethod
    def _close(engine: Engine) -> None:
        folder = engine.config.data_dir
        try:
            engine.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
