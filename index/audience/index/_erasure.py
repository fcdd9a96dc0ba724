"""Erasure that reaches every copy of a user in the data dir.

A delete commits in the store (rows overwritten with zeros, the erasure recorded as a keyed
hash of the id and the delete's sequence, the write-ahead log truncated), then:

    segments    the user's id is withdrawn from the exemplars of the served model and of every
                saved model version (model.json rewritten); memberships were dropped with the
                rows
    snapshots   every snapshot's store applies the erasure (its rows overwritten likewise)

Those steps run again at every start for erasures a copy has not applied yet (a crash between
the commit and them, or a store restored from an older copy with `audience restore`), so an
erasure is never lost half-way. Index generations hold vectors and attribute columns by
internal id only (no user id); the erased users' vectors and attributes are dropped at load
(the store no longer has their iids) and gone from the next generations.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

from ._catalog import INDEX_DIR, SEGMENTS_DIR, SNAPSHOT_DIR, STORE_FILE, Catalog
from ._durable import DataDirLock
from ._segments import SegmentModel
from ._segments._model import withdraw_exemplars
from ._store import ProfileStore

log = logging.getLogger("audience.index")

ERASING = "erasing from segment models and snapshots"  # the name of that work in pending


def withdraw_from_served(model: SegmentModel, user_ids: set[str]) -> bool:
    """Take the ids out of the served model's exemplars (replacing each list whole, so a
    reader sees one list or the other); True if any was there. Call under the write lock."""
    changed = False
    for seg in model.nodes():
        kept = [u for u in seg.exemplar_user_ids if u not in user_ids]
        if len(kept) != len(seg.exemplar_user_ids):
            seg.exemplar_user_ids = kept
            changed = True
    return changed


def withdraw_from_files(catalog: Catalog) -> int:
    """Withdraw erased users from the exemplars of every saved segment model built before
    their erasure (a later model may show a new user of the same id). Looks up the few
    exemplar ids among the erasures, not the other way round."""
    store = catalog.store

    def erased(user_id: str, stats: dict) -> bool:
        seq = store.erased_at(user_id)
        return seq is not None and int(stats.get("store_sequence", 0)) < seq

    return withdraw_exemplars(catalog.config.data_dir / SEGMENTS_DIR, erased)


def reach_copies(catalog: Catalog) -> None:
    """After a delete: every recorded erasure reaches the saved segment models and the
    snapshots (those that had it already are not rewritten), so one that failed before (a
    full disk) is carried along."""
    withdraw_from_files(catalog)
    scrub_snapshots(catalog)


def scrub_snapshots(catalog: Catalog) -> int:
    """Apply to every snapshot's store the erasures it has not applied; returns the rows
    erased. Every snapshot is tried; if one could not be (a full disk, a damaged file), an
    OSError naming them is raised at the end, and the caller retries."""
    root = catalog.config.data_dir / SNAPSHOT_DIR
    erased, failed = 0, []
    for snap in sorted(root.iterdir()) if root.exists() else ():
        path = snap / STORE_FILE
        if not path.exists():
            continue
        try:
            copy = ProfileStore(path, erasure_salt=catalog.store.erasure_salt)
            try:
                done = int(copy.get_meta("erasures_applied") or 0)
                todo = catalog.store.erasures(since_seq=done)
                if todo:
                    erased += copy.apply_erasures(todo)
            finally:
                copy.close()
        except Exception as exc:  # noqa: BLE001 - the others are still tried
            failed.append(f"{snap.name} ({exc})")
    if failed:
        raise OSError(f"erasures not applied to snapshot {', '.join(failed)}")
    return erased


def apply_at_open(catalog: Catalog) -> None:
    """At start: the store applies recorded erasures it has not (a restored copy), then the
    saved segment models and the snapshots catch up."""
    store = catalog.store
    applied = int(store.get_meta("erasures_applied") or 0)
    pending = store.erasures(since_seq=applied)
    if pending:
        erased = store.apply_erasures(pending)
        log.info("Erasure - applied %d recorded erasures (%d users erased)", len(pending), erased)
    if store.has_erasures():
        withdrawn = withdraw_from_files(catalog)
        if withdrawn:
            log.info("Erasure - withdrew %d erased users from saved segment models", withdrawn)
        try:
            scrub_snapshots(catalog)
        except OSError as exc:  # the server starts; every delete and start tries again
            log.error("Erasure - %s", exc)
            catalog.pending[ERASING] = f"{exc}; retried"


def import_erasures(store_path: Path, live_store: Path) -> int:
    """Copy the erasures recorded in `live_store` (the store of the data dir a backup came
    from, read-only: its server may be running) into the store at `store_path`; a server
    opening that store applies them. The two must share their erasure key (be copies of one
    data dir). Returns how many erasures were copied."""
    db = sqlite3.connect(f"file:{live_store}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='erasure_salt'").fetchone()
        entries = [(int(q), str(h)) for q, h in db.execute("SELECT seq, id_hash FROM erasures")]
    except sqlite3.Error as exc:
        raise ValueError(f"{live_store}: no erasures can be read ({exc})") from exc
    finally:
        db.close()
    salt = None if row is None else str(row[0])
    target = ProfileStore(store_path, erasure_salt=salt)
    try:
        if salt is None or target.erasure_salt != salt:
            raise ValueError(f"{live_store} is not the data dir this copy was made from")
        target.record_erasures(entries)
    finally:
        target.close()
    return len(entries)


def restore_snapshot(snapshot: Path, data_dir: Path, *, live: Path | None = None) -> int:
    """Copy a snapshot (`audience snapshot`) into a new data dir, with the erasures recorded
    since in `live` (default: the data dir the snapshot lies in); the server applies them
    when it opens the copy. Returns how many erasures came along."""
    snapshot, data_dir = Path(snapshot), Path(data_dir)
    if not (snapshot / STORE_FILE).exists() or not any(snapshot.glob("gen-*.faiss")):
        raise ValueError(f"{snapshot} is not a snapshot (no {STORE_FILE} and index generation)")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty: restore into a new data dir")
    if live is None and snapshot.parent.name == SNAPSHOT_DIR:
        live = snapshot.parent.parent
    (data_dir / INDEX_DIR).mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir)
    try:
        shutil.copy2(snapshot / STORE_FILE, data_dir / STORE_FILE)
        for part in snapshot.glob("gen-*.*"):  # each index, its manifest and its sidecars
            shutil.copy2(part, data_dir / INDEX_DIR / part.name)
        copied = 0
        if live is not None and (live / STORE_FILE).exists():
            copied = import_erasures(data_dir / STORE_FILE, live / STORE_FILE)
        return copied
    finally:
        lock.release()
