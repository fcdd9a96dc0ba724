"""The profile store: SQLite in the data dir, WAL mode, synchronous=FULL.

Every write runs in one transaction and is on disk when the method returns, so an
acknowledged write survives `kill -9`. Each write transaction takes the next sequence
number; an index generation records the sequence it has seen, and on start the engine
re-adds users written since and drops ids the store no longer has (erased users).

Tables
    users(iid, user_id, seq, texts, attributes, text_vec, vec)
        iid: the int64 id in the vector index (AUTOINCREMENT: never reused)
        texts: JSON [[text, weight, timestamp], ...]; attributes: JSON {name: value}
        text_vec: pooled text embedding (float32) or NULL; vec: the user vector (float32)
    vocab(attribute, value, slot)   learned categorical values (append-only)
    meta(key, value)        sequence counter, fingerprints
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
"""


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

    @property
    def attributes(self) -> dict:
        return json.loads(self.attributes_json)

    @property
    def texts(self) -> list:
        return json.loads(self.texts_json)


class ProfileStore:
    """Thread-safe: one connection, one lock. Reads are short; writes are batched."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM users), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key='seq'), 0))"
        ).fetchone()
        self._seq = int(row[0])

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
        with self._lock:
            seq = self._seq + 1
            iids: list[int] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO vocab(attribute, value, slot) VALUES (?, ?, ?)", list(new_vocab)
                )
                for r in rows:
                    cur = self._db.execute(
                        "INSERT INTO users(user_id, seq, texts, attributes, text_vec, vec, own_vec)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT(user_id) DO UPDATE SET seq=excluded.seq,"
                        " texts=excluded.texts, attributes=excluded.attributes,"
                        " text_vec=excluded.text_vec, vec=excluded.vec, own_vec=excluded.own_vec"
                        " RETURNING iid",
                        (
                            r.user_id,
                            seq,
                            r.texts_json,
                            r.attributes_json,
                            r.text_vec,
                            r.vec,
                            int(r.own_vec),
                        ),
                    )
                    iids.append(int(cur.fetchone()[0]))
                self._set_seq(seq)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._seq = seq
            return seq, iids

    def delete(self, user_ids: Sequence[str]) -> tuple[int, list[tuple[str, int]]]:
        """Erase users. Returns the new sequence and the (user_id, iid) pairs that existed."""
        with self._lock:
            seq = self._seq + 1
            found: list[tuple[str, int]] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for uid in dict.fromkeys(user_ids):
                    row = self._db.execute(
                        "DELETE FROM users WHERE user_id=? RETURNING iid", (uid,)
                    ).fetchone()
                    if row is not None:
                        found.append((uid, int(row[0])))
                self._set_seq(seq)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._seq = seq
            return seq, found

    def rewrite_vectors(
        self,
        items: Sequence[tuple[int, bytes | None, bytes]],
        new_vocab: Iterable[tuple[str, str, int]] = (),
    ) -> None:
        """Replace (iid, text_vec, vec) after a re-encode, with the vocabulary it learned, in
        one transaction; the sequence does not move."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO vocab(attribute, value, slot) VALUES (?, ?, ?)", list(new_vocab)
                )
                self._db.executemany(
                    "UPDATE users SET text_vec=?, vec=? WHERE iid=?",
                    [(tv, v, iid) for iid, tv, v in items],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _set_seq(self, seq: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES ('seq', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(seq),),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
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
                "SELECT iid, user_id, seq, texts, attributes, text_vec, vec, own_vec FROM users"
                " WHERE user_id=?",
                (user_id,),
            ).fetchone()
        return None if row is None else StoredRow(*row)

    def texts_and_attributes(self, iids: Sequence[int]) -> dict[int, tuple[list, dict]]:
        """iid -> (texts, attributes) for the stored iids among these."""
        return {
            int(iid): (json.loads(texts), json.loads(attrs))
            for iid, texts, attrs in self._rows_of("texts, attributes", iids)
        }

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

    def iter_rows(self, since_seq: int = 0, batch: int = 5000) -> Iterator[list[StoredRow]]:
        """All users changed after `since_seq`, in iid order, in batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT iid, user_id, seq, texts, attributes, text_vec, vec, own_vec FROM users"
                    " WHERE seq > ? AND iid > ? ORDER BY iid LIMIT ?",
                    (since_seq, last, batch),
                ).fetchall()
            if not rows:
                return
            yield [StoredRow(*r) for r in rows]
            last = rows[-1][0]

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

    def iter_meta(self, batch: int = 20000) -> Iterator[list[tuple[int, str, dict]]]:
        """(iid, user_id, attributes) of every user, in iid order, in batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT iid, user_id, attributes FROM users WHERE iid > ? ORDER BY iid LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            yield [(int(i), str(u), json.loads(a)) for i, u, a in rows]
            last = rows[-1][0]

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
            with self._lock:
                self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()
