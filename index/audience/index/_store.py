"""The profile store: SQLite in the data dir, WAL mode, synchronous=FULL.

Every write runs in one transaction and is on disk when the method returns, so an
acknowledged write survives `kill -9`. Each write transaction takes the next sequence
number; an index generation records the sequence it has seen, and on start the engine
re-adds users written since and drops ids the store no longer has (erased users).

Erasure: deleted rows are overwritten with zeros (secure_delete) and the write-ahead log is
truncated after each delete, so an erased user's id and texts do not linger in the files. Each
erasure is recorded, as a keyed hash of the id and the sequence of the delete, in the same
transaction; that record lets copies made before (snapshots, backups, replicas) apply it.

A full disk is StorageFull, raised after the transaction is rolled back (a failed rollback is
logged, never raised in place of the first error); nothing of that call was written.

Tables
    users(iid, user_id, seq, texts, attributes, text_vec, vec, own_vec, vec_crc)
        iid: the int64 id in the vector index (AUTOINCREMENT: never reused)
        texts: JSON [[text, weight, timestamp], ...]; attributes: JSON {name: value}
        text_vec: pooled text embedding (float32) or NULL; vec: the user vector (float32)
        vec_crc: CRC-32 of vec and text_vec (bit rot shows at reads and `audience check`)
    vocab(attribute, value, slot)   learned categorical values (append-only)
    erasures(seq, id_hash)  erased users: HMAC-SHA256 of the id under meta erasure_salt
    meta(key, value)        sequence counter, fingerprints, erasure salt
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._durable import disk_full_as
from ._errors import StorageFull
from ._types import AttrValue

log = logging.getLogger("audience.index")

# users_meta covers what a server reads of every user at start (iter_meta): without it that
# scan reads every page of the table, vectors and texts included (2 GB at 1M users).
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    iid INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    texts TEXT NOT NULL,
    attributes TEXT NOT NULL,
    text_vec BLOB,
    vec BLOB NOT NULL,
    own_vec INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS users_seq ON users(seq);
CREATE INDEX IF NOT EXISTS users_meta ON users(iid, user_id, attributes);
CREATE TABLE IF NOT EXISTS vocab (
    attribute TEXT NOT NULL, value TEXT NOT NULL, slot INTEGER NOT NULL,
    PRIMARY KEY (attribute, value)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS erasures (seq INTEGER NOT NULL, id_hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS erasures_seq ON erasures(seq);
CREATE INDEX IF NOT EXISTS erasures_hash ON erasures(id_hash);
"""


def vec_crc(vec: bytes, text_vec: bytes | None) -> int:
    """The checksum stored beside a row's vectors."""
    return zlib.crc32(text_vec or b"", zlib.crc32(vec))


@dataclass(frozen=True)
class UserRow:
    user_id: str
    texts_json: str
    attributes_json: str
    text_vec: bytes | None
    vec: bytes
    own_vec: bool = False  # the profile brought its own vector: never recomputed


@dataclass(frozen=True)
class StoredRow:
    iid: int
    user_id: str
    seq: int
    texts_json: str
    attributes_json: str
    text_vec: bytes | None
    vec: bytes
    own_vec: int = 0
    crc: int | None = None  # None: written before checksums (verified by `audience check`)

    @property
    def intact(self) -> bool:
        """Whether the vectors match their checksum (or have none to match)."""
        return self.crc is None or self.crc == vec_crc(self.vec, self.text_vec)

    @property
    def attributes(self) -> dict:
        return json.loads(self.attributes_json)

    @property
    def texts(self) -> list:
        return json.loads(self.texts_json)


