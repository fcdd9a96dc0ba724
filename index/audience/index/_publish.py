"""Published generations: what a primary writes for its read replicas, and how a replica
takes one. Files only (a directory on shared storage, or a synced object-store prefix).

    SOURCE/gen-00000042/   a backup (_backup.py): the store, the index generation, the
                           lexical and segment models, the encoder export, every file with
                           its sha256 in the sealed BACKUP.json, plus the engine settings
    SOURCE/CURRENT         sealed JSON naming the newest complete generation, replaced
                           atomically once that generation is whole

A replica copies a generation to its own disk, checks every checksum on the copy, and only
then opens it: a damaged or half-written generation is refused and the one it serves stays.
The primary keeps the newest `keep` generations (a replica may still be copying the one
before); older ones are deleted at each publish.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ._backup import verify_backup, write_backup
from ._catalog import Catalog
from ._durable import read_sealed_json, seal_json, write_durably
from ._types import Progress

log = logging.getLogger("audience.index")

CURRENT = "CURRENT"
GENERATION = re.compile(r"^gen-(\d{8})$")


@dataclass(frozen=True)
class Published:
    generation: int
    path: Path
    published_at: float  # Unix seconds
    users: int
    bytes: int
    seconds: float


def generation_dir(number: int) -> str:
    return f"gen-{number:08d}"


def read_current(source: Path) -> dict | None:
    """The newest published generation ({"generation", "dir", "published_at", "users"}), or
    None when nothing is published yet. ValueError when CURRENT is damaged."""
    path = Path(source) / CURRENT
    if not path.exists():
        return None
    return read_sealed_json(path)[0]


def publish_generation(
    catalog: Catalog,
    fingerprint: str,
    source: Path,
    keep: int = 2,
    progress: Progress | None = None,
) -> Published:
    """(with no write running and the current index generation saved) Write the next
    generation into `source`, point CURRENT at it, delete the ones older than the `keep`
    newest."""
    t0 = time.perf_counter()
    source = Path(source)
    source.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in source.iterdir() if (m := GENERATION.match(p.name))]
    current = read_current(source)
    number = max([0, *numbers, current["generation"] if current else 0]) + 1
    published_at = time.time()
    settings = catalog.config.settings()
    extra = {"settings": settings, "published_at": published_at, "published_generation": number}
    done = write_backup(catalog, fingerprint, source / generation_dir(number), progress, extra)
    pointer = {
        "generation": number,
        "dir": generation_dir(number),
        "published_at": published_at,
        "users": len(catalog.iid_of),
    }
    write_durably(source / CURRENT, seal_json(pointer))
    for old in sorted(n for n in numbers if n <= number - max(1, keep)):
        shutil.rmtree(source / generation_dir(old), ignore_errors=True)
    seconds = time.perf_counter() - t0
    log.info("Publish - generation %d: %d users, %.1f MB in %.1fs", number,
             pointer["users"], done.bytes / 1e6, seconds)  # fmt: skip
    return Published(number, done.path, published_at, pointer["users"], done.bytes, seconds)


def fetch_generation(source: Path, pointer: dict, into: Path) -> tuple[Path, dict]:
    """Copy the generation `pointer` names from `source` into the folder `into` and check
    every file of the copy: (the local copy, its manifest). ValueError (nothing left behind)
    when the generation is damaged, incomplete, or deleted while it was copied."""
    name = pointer["dir"]
    if not GENERATION.match(name):
        raise ValueError(f"{source}/{CURRENT} names {name!r}, not a generation")
    into = Path(into)
    local = into / name
    shutil.rmtree(local, ignore_errors=True)  # a copy an engine has opened is no longer pristine
    partial = into / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        try:
            shutil.copytree(Path(source) / name, partial)
        except (OSError, shutil.Error) as exc:
            raise ValueError(f"{source}/{name} could not be copied ({exc})") from exc
        manifest = verify_backup(partial)
        if manifest.get("published_generation") != pointer["generation"]:
            raise ValueError(f"{source}/{name}: its manifest is not generation "
                             f"{pointer['generation']}")  # fmt: skip
        os.replace(partial, local)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return local, manifest
