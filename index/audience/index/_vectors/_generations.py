"""Index generations on disk: `index/gen-NNNNNNNN.faiss` plus `gen-NNNNNNNN.json` (manifest:
store sequence, vector fingerprint, count, sha256 of the index file). Both are written to a
temp file, fsynced and renamed, then the directory is fsynced; a file whose checksum does not
match is skipped at load time. FAISS's own format is read, never pickle.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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

    def save(self, index: VectorIndex, *, sequence: int, fingerprint: str) -> Manifest:
        generation = self.latest_generation() + 1
        path = self._file(generation)
        tmp = path.with_name(path.name + ".tmp")
        index.write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        manifest = Manifest(
            generation=generation,
            sequence=sequence,
            fingerprint=fingerprint,
            kind=index.kind,
            dim=index.dim,
            count=len(index),
            sha256=digest,
            created=time.time(),
        )
        write_durably(path.with_suffix(".json"), seal_json(asdict(manifest)))
        for old in self.manifests()[self.KEEP :]:
            self._file(old.generation).unlink(missing_ok=True)
            self._file(old.generation).with_suffix(".json").unlink(missing_ok=True)
        return manifest

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
            problem = None
            if not path.exists() or sha256_file(path) != m.sha256:
                problem = "missing or does not match its checksum"
            else:
                try:
                    return read_index(m.kind, path, dim, options or IndexOptions()), m
                except (RuntimeError, ValueError) as exc:
                    problem = f"failed to load ({exc})"
            note = f"index generation {m.generation} {problem}; fell back"
            log.error("Index - %s", note)
            if warnings is not None:
                warnings.append(note)
        return None
