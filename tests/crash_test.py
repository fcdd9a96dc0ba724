"""Crash test: an acknowledged upsert or delete survives ``kill -9`` at any moment, and the
index never disagrees with the store.

Each round: W writer threads (one client each, no retries) write random upserts and deletes
of their own ids against a real server process; the main thread kills the server with SIGKILL
at a random moment while they write, restarts it on the same data dir and checks every id
against a model built from the writers' logs:

* the last acknowledged op on an id decides its state: an upsert's text, or absent after a
  delete (NOT_FOUND);
* an op that raised is uncertain: until the next check, the id may hold the state before it
  or the state of any uncertain op after it (a writer stops for the round at its first
  error, so nothing it sent can land after a later op of its own); each check settles the
  model to what the restarted server holds;
* ``stats().users == stats().indexed`` == the ids present; a lookalike seeded with a present
  id (include_seeds) returns every present id exactly once, the seed first with score ~1.0,
  and every score equals the dot product of the stored vectors (``get_user(include_vector=
  True)``), so the index holds exactly the store's vectors; a few present ids are also found
  first, score ~1.0, from their own text.

The server saves an index generation every ``--save-every`` changes, so kills also land around
generation saves and restarts replay the store on top of a saved generation. With
``--startup-kill-rate`` some restarts are killed again while loading.

Run ``python tests/crash_test.py --kills 200 --writers 4 --seed 1``; exit status 0 when every
count is 0, 1 when one is not, 2 when the harness could not run (server did not start, ...).
``tests/test_crash.py`` runs the short form under pytest. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from audience.client import AudienceClient, AudienceError, NotFound, Profile  # noqa: E402

WORDS = (
    "apple banana cherry grape lemon mango melon olive peach pear plum berry "
    "river mountain forest desert ocean island valley canyon meadow glacier"
).split()

ABSENT = None  # the model's state of an id that is not stored
SCORE_TOL = 1e-3  # lookalike score vs dot product of stored vectors
# A user's stored text embedded again, alone, against the vector stored from its batch: the
# int8 encoder quantizes activations per batch, so the same text in another batch comes out
# at cosine ~0.99 to itself, not 1 (found first all the same).
SELF_SCORE = 0.98

State = str | None  # the stored text of an id, or ABSENT


class HarnessError(RuntimeError):
    """The test could not run (server did not start, a thread hung): not a verdict."""


# ---------------------------------------------------------------- the server process


class ServerProcess:
    """``python -m audience.server serve`` on 127.0.0.1, a free port, a given data dir."""

    def __init__(self, data_dir: Path, work_dir: Path, config_file: Path, lexical_dim: int = 0):
        self.data_dir = data_dir
        self.work_dir = work_dir
        self.config_file = config_file
        self.lexical_dim = lexical_dim
        self.log_path = work_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = ""
        self.starts = 0

    def spawn(self) -> None:
        """Start the process; returns at once (see :meth:`wait_serving`)."""
        self.starts += 1
        self.port_file = self.work_dir / f"port-{self.starts}"
        self.port_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "audience.server",
            "serve",
            "--config",
            str(self.config_file),
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            "--lexical-dim",
            str(self.lexical_dim),
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== crash_test: start #{self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_serving(self, timeout: float) -> str:
        """Wait for the port file, then for health SERVING; returns the target."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"server exited with {self.proc.returncode} during start\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise HarnessError(f"no port file after {timeout:.0f}s\n" + self.log_tail())
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(self.port_file.read_text())}"
        with AudienceClient(self.target, timeout=10.0) as client:
            try:
                client.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
            except AudienceError as exc:
                raise HarnessError(f"server never SERVING: {exc}\n" + self.log_tail()) from exc
        return self.target

    def start(self, timeout: float) -> str:
        self.spawn()
        return self.wait_serving(timeout)

    def kill(self) -> None:
        """SIGKILL and reap; a no-op when not running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError("server did not die after SIGKILL") from exc
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (a clean shutdown saves a generation), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- writers and their logs


@dataclass
class Op:
    """One write a writer sent: ``values`` maps each id to its text (ABSENT for a delete)."""

    kind: str  # "upsert" | "delete"
    values: dict[str, State]
    acked: bool
    error: str = ""
    sent_at: float = 0.0  # time.monotonic()
    failed_at: float = 0.0


@dataclass
class WriterLog:
    writer: int
    ops: list[Op] = field(default_factory=list)
    crashed: str = ""  # an exception that was not an AudienceError (a harness bug)


def make_text(rng: random.Random, writer: int, version: int) -> str:
    """A tiny text that names its version: fast to embed, unique per id owner."""
    return f"v{writer}.{version} {rng.choice(WORDS)} {rng.choice(WORDS)}"


def write_round(
    writer: int,
    target: str,
    ids: list[str],
    rng: random.Random,
    versions: list[int],
    stop: threading.Event,
    log: WriterLog,
    *,
    op_timeout: float,
    deadline: float,
    max_ops: int,
) -> None:
    """Random upserts (1-5 ids) and deletes (1-3 ids) of ``ids`` until ``stop``, the first
    error, ``deadline`` (time.monotonic()) or ``max_ops``. Every op goes into ``log``."""
    client = AudienceClient(target, timeout=op_timeout, retries=0)
    try:
        for _ in range(max_ops):
            if stop.is_set() or time.monotonic() > deadline:
                return
            upsert = rng.random() < 0.7
            chosen = rng.sample(ids, rng.randint(1, min(5 if upsert else 3, len(ids))))
            values: dict[str, State] = {}
            for uid in chosen:
                if upsert:
                    versions[0] += 1
                values[uid] = make_text(rng, writer, versions[0]) if upsert else ABSENT
            op = Op("upsert" if upsert else "delete", values, False, sent_at=time.monotonic())
            try:
                if upsert:
                    client.upsert_users([Profile(u, texts=[t]) for u, t in values.items()])
                else:
                    client.delete_users(chosen)
            except AudienceError as exc:
                op.error, op.failed_at = f"{type(exc).__name__}: {exc}", time.monotonic()
                log.ops.append(op)
                return  # uncertain; nothing more from this writer until the next round
            op.acked = True
            log.ops.append(op)
    except Exception as exc:  # a harness bug: reported, not swallowed
        log.crashed = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


# ---------------------------------------------------------------- the model and the checks


@dataclass
class IdModel:
    """What an id may hold: ``confirmed`` (settled by the last check or acked op) and the
    states of uncertain ops sent after it."""

    confirmed: State = ABSENT
    uncertain: list[State] = field(default_factory=list)
    acked_this_round: bool = False  # its current ``confirmed`` comes from an acked op
    history: list[str] = field(default_factory=list)  # ops, for reports

    def acceptable(self) -> list[State]:
        return [self.confirmed, *self.uncertain]


@dataclass
class CrashResult:
    kills: int = 0
    startup_kills: int = 0
    acked_ops: int = 0
    uncertain_ops: int = 0
    acknowledged_writes_checked: int = 0
    states_checked: int = 0
    lost: int = 0
    resurrected: int = 0
    duplicates: int = 0
    index_mismatch: int = 0
    unexpected_errors: int = 0
    early_timeouts: int = 0
    seconds: float = 0.0
    completed: bool = False
    details: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (
            self.lost
            or self.resurrected
            or self.duplicates
            or self.index_mismatch
            or self.unexpected_errors
        )

    def summary(self) -> str:
        return (
            f"kills={self.kills} acknowledged_writes_checked={self.acknowledged_writes_checked}"
            f" lost={self.lost} resurrected={self.resurrected} duplicates={self.duplicates}"
            f" index_mismatch={self.index_mismatch} unexpected_errors={self.unexpected_errors}"
        )

    def info(self) -> str:
        return (
            f"startup_kills={self.startup_kills} acked_ops={self.acked_ops}"
            f" uncertain_ops={self.uncertain_ops} states_checked={self.states_checked}"
            f" early_timeouts={self.early_timeouts} seconds={self.seconds:.0f}"
            f" completed={self.completed}"
        )


def _short(state: State) -> str:
    return "ABSENT" if state is None else repr(state)


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))


class Checker:
    """The model of every id, fed by writer logs, checked against a restarted server."""

    def __init__(
        self, ids: list[str], result: CrashResult, rng: random.Random, seed_checks: int
    ) -> None:
        self.models = {uid: IdModel() for uid in ids}
        self.result = result
        self.rng = rng
        self.seed_checks = seed_checks

    def apply(self, logs: list[WriterLog], killed_at: float, round_no: int) -> None:
        r = self.result
        for log in logs:
            if log.crashed:
                r.unexpected_errors += 1
                r.details.append(f"round {round_no}: writer {log.writer} crashed: {log.crashed}")
            for op in log.ops:
                tag = "ack" if op.acked else "uncertain"
                for uid, state in op.values.items():
                    m = self.models[uid]
                    m.history.append(f"r{round_no} {op.kind} {_short(state)} {tag}")
                    del m.history[:-12]
                    if op.acked:
                        m.confirmed, m.uncertain, m.acked_this_round = state, [], True
                    else:
                        m.uncertain.append(state)
                if op.acked:
                    r.acked_ops += 1
                    continue
                r.uncertain_ops += 1
                if op.failed_at < killed_at:  # failed while the server was alive
                    if op.error.startswith("DeadlineExceeded"):
                        r.early_timeouts += 1  # possible on a loaded machine; still uncertain
                    else:
                        r.unexpected_errors += 1
                        r.details.append(
                            f"round {round_no}: writer {log.writer} {op.kind} "
                            f"{sorted(op.values)} failed before the kill: {op.error}"
                        )

    def verify(self, client: AudienceClient, round_no: int) -> dict[str, int]:
        """Check the server against the model, then settle the model to what it holds."""
        r = self.result
        before = (r.lost, r.resurrected, r.duplicates, r.index_mismatch)
        observed: dict[str, State] = {}
        vectors: dict[str, list[float]] = {}
        checked = 0
        for uid, m in self.models.items():
            try:
                rec = client.get_user(uid, include_vector=True)
            except NotFound:
                state: State = ABSENT
            else:
                texts = [t.text for t in rec.profile.texts]
                state = texts[0] if len(texts) == 1 else f"<texts {texts!r}>"
                vectors[uid] = rec.vector_values()
                if len(vectors[uid]) != rec.dimension:
                    r.index_mismatch += 1
                    r.details.append(
                        f"round {round_no}: {uid} vector of {len(vectors[uid])} floats, "
                        f"dimension {rec.dimension}"
                    )
            observed[uid] = state
            r.states_checked += 1
            if state in m.acceptable():
                if m.acked_this_round and not m.uncertain:
                    checked += 1
            else:
                if state is ABSENT or m.confirmed is not ABSENT:
                    r.lost += 1
                    kind = "lost"
                else:
                    r.resurrected += 1
                    kind = "resurrected"
                r.details.append(
                    f"round {round_no}: {kind} {uid}: holds {_short(state)}, expected one of "
                    f"{[_short(s) for s in m.acceptable()]}; last ops: {m.history}"
                )
            m.confirmed, m.uncertain, m.acked_this_round = state, [], False
        r.acknowledged_writes_checked += checked
        present = sorted(uid for uid, s in observed.items() if s is not ABSENT)
        self._check_index(client, present, vectors, observed, round_no)
        after = (r.lost, r.resurrected, r.duplicates, r.index_mismatch)
        return {
            "checked": checked,
            "present": len(present),
            "new_failures": sum(after) - sum(before),
        }

    def _check_index(
        self,
        client: AudienceClient,
        present: list[str],
        vectors: dict[str, list[float]],
        observed: dict[str, State],
        round_no: int,
    ) -> None:
        r = self.result

        def mismatch(text: str) -> None:
            r.index_mismatch += 1
            r.details.append(f"round {round_no}: {text}")

        stats = client.stats()
        if not stats.users == stats.indexed == len(present):
            mismatch(
                f"stats users={stats.users} indexed={stats.indexed}, present ids={len(present)}"
            )
        if not present:
            return
        seeds = self.rng.sample(present, min(self.seed_checks, len(present)))
        for n, seed in enumerate(seeds):
            result = client.find_lookalikes(
                seed_ids=[seed], k=len(present) + 10, include_seeds=True
            )
            got = [u.user_id for u in result.users]
            if n == 0:  # the whole index, once per check
                dups = [uid for uid, c in Counter(got).items() if c > 1]
                if dups:
                    r.duplicates += len(dups)
                    r.details.append(f"round {round_no}: ids listed twice: {dups}")
                if set(got) != set(present):
                    mismatch(
                        f"index holds {len(set(got))} ids, store {len(present)}: "
                        f"only in index {sorted(set(got) - set(present))[:10]}, "
                        f"only in store {sorted(set(present) - set(got))[:10]}"
                    )
            top = result.users[0] if result.users else None
            if top is None or top.user_id != seed or top.score < SELF_SCORE:
                mismatch(f"seed {seed} not first with score ~1: {result.users[:3]}")
            q = vectors[seed]
            qn = math.sqrt(_dot(q, q)) or 1.0
            for u in result.users:
                if u.user_id not in vectors:
                    continue
                expected = _dot(q, vectors[u.user_id]) / qn
                if abs(u.score - expected) > SCORE_TOL:
                    mismatch(
                        f"seed {seed}: index score of {u.user_id} is {u.score:.5f}, stored "
                        f"vectors give {expected:.5f} (index vector differs from the store)"
                    )
                    break
            # The indexed vector is the one of the stored text: found first from the text.
            text = observed[seed]
            assert text is not None
            by_text = client.find_lookalikes(seed_texts=[text], k=3).users
            hit = next((u for u in by_text if u.user_id == seed), None)
            if hit is None or hit.score < SELF_SCORE or hit.score < by_text[0].score - 1e-5:
                mismatch(f"text of {seed} does not find it first: {by_text}")


# ---------------------------------------------------------------- the run


def run_crash_test(
    *,
    kills: int = 10,
    writers: int = 4,
    ids_per_writer: int = 50,
    seed: int = 1,
    min_write: float = 0.5,
    max_write: float = 3.0,
    op_timeout: float = 10.0,
    start_timeout: float = 180.0,
    max_seconds: float = 3600.0,
    save_every: int = 40,
    startup_kill_rate: float = 0.1,
    seed_checks: int = 3,
    data_dir: Path | None = None,
    out: Callable[[str], None] = print,
) -> CrashResult:
    """Run ``kills`` rounds of write → kill -9 → restart → verify; returns the counts.

    data_dir: kept for post-mortem when given (must be empty or absent); else a temp dir,
    removed at the end. max_seconds bounds the whole run: rounds stop early when it is near
    (``completed`` is then False). Raises HarnessError when the server cannot be run.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    result = CrashResult()
    work = Path(tempfile.mkdtemp(prefix="audience-crash-"))
    keep = data_dir is not None
    data = Path(data_dir) if data_dir is not None else work / "data"
    if data.exists() and any(data.iterdir()):
        raise HarnessError(f"--data-dir {data} is not empty")
    data.mkdir(parents=True, exist_ok=True)
    config = work / "crash.toml"
    config.write_text(f"[engine]\nsave_every_changes = {save_every}\n")
    server = ServerProcess(data, work, config, lexical_dim=0)
    ids = {w: [f"w{w}-u{i}" for i in range(ids_per_writer)] for w in range(writers)}
    checker = Checker([u for w in ids for u in ids[w]], result, rng, seed_checks)
    versions = {w: [0] for w in range(writers)}
    restart_costs: list[float] = []

    def time_left() -> float:
        return max_seconds - (time.monotonic() - t0)

    try:
        server.start(start_timeout)
        for round_no in range(1, kills + 1):
            # Each round needs writing + a restart (~5-8 s, longer on a busy machine).
            expected_restart = max(restart_costs[-5:], default=10.0)
            if time_left() < max_write + 2 * expected_restart + 10:
                out(f"stopping after {result.kills} kills: --max-seconds {max_seconds:.0f} near")
                break
            stop = threading.Event()
            logs = [WriterLog(w) for w in range(writers)]
            write_for = rng.uniform(min_write, max_write)
            deadline = time.monotonic() + write_for + op_timeout + 5
            threads = [
                threading.Thread(
                    target=write_round,
                    args=(
                        w,
                        server.target,
                        ids[w],
                        random.Random(seed * 1_000_003 + round_no * 101 + w),
                        versions[w],
                        stop,
                        logs[w],
                    ),
                    kwargs={"op_timeout": op_timeout, "deadline": deadline, "max_ops": 100_000},
                    name=f"crash-writer-{w}",
                    daemon=True,
                )
                for w in range(writers)
            ]
            for t in threads:
                t.start()
            time.sleep(write_for)
            killed_at = time.monotonic()
            server.kill()
            result.kills += 1
            stop.set()
            for t in threads:
                t.join(timeout=op_timeout + 10)
                if t.is_alive():
                    raise HarnessError(f"{t.name} did not stop within {op_timeout + 10:.0f}s")
            checker.apply(logs, killed_at, round_no)

            restart_t0 = time.monotonic()
            if rng.random() < startup_kill_rate:  # kill it again while it loads
                server.spawn()
                time.sleep(rng.uniform(0.0, 3.0))
                server.kill()
                result.startup_kills += 1
            server.start(start_timeout)
            restart_costs.append(time.monotonic() - restart_t0)

            with AudienceClient(server.target, timeout=30.0, retries=3) as client:
                found = checker.verify(client, round_no)
            acked = sum(op.acked for log in logs for op in log.ops)
            unsure = sum(not op.acked for log in logs for op in log.ops)
            out(
                f"kill {round_no}/{kills}: wrote {write_for:.2f}s, {acked} acked + {unsure} "
                f"uncertain ops; restart {restart_costs[-1]:.1f}s; {found['present']} present, "
                f"{found['checked']} acked writes checked; failures "
                f"{'+' + str(found['new_failures']) if found['new_failures'] else '0'}"
                f" (total lost={result.lost} resurrected={result.resurrected} "
                f"dup={result.duplicates} index={result.index_mismatch} "
                f"errors={result.unexpected_errors})"
            )
        else:
            result.completed = True
    finally:
        try:
            server.stop()
        finally:
            result.seconds = time.monotonic() - t0
            if keep:
                shutil.copy(server.log_path, data.parent / f"{data.name}.server.log")
                out(f"data dir kept at {data}, server log at {data.name}.server.log beside it")
            elif result.details:
                out("server log:\n" + server.log_tail(60))
            shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="rounds of write / kill -9 / verify")
    p.add_argument("--writers", type=int, default=4, help="concurrent writer threads")
    p.add_argument("--ids-per-writer", type=int, default=50, help="user ids each writer owns")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--min-write", type=float, default=0.5, help="shortest round, seconds")
    p.add_argument("--max-write", type=float, default=3.0, help="longest round, seconds")
    p.add_argument("--op-timeout", type=float, default=10.0, help="deadline of each write, s")
    p.add_argument("--start-timeout", type=float, default=180.0, help="server start bound, s")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="bound of the whole run")
    p.add_argument(
        "--save-every", type=int, default=40, help="server saves an index generation per N changes"
    )
    p.add_argument(
        "--startup-kill-rate", type=float, default=0.1, help="share of restarts killed loading"
    )
    p.add_argument("--seed-checks", type=int, default=3, help="lookalike checks per restart")
    p.add_argument("--data-dir", type=Path, help="keep the data dir here (default: temp, removed)")
    args = p.parse_args(argv)
    try:
        result = run_crash_test(
            kills=args.kills,
            writers=args.writers,
            ids_per_writer=args.ids_per_writer,
            seed=args.seed,
            min_write=args.min_write,
            max_write=args.max_write,
            op_timeout=args.op_timeout,
            start_timeout=args.start_timeout,
            max_seconds=args.max_seconds,
            save_every=args.save_every,
            startup_kill_rate=args.startup_kill_rate,
            seed_checks=args.seed_checks,
            data_dir=args.data_dir,
            out=lambda line: print(line, flush=True),
        )
    except HarnessError as exc:
        print(f"crash test could not run: {exc}", file=sys.stderr)
        return 2
    for line in result.details[:50]:
        print("FAIL", line)
    if len(result.details) > 50:
        print(f"... and {len(result.details) - 50} more")
    print(result.info())
    print(result.summary(), flush=True)
    if not result.ok():
        return 1
    if result.acknowledged_writes_checked == 0:
        print("no acknowledged write was checked: the test proved nothing", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
