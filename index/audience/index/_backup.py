"""Backups: a consistent, checksummed copy of everything a server needs, anywhere (another
disk), and its restore into a new data dir.

    BACKUP.json          sealed manifest: every file with its size and sha256, the source
                         data dir, the store sequence, the index generation, the encoder
                         fingerprint
    profiles.sqlite3     the store (SQLite online backup): profiles, vectors, attribute schema,
                         vocabulary, the erasure record
    index/gen-N.*        the index generation saved just before, with its attribute columns
    lexical/             the lexical model
    segments/            every saved segment model and CURRENT
    models/              the encoder export, when the data dir has one (else it is made again
                         from the model package at the first start; the fingerprint is checked)

A restore checks every file before it copies one, refusing a damaged or incomplete backup
with the list of what is wrong. Erasure reaches backups: the erasures recorded in the source
data dir since the backup was taken (`--erasures-from`, default: the source named in the
manifest) are copied into the restored store, and the server applies them when it opens it
(rows overwritten, exemplars withdrawn, vectors dropped from the index).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ._catalog import INDEX_DIR, LEXICAL_DIR, SEGMENTS_DIR, STORE_FILE, Catalog
from ._durable import DataDirLock, read_sealed_json, seal_json, sha256_file, write_durably
from ._erasure import import_erasures
from ._errors import InvalidQuery
from ._types import Progress

log = logging.getLogger("audience.index")

MANIFEST = "BACKUP.json"
FORMAT = 1
MODELS_DIR = "models"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    files: int
    bytes: int
    generation: int
    sequence: int
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    files: int
    bytes: int
    erasures: int  # recorded erasures carried over from the source (applied at the start)
    erasures_from: str  # the data dir they came from; "" when none was found


def write_backup(
    catalog: Catalog,
    fingerprint: str,
    out: Path,
    progress: Progress | None = None,
    extra: dict | None = None,
) -> BackupResult:
    """(with no write running and the current generation saved) Copy what a server needs
    into `out`, a new or empty directory; written beside it first, then renamed. `extra`:
    more entries for the manifest."""
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidQuery("out_dir", f"{out} exists and is not an empty directory")
    data = catalog.config.data_dir
    if out == data.absolute() or data.absolute() in out.parents:
        raise InvalidQuery("out_dir", f"{out} is inside the data dir; back up to another place")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        return _write(catalog, fingerprint, out, partial, progress, extra or {})
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone once renamed; a failure's leftovers


def _write(
    catalog: Catalog,
    fingerprint: str,
    out: Path,
    partial: Path,
    progress: Progress | None,
    extra: dict,
) -> BackupResult:
    t0 = time.perf_counter()
    data = catalog.config.data_dir
    catalog.store.backup(partial / STORE_FILE)
    sources = catalog.generations.files(catalog.generation)
    for folder in (LEXICAL_DIR, SEGMENTS_DIR, MODELS_DIR):
        if (data / folder).is_dir():
            sources += sorted(p for p in (data / folder).rglob("*") if p.is_file())
    names = [STORE_FILE] + [p.relative_to(data).as_posix() for p in sources]
    for i, (src, name) in enumerate(zip(sources, names[1:])):
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, partial / name)
        if progress:
            progress("copy", i + 1, len(sources))
    files = {}
    for i, name in enumerate(names):
        path = partial / name
        files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if progress:
            progress("checksum", i + 1, len(names))
    manifest = {
        "format": FORMAT,
        "made_at": time.time(),
        "source_data_dir": str(data.absolute()),
        "generation": catalog.generation,
        "sequence": catalog.store.sequence,
        "users": len(catalog.iid_of),
        "encoder_fingerprint": fingerprint,
        "files": files,
        **extra,
    }
    write_durably(partial / MANIFEST, seal_json(manifest, indent=1))
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    total = sum(f["bytes"] for f in files.values())
    seconds = time.perf_counter() - t0
    log.info("Backup - %d files, %.1f MB in %.1fs", len(files), total / 1e6, seconds)
    return BackupResult(out, len(files), total, catalog.generation, catalog.store.sequence, seconds)


def verify_backup(backup: Path) -> dict:
    """The manifest of a backup whose every file is there with its size and checksum;
    ValueError listing every problem otherwise."""
    backup = Path(backup)
    if not (backup / MANIFEST).exists():
        raise ValueError(f"{backup} is not a backup: no {MANIFEST}")
    try:
        manifest, _ = read_sealed_json(backup / MANIFEST)
    except ValueError as exc:
        raise ValueError(f"{backup}: the manifest is damaged ({exc}); refusing it") from exc
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{backup}: backup format {manifest.get('format')} is not {FORMAT}")
    problems = []
    for name, want in manifest["files"].items():
        path = backup / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, {want['bytes']} expected")
        elif sha256_file(path) != want["sha256"]:
            problems.append(f"{name}: checksum mismatch (damaged)")
    if problems:
        raise ValueError(
            f"{backup} is damaged or incomplete, refusing it ({len(problems)} problems): "
            + "; ".join(problems)
        )
    return manifest


def restore_backup(backup: Path, data_dir: Path, *, live: Path | None = None) -> RestoreResult:
    """Verify `backup`, copy it into the new data dir `data_dir`, and carry over the erasures
    recorded since in `live` (default: the data dir the backup was taken from)."""
    backup, data_dir = Path(backup), Path(data_dir)
    manifest = verify_backup(backup)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty: restore into a new data dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir)
    try:
        for name in manifest["files"]:
            (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(backup / name, data_dir / name)
        (data_dir / INDEX_DIR).mkdir(exist_ok=True)
        live = Path(live) if live is not None else Path(manifest["source_data_dir"])
        erasures, source = 0, ""
        if (live / STORE_FILE).exists():
            erasures, source = import_erasures(data_dir / STORE_FILE, live / STORE_FILE), str(live)
        else:
            log.warning(
                "Restore - no erasure record at %s: users erased since the backup are not "
                "known (pass --erasures-from DATA_DIR)",
                live,
            )
    finally:
        lock.release()
    total = sum(f["bytes"] for f in manifest["files"].values())
    return RestoreResult(len(manifest["files"]), total, erasures, source)
