"""Checking a data dir's store: at start, in the background, every vector against its
checksum; offline (`audience check`), that and more, with repair.

    structure   SQLite's quick_check of the file (pages, b-trees)
    rows        every user: its vectors against their checksum (vec_crc; rows written before
                checksums: finite and of unit norm), its texts and attributes as JSON
    repair      damaged vectors computed again from the stored texts and attributes (as a
                rebuild would) and written with a new sequence, so the index takes them at
                the next start; a row whose texts are damaged too, or whose vector the
                profile brought itself, cannot be repaired: it is reported
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._catalog import LEXICAL_DIR, STORE_FILE
from ._config import EngineConfig
from ._durable import DataDirLock
from ._encode import ProfileEncoder
from ._errors import PreconditionFailed
from ._store import ProfileStore, StoredRow

log = logging.getLogger("audience.index")

SHOWN = 20  # damaged users listed by name in a report


@dataclass
class CheckReport:
    rows: int = 0
    structure: str | None = None  # quick_check's finding; None = sound
    damaged: list[tuple[int, str, str]] = field(default_factory=list)  # (iid, user id, what)
    repaired: list[str] = field(default_factory=list)  # user ids
    unrepairable: list[tuple[str, str]] = field(default_factory=list)  # (user id, why)
    seconds: float = 0.0

    @property
    def sound(self) -> bool:
        return self.structure is None and not self.damaged

    def lines(self) -> list[str]:
        out = [
            f"store structure: {'ok' if self.structure is None else self.structure}",
            f"rows checked: {self.rows:,}; damaged: {len(self.damaged):,}"
            + (f"; repaired: {len(self.repaired):,}" if self.repaired else "")
            + (f"; not repairable: {len(self.unrepairable):,}" if self.unrepairable else ""),
        ]
        out += [f"  damaged: {u!r} (iid {i}): {what}" for i, u, what in self.damaged[:SHOWN]]
        if len(self.damaged) > SHOWN:
            out.append(f"  ... and {len(self.damaged) - SHOWN:,} more")
        out += [f"  not repairable: {uid!r}: {why}" for uid, why in self.unrepairable[:SHOWN]]
        return out


def row_problem(row: StoredRow) -> str | None:
    """What is wrong with a stored row, or None."""
    return vector_problem(row) or content_problem(row)


def vector_problem(row: StoredRow) -> str | None:
    if not row.intact:
        return "vectors fail their checksum"
    if row.crc is None:  # written before checksums: plausibility only
        v = np.frombuffer(row.vec, dtype="<f4")
        with np.errstate(all="ignore"):
            norm = float(np.linalg.norm(v.astype(np.float64)))
        if not np.isfinite(v).all() or abs(norm - 1.0) > 1e-3:
            return "vector is not finite and of unit norm"
    return None


def content_problem(row: StoredRow) -> str | None:
    for name, text in (("texts", row.texts_json), ("attributes", row.attributes_json)):
        try:
            json.loads(text)
        except ValueError:
            return f"{name} are not valid JSON"
    return None


def scan(store: ProfileStore, progress: Callable[[str, int, int], None] | None = None):
    """(report, damaged rows) of every row, read through a connection of its own."""
    report = CheckReport(structure=store.quick_check())
    damaged: list[StoredRow] = []
    total = store.count()
    for rows in store.iter_rows(batch=5000, own_connection=True):
        for row in rows:
            problem = row_problem(row)
            if problem:
                report.damaged.append((row.iid, row.user_id, problem))
                damaged.append(row)
        report.rows += len(rows)
        if progress:
            progress("check rows", report.rows, total)
    return report, damaged


def check_store(
    store: ProfileStore,
    *,
    repair: Callable[[list[StoredRow]], tuple[list[str], list[tuple[str, str]]]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Check every row of `store`; with `repair`, hand it the damaged rows: it returns (user
    ids repaired, (user id, why) not repairable)."""
    t0 = time.perf_counter()
    report, damaged = scan(store, progress)
    if repair is not None and damaged:
        report.repaired, report.unrepairable = repair(damaged)
    report.seconds = time.perf_counter() - t0
    return report


