"""The start check's worker: every stored vector against its checksum, run as a script
(`python -I _vectorcheck.py STORE`) in a process of its own at the lowest CPU priority.

In the server's own process the check (14 s of one core at a million users) held the GIL
against the queries: over those seconds FindLookalikes' p50 went from 2.0 to 3-4 ms and its
p99 from 3 to 12-22 ms. Here it shares nothing with the server but the file (SQLite, read
only) and takes only CPU time the server leaves. The standard library only, so that it
starts in milliseconds and stays small; it stops when the server that started it is gone.

Prints one JSON line: {"rows": N, "damaged": [iid, ...]}; a failure exits non-zero with the
reason on stderr.
"""

from __future__ import annotations

import array
import json
import math
import os
import sqlite3
import sys
import zlib
from pathlib import Path

BATCH = 2000


def _crc(vec: bytes, text_vec: bytes | None) -> int:
    """As `_store.vec_crc` computes it."""
    return zlib.crc32(text_vec or b"", zlib.crc32(vec))


def _plausible(vec: bytes) -> bool:
    """A row written before checksums: finite and of unit norm (float32, little-endian)."""
    if len(vec) % 4:
        return False
    values = array.array("f", vec)
    if sys.byteorder == "big":
        values.byteswap()
    if not all(math.isfinite(v) for v in values):
        return False
    return abs(math.sqrt(math.fsum(v * v for v in values)) - 1.0) <= 1e-3


def check(path: Path, parent: int) -> dict:
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    rows, damaged, last = 0, [], -1
    try:
        while os.getppid() == parent:
            batch = db.execute(
                "SELECT iid, vec, text_vec, vec_crc FROM users WHERE iid > ? ORDER BY iid LIMIT ?",
                (last, BATCH),
            ).fetchall()
            if not batch:
                return {"rows": rows, "damaged": damaged}
            for iid, vec, text_vec, crc in batch:
                if not (_plausible(vec) if crc is None else crc == _crc(vec, text_vec)):
                    damaged.append(iid)
            rows += len(batch)
            last = batch[-1][0]
        raise SystemExit("the server that started the check is gone")
    finally:
        db.close()


def main() -> None:
    path, parent = Path(sys.argv[1]), int(sys.argv[2])
    try:
        os.nice(19)
    except OSError:
        pass
    try:
        result = check(path, parent)
    except sqlite3.Error as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
