"""Index generations on disk: `index/gen-NNNNNNNN.faiss` plus `gen-NNNNNNNN.json` (manifest:
store sequence, vector fingerprint, count, sha256 of the index file), and sidecars saved with
the index as of the same store sequence (`gen-NNNNNNNN.NAME.npz`, their sha256 in the
manifest: the catalog's attribute columns, so that a start need not read every user's
attributes). Every file is written to a temp file, fsynced and renamed, then the directory is
fsynced; a file whose checksum does not match is skipped at load time. FAISS's own format and
plain numpy arrays are read, never pickle.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from .._config import INDEX_KINDS
from .._durable import read_sealed_json, seal_json, sha256_file, write_durably
from ._base import IndexOptions, VectorIndex
from ._build import read_index

log = logging.getLogger("audience.index")


@dataclass(frozen=True)
class Manifest:
    generation: int
    sequence: int  # store sequence folded into this generation
    fingerprint: str  # vector fingerprint of the stored vectors it holds
    kind: str
    dim: int
    count: int
    sha256: str
    created: float
    sidecars: dict[str, str] = field(default_factory=dict)  # name -> sha256 of its file


class Generations:
    """The index generations in one directory."""

    KEEP = 2  # the newest generations kept; older ones are deleted after a save

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):  # left by a crash mid-save
            stale.unlink()

    def manifests(self, warnings: list[str] | None = None) -> list[Manifest]:
        """Readable manifests, newest first; unreadable ones are skipped, said so in the log
        and in `warnings`."""
        found = []
        for p in self.dir.glob("gen-*.json"):
            try:
                found.append(Manifest(**read_sealed_json(p, legacy_ok=True)[0]))
            except (OSError, ValueError, TypeError) as exc:
                note = f"index manifest {p.name} unreadable ({exc}); skipped"
                log.warning("Index - %s", note)
                if warnings is not None:
                    warnings.append(note)
        return sorted(found, key=lambda m: m.generation, reverse=True)

    def latest_generation(self) -> int:
        ms = self.manifests()
        return ms[0].generation if ms else 0

    def _file(self, generation: int) -> Path:
        return self.dir / f"gen-{generation:08d}.faiss"

    def sidecar_file(self, generation: int, name: str) -> Path:
        return self.dir / f"gen-{generation:08d}.{name}.npz"

    def files(self, generation: int) -> list[Path]:
        """Every file of one generation that exists: the index, its manifest, the sidecars."""
        return sorted(p for p in self.dir.glob(f"gen-{generation:08d}.*") if p.is_file())

    def save(
        self,
        index: VectorIndex,
        *,
        sequence: int,
        fingerprint: str,
        sidecars: Mapping[str, Callable[[BinaryIO], None]] | None = None,
    ) -> Manifest:
        """Write the index (and each sidecar by its writer) as the next generation; the
        manifest last, so a generation without one was never complete."""
        generation = self.latest_generation() + 1
        path = self._file(generation)
        tmp = path.with_name(path.name + ".tmp")
        index.write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        sums = {}
        for name, write in (sidecars or {}).items():
            side = self.sidecar_file(generation, name)
            side_tmp = side.with_name(side.name + ".tmp")
            with open(side_tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            sums[name] = sha256_file(side_tmp)
            os.replace(side_tmp, side)
        manifest = Manifest(
            generation=generation,
            sequence=sequence,
            fingerprint=fingerprint,
            kind=index.kind,
            dim=index.dim,
            count=len(index),
            sha256=digest,
            created=time.time(),
            sidecars=sums,
        )
        write_durably(path.with_suffix(".json"), seal_json(asdict(manifest)))
        for old in self.manifests()[self.KEEP :]:
            for stale in self.files(old.generation):
                if stale.suffix != ".json":  # the manifest last: a half-pruned one is skipped
                    stale.unlink(missing_ok=True)
            self._file(old.generation).with_suffix(".json").unlink(missing_ok=True)
        return manifest

    def newest_sidecar(
        self, name: str, warnings: list[str] | None = None
    ) -> tuple[Path, Manifest] | None:
        """The newest generation's sidecar `name` that matches its checksum, with that
        generation's manifest (its `sequence` says what the sidecar holds); None if none.
        A damaged one is skipped, and said so in the log and in `warnings`."""
        for m in self.manifests():
            digest = m.sidecars.get(name)
            if digest is None:
                continue
            path = self.sidecar_file(m.generation, name)
            if path.exists() and sha256_file(path) == digest:
                return path, m
            note = f"index generation {m.generation}'s {name} file missing or damaged; skipped"
            _skipped(note, warnings)
        return None

    def load_latest(
        self,
        *,
        fingerprint: str,
        dim: int,
        options: IndexOptions | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[VectorIndex, Manifest] | None:
        """The newest generation that verifies and matches; None if there is none.

        Damaged generations are skipped, and said so in the log and in `warnings`.
        """
        for m in self.manifests(warnings):
            path = self._file(m.generation)
            if m.fingerprint != fingerprint or m.dim != dim or m.kind not in INDEX_KINDS:
                log.info(
                    "Index - generation %d was built with other settings; skipped", m.generation
                )
                continue
            if not path.exists():
                problem = "missing or does not match its checksum"
            else:
                index, problem = _read_checked(m, path, dim, options or IndexOptions())
                if index is not None:
                    return index, m
            _skipped(f"index generation {m.generation} {problem}; fell back", warnings)
        return None


def _skipped(note: str, warnings: list[str] | None) -> None:
    """A damaged file passed over: said in the log and in `warnings`."""
    log.error("Index - %s", note)
    if warnings is not None:
        warnings.append(note)


def _read_checked(
    m: Manifest, path: Path, dim: int, options: IndexOptions
) -> tuple[VectorIndex | None, str]:
    """(the index, "") when its file matches the manifest's checksum, else (None, what is
    wrong). The file is read while its checksum is computed in a second thread (both release
    the GIL): at a million users 1.3 s each, which one after the other made half a restart.
    FAISS's reader checks sizes as it goes and raises on what it cannot parse; an index read
    from a file that then fails its checksum is dropped, never served."""
    digest: list[str] = []

    def checksum() -> None:
        try:
            digest.append(sha256_file(path))
        except OSError as exc:
            log.error("Index - %s unreadable: %s", path.name, exc)

    hasher = threading.Thread(target=checksum, name="index-checksum", daemon=True)
    hasher.start()
    try:
        index, problem = read_index(m.kind, path, dim, options), ""
    except (RuntimeError, ValueError) as exc:
        index, problem = None, f"failed to load ({exc})"
    hasher.join()
    if digest != [m.sha256]:
        return None, "missing or does not match its checksum"
    return index, problem