def check_in_background(store: ProfileStore, warnings: list[str]) -> threading.Thread:
    """The start check: every row's vectors against their checksum, in a process of its own
    at the lowest CPU priority (see _vectorcheck.py), watched by a thread, so the server
    serves meanwhile at full speed (a million users: about 5 s of one core). A finding is
    logged and listed in `warnings`, by iid (`audience check` names the users)."""

    def run() -> None:
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(Path(__file__).with_name("_vectorcheck.py")),
                 str(store.path), str(os.getpid())],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        except OSError as exc:
            done, why = None, str(exc)
        if done is None or done.returncode != 0:
            note = f"store check stopped: {why}; run `audience check` with the server stopped"
            log.error("Store - %s", note)
            warnings.append(note)
            return
        result = json.loads(done.stdout)
        damaged = result["damaged"]
        if damaged:
            shown = ", ".join(map(str, damaged[:5]))
            note = (
                f"store check: {len(damaged)} stored users fail their vector checksums "
                f"(iids {shown}{', ...' if len(damaged) > 5 else ''}); "
                "run `audience check --repair` with the server stopped"
            )
            log.error("Store - %s", note)
            warnings.append(note)
        else:
            log.info(
                "Store - every stored vector verified in %.1fs (%d users)",
                time.perf_counter() - t0, result["rows"],
            )  # fmt: skip

    thread = threading.Thread(target=run, name="store-check", daemon=True)
    thread.start()
    return thread


def check_data_dir(
    config: EngineConfig,
    *,
    repair: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """`audience check`: the whole store of `config.data_dir`, with no server on it (the data
    dir's lock is taken). With `repair`, damaged vectors are computed again with the
    encoder `config` describes, which must make the vectors the data dir holds."""
    lock = DataDirLock(config.data_dir)
    try:
        store = ProfileStore(config.data_dir / STORE_FILE)
        try:
            if config.attributes is None:
                config = config.with_attributes_json(store.get_meta("attributes") or "[]")
            fixer = _repairer(config, store) if repair else None
            return check_store(store, repair=fixer, progress=progress)
        finally:
            store.close()
    finally:
        lock.release()


def _repairer(config: EngineConfig, store: ProfileStore):
    def repair(rows: list[StoredRow]) -> tuple[list[str], list[tuple[str, str]]]:
        lexical_dir = config.data_dir / LEXICAL_DIR
        encoder = ProfileEncoder.open(
            config,
            lexical_dir=lexical_dir if lexical_dir.exists() else None,
            vocabulary=store.vocabulary(),
        )
        if encoder.fingerprint != store.get_meta("vector_fingerprint"):
            raise PreconditionFailed(
                "these settings make other vectors than the data dir holds; repair with the "
                "server's settings (--config, or the same flags)"
            )
        fixable, unfixable = [], []
        for row in rows:
            if row.own_vec:
                unfixable.append((row.user_id, "its vector came with the profile: upsert it again"))
            elif content_problem(row):
                unfixable.append((row.user_id, "its texts or attributes are damaged too"))
            else:
                fixable.append(row)
        items = []
        for row in fixable:
            again = encoder.reencode([row], reembed=True).updates[0]
            v = np.frombuffer(again[2], dtype="<f4")
            if not (np.isfinite(v).all() and abs(float(np.linalg.norm(v)) - 1.0) < 1e-3):
                unfixable.append((row.user_id, "nothing to compute its vector from"))
            else:
                items.append(again)
        if items:
            store.repair_vectors(items)
        fixed = {iid for iid, _, _ in items}
        return [r.user_id for r in fixable if r.iid in fixed], unfixable

    return repair