class ProfileStore:
    """Thread-safe: one connection, one lock. Reads are short; writes are batched."""

    def __init__(self, path: Path, *, erasure_salt: str | None = None) -> None:
        """Open (or create) the store at `path`. `erasure_salt`: the key to adopt when the
        store has none yet (a copy made before erasures were keyed)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self.full_since: float | None = None  # when writes began to fail on a full disk
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # erased rows are overwritten with zeros
        with disk_full_as("the data dir cannot be opened"):
            self._db.executescript(SCHEMA)
            self._migrate()
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM users), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key='seq'), 0))"
        ).fetchone()
        self._seq = int(row[0])
        salt = self.get_meta("erasure_salt")
        if salt is None:
            salt = erasure_salt or secrets.token_hex(32)
            self.set_meta("erasure_salt", salt)
        self.erasure_salt = salt
        self._salt = bytes.fromhex(salt)

    def _migrate(self) -> None:
        """Columns added since a data dir was made: vec_crc (filled in for every row)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(users)")}
        if "vec_crc" not in columns:
            log.info("Store - adding vector checksums to every stored user (once)")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("ALTER TABLE users ADD COLUMN vec_crc INTEGER")
                rows = self._db.execute("SELECT iid, vec, text_vec FROM users").fetchall()
                self._db.executemany(
                    "UPDATE users SET vec_crc=? WHERE iid=?",
                    [(vec_crc(v, tv), iid) for iid, v, tv in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction under the lock. On an error it is rolled back (if SQLite has
        not ended it already: it does on a full disk) and the first error is raised, as
        StorageFull("`what`: ...") when the disk is full."""
        with self._lock:
            try:
                with disk_full_as(what):
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._rollback()
                        raise
            except StorageFull:
                self.full_since = self.full_since or time.time()
                raise
            self.full_since = None

    def _rollback(self) -> None:
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the first error is what the caller must see
            log.error("Store - rollback failed too: %s", exc)

    def id_hash(self, user_id: str) -> str:
        """The keyed hash an erasure is recorded under (no id is kept in clear)."""
        return hmac.new(
            self._salt, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    # ------------------------------------------------------------------ writes

    @property
    def sequence(self) -> int:
        return self._seq

    def upsert(
        self, rows: Sequence[UserRow], new_vocab: Iterable[tuple[str, str, int]] = ()
    ) -> tuple[int, list[int]]:
        """Insert or replace users (and learned vocabulary) in one durable transaction.

        Returns the new sequence number and the iid of each row, in order.
        """
        seq = self._seq + 1
        iids: list[int] = []
        with self._transaction("profiles not written"):
            self._db.executemany(
                "INSERT INTO vocab(attribute, value, slot) VALUES (?, ?, ?)", list(new_vocab)
            )
            for r in rows:
                cur = self._db.execute(
                    "INSERT INTO users"
                    "(user_id, seq, texts, attributes, text_vec, vec, own_vec, vec_crc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(user_id) DO UPDATE SET seq=excluded.seq,"
                    " texts=excluded.texts, attributes=excluded.attributes,"
                    " text_vec=excluded.text_vec, vec=excluded.vec, own_vec=excluded.own_vec,"
                    " vec_crc=excluded.vec_crc"
                    " RETURNING iid",
                    (
                        r.user_id,
                        seq,
                        r.texts_json,
                        r.attributes_json,
                        r.text_vec,
                        r.vec,
                        int(r.own_vec),
                        vec_crc(r.vec, r.text_vec),
                    ),
                )
                iids.append(int(cur.fetchone()[0]))
            self._set_seq(seq)
        self._seq = seq
        return seq, iids

    def delete(self, user_ids: Sequence[str]) -> tuple[int, list[tuple[str, int]]]:
        """Erase users, recording each erasure. Returns the new sequence and the (user_id, iid)
        pairs that existed. The write-ahead log is truncated afterwards, so the erased rows'
        old pages do not stay in it."""
        seq = self._seq + 1
        found: list[tuple[str, int]] = []
        with self._transaction("users not deleted"):
            for uid in dict.fromkeys(user_ids):
                row = self._db.execute(
                    "DELETE FROM users WHERE user_id=? RETURNING iid", (uid,)
                ).fetchone()
                if row is not None:
                    found.append((uid, int(row[0])))
                    self._db.execute(
                        "INSERT INTO erasures(seq, id_hash) VALUES (?, ?)", (seq, self.id_hash(uid))
                    )
            self._set_seq(seq)
            self._set_meta_locked("erasures_applied", str(seq))
        self._seq = seq
        if found:
            self.truncate_wal()
        return seq, found

    def truncate_wal(self) -> None:
        """Checkpoint the write-ahead log into the database and truncate it to nothing (best
        effort: a busy or failed checkpoint leaves it for the next one)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("Store - write-ahead log not truncated: %s", exc)

    def erasures(self, since_seq: int = 0) -> list[tuple[int, str]]:
        """(sequence, id hash) of the erasures recorded after `since_seq`."""
        with self._lock:
            return [
                (int(q), str(h))
                for q, h in self._db.execute(
                    "SELECT seq, id_hash FROM erasures WHERE seq > ? ORDER BY seq", (since_seq,)
                )
            ]

    def has_erasures(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM erasures LIMIT 1").fetchone() is not None

    def erased_at(self, user_id: str) -> int | None:
        """The sequence of the latest erasure of this id, or None if it was never erased."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(seq) FROM erasures WHERE id_hash=?", (self.id_hash(user_id),)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def record_erasures(self, erasures: Sequence[tuple[int, str]]) -> None:
        """Record erasures from elsewhere (the live data dir of a restored copy) without
        applying them: the next `apply_erasures` of what is recorded past `erasures_applied`
        does."""
        with self._transaction("erasures not recorded"):
            have = {(q, h) for q, h in self._db.execute("SELECT seq, id_hash FROM erasures")}
            self._db.executemany(
                "INSERT INTO erasures(seq, id_hash) VALUES (?, ?)",
                [(q, h) for q, h in erasures if (q, h) not in have],
            )

    def apply_erasures(self, erasures: Sequence[tuple[int, str]]) -> int:
        """Erase the users that `erasures` (from this store's lineage: a live store whose copy
        this is) name and that were written before their erasure; record them here. Returns
        how many rows were erased. The sequence moves past every erasure applied."""
        latest = {}
        for q, h in erasures:
            latest[h] = max(q, latest.get(h, 0))
        if not latest:
            return 0
        doomed = []
        with self._lock:
            for iid, uid, seq in self._db.execute("SELECT iid, user_id, seq FROM users"):
                q = latest.get(self.id_hash(uid))
                if q is not None and seq < q:
                    doomed.append(int(iid))
        top = max(max(latest.values()), self._seq)
        with self._transaction("erasures not applied"):
            self._db.executemany("DELETE FROM users WHERE iid=?", [(i,) for i in doomed])
            have = {(q, h) for q, h in self._db.execute("SELECT seq, id_hash FROM erasures")}
            self._db.executemany(
                "INSERT INTO erasures(seq, id_hash) VALUES (?, ?)",
                [(q, h) for h, q in latest.items() if (q, h) not in have],
            )
            self._set_seq(top)
            self._set_meta_locked("erasures_applied", str(top))
        self._seq = top
        self.truncate_wal()
        return len(doomed)

    def rewrite_vectors(
        self,
        items: Sequence[tuple[int, bytes | None, bytes]],
        new_vocab: Iterable[tuple[str, str, int]] = (),
    ) -> None:
        """Replace (iid, text_vec, vec) after a re-encode, with the vocabulary it learned, in
        one transaction; the sequence does not move."""
        with self._transaction("vectors not rewritten"):
            self._db.executemany(
                "INSERT INTO vocab(attribute, value, slot) VALUES (?, ?, ?)", list(new_vocab)
            )
            self._db.executemany(
                "UPDATE users SET text_vec=?, vec=?, vec_crc=? WHERE iid=?",
                [(tv, v, vec_crc(v, tv), iid) for iid, tv, v in items],
            )

    def repair_vectors(self, items: Sequence[tuple[int, bytes | None, bytes]]) -> int:
        """Write repaired (iid, text_vec, vec) under a new sequence, so that an index
        generation saved before takes them at its next load. Returns the sequence."""
        seq = self._seq + 1
        with self._transaction("repaired vectors not written"):
            self._db.executemany(
                "UPDATE users SET text_vec=?, vec=?, vec_crc=?, seq=? WHERE iid=?",
                [(tv, v, vec_crc(v, tv), seq, iid) for iid, tv, v in items],
            )
            self._set_seq(seq)
        self._seq = seq
        return seq

    def _set_seq(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES ('seq', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(seq),),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, disk_full_as(f"setting {key!r} not written"):
            self._set_meta_locked(key, value)

    def _set_meta_locked(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # ------------------------------------------------------------------ reads

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM users").fetchone()[0])

    def get(self, user_id: str) -> StoredRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT iid, user_id, seq, texts, attributes, text_vec, vec, own_vec, vec_crc"
                " FROM users WHERE user_id=?",
                (user_id,),
            ).fetchone()
        return None if row is None else StoredRow(*row)

    def texts_and_attributes(self, iids: Sequence[int]) -> dict[int, tuple[list, dict]]:
        """iid -> (texts, attributes) for the stored iids among these."""
        return {
            int(iid): (json.loads(texts), json.loads(attrs))
            for iid, texts, attrs in self._rows_of("texts, attributes", iids)
        }

    def attributes_of(self, iids: Sequence[int]) -> dict[int, dict]:
        """iid -> stored attributes, for the stored iids among these."""
        return {int(iid): json.loads(a) for iid, a in self._rows_of("attributes", iids)}

    def vectors(self, iids: Sequence[int]) -> dict[int, bytes]:
        """iid -> stored user vector (float32 bytes) for the stored iids among these."""
        return {int(iid): vec for iid, vec in self._rows_of("vec", iids)}

    def _rows_of(self, columns: str, iids: Sequence[int]) -> list[tuple]:
        """(iid, *columns) of the stored iids among these (500 per statement)."""
        ids = [int(i) for i in iids]
        rows: list[tuple] = []
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(
                    f"SELECT iid, {columns} FROM users WHERE iid IN ({marks})", chunk
                ).fetchall()
        return rows

    def iter_rows(
        self, since_seq: int = 0, batch: int = 5000, *, own_connection: bool = False
    ) -> Iterator[list[StoredRow]]:
        """All users changed after `since_seq`, in iid order, in batches. `own_connection`:
        read through a read-only connection of its own (a long scan that must not hold the
        store's lock)."""
        db, lock = self._db, self._lock
        if own_connection:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            lock = threading.Lock()
        columns = "iid, user_id, seq, texts, attributes, text_vec, vec, own_vec, vec_crc"
        try:
            if since_seq > 0:  # the changed iids from the seq index, not a scan of every row
                # (a scan in iid order that tests seq reads the whole table: 0.6 s at 1M users)
                with lock:  # (no ORDER BY: SQLite would walk the table in iid order)
                    found = db.execute("SELECT iid FROM users WHERE seq > ?", (since_seq,))
                    changed = sorted(r[0] for r in found)
                for start in range(0, len(changed), batch):
                    ids = changed[start : start + batch]
                    rows = []
                    with lock:
                        for s in range(0, len(ids), 500):
                            marks = ",".join("?" * len(ids[s : s + 500]))
                            rows += db.execute(
                                f"SELECT {columns} FROM users WHERE iid IN ({marks})"
                                " AND seq > ? ORDER BY iid",
                                (*ids[s : s + 500], since_seq),
                            ).fetchall()
                    if rows:
                        yield [StoredRow(*r) for r in rows]
                return
            last = -1
            while True:
                with lock:
                    rows = db.execute(
                        f"SELECT {columns} FROM users WHERE seq > ? AND iid > ? ORDER BY iid"
                        " LIMIT ?",
                        (since_seq, last, batch),
                    ).fetchall()
                if not rows:
                    return
                yield [StoredRow(*r) for r in rows]
                last = rows[-1][0]
        finally:
            if own_connection:
                db.close()

    def iter_vectors(self, batch: int = 20000) -> Iterator[tuple[np.ndarray, list[bytes]]]:
        """(iids, user vector bytes) of every user, in iid order, in batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT iid, vec FROM users WHERE iid > ? ORDER BY iid LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            yield np.array([r[0] for r in rows], np.int64), [r[1] for r in rows]
            last = rows[-1][0]

    def iter_meta(
        self, batch: int = 50_000, *, attributes: bool = True
    ) -> Iterator[tuple[np.ndarray, list[str], list[tuple[int, str, AttrValue]]]]:
        """Every user's iid, user id and attributes, in iid order, in batches: (iids, user
        ids, (iid, name, value) of each attribute; none without `attributes`). SQLite takes
        the attributes' JSON apart (json_each): at a million users 1.3 s, where json.loads
        per user took 3.3 s."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT iid, user_id FROM users WHERE iid > ? ORDER BY iid LIMIT ?",
                    (last, batch),
                ).fetchall()
                if not rows:
                    return
                values = (
                    self._attribute_values("u.iid > ? AND u.iid <= ?", (last, rows[-1][0]))
                    if attributes
                    else []
                )
            iids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            yield iids, [r[1] for r in rows], values
            last = rows[-1][0]

    def attributes_since(self, seq: int) -> tuple[np.ndarray, list[tuple[int, str, AttrValue]]]:
        """(iids, (iid, name, value) of each attribute) of the users written after `seq`."""
        with self._lock:
            iids = [r[0] for r in self._db.execute("SELECT iid FROM users WHERE seq > ?", (seq,))]
            values = self._attribute_values("u.seq > ?", (seq,)) if iids else []
        return np.array(iids, np.int64), values

    def _attribute_values(self, where: str, args: tuple) -> list[tuple[int, str, AttrValue]]:
        """(caller holds the lock)"""
        return self._db.execute(
            f"SELECT u.iid, a.key, a.value FROM users u, json_each(u.attributes) a WHERE {where}",
            args,
        ).fetchall()

    def vocabulary(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [
                (str(a), str(v), int(s))
                for a, v, s in self._db.execute("SELECT attribute, value, slot FROM vocab")
            ]

    def backup(self, dest: Path) -> None:
        """A consistent copy of the database (SQLite online backup)."""
        target = sqlite3.connect(str(dest))
        try:
            with self._lock, disk_full_as("snapshot not written"):
                self._db.backup(target)
        finally:
            target.close()

    def quick_check(self) -> str | None:
        """SQLite's quick_check of the file's structure: None when it is sound, else what it
        found (first lines)."""
        with self._lock:
            rows = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(5)")]
        return None if rows == ["ok"] else "; ".join(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
