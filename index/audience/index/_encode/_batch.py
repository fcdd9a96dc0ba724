"""Embedding texts away from the server: what a batch worker (a Ray actor) needs to compute
the pooled text vector of a user exactly as the server would, and nothing else.

    EncoderExport          the server's settings that shape a text vector, the files of its
                           encoder export (models/ in the data dir) and its text fingerprint
    export_of(encoder)     that export, from a serving encoder
    BatchTextEncoder       a worker's encoder: writes the export to a private folder, loads
                           it (never from a hub), and checks the fingerprint it computes

The server accepts these vectors (`Profile.text_vector`) only with the same text
fingerprint, so a worker with another model or other settings cannot slip vectors in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._config import EngineConfig
from .._errors import PreconditionFailed
from .._types import TextItem
from ._channels import Vocabulary
from ._embed import TextEmbedder
from ._encoder import ProfileEncoder, f32

MODELS_DIR = "models"
SETTINGS = ("model", "encoder_backend", "max_embed_chars", "recency_half_life_days",
            "encode_batch_size")  # fmt: skip


@dataclass(frozen=True)
class EncoderExport:
    settings: dict  # the EngineConfig fields in SETTINGS
    text_fingerprint: str
    files: dict[str, bytes]  # path under models/ -> content (none for the torch backend)


def export_of(encoder: ProfileEncoder) -> EncoderExport:
    """The export a worker needs to embed as `encoder` does: the files of its ONNX export
    (the torch backend has none: workers load the same model name from their own disk)."""
    config = encoder.config
    settings = {name: getattr(config, name) for name in SETTINGS}
    files: dict[str, bytes] = {}
    directory = getattr(encoder.embedder, "directory", None)  # models/<model>-<variant>/
    if directory is not None:
        root = Path(directory).parent
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    return EncoderExport(settings, encoder.text_fingerprint, files)


class BatchTextEncoder:
    """Pooled text vectors in a worker. `workdir`: a private, writable folder."""

    def __init__(self, export: EncoderExport, workdir: Path, *, threads: int = 1) -> None:
        workdir = Path(workdir)
        for name, content in export.files.items():
            path = workdir / MODELS_DIR / name
            if ".." in Path(name).parts:
                raise PreconditionFailed(f"encoder export: bad file name {name!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        config = EngineConfig(data_dir=workdir, lexical_dim=0, **export.settings)
        embedder: TextEmbedder
        if config.encoder_backend == "torch":
            from ._embed import SentenceTransformerEmbedder

            embedder = SentenceTransformerEmbedder(
                config.model, device="cpu", batch_size=config.encode_batch_size
            )
        else:
            from ._onnx import OnnxEmbedder

            embedder = OnnxEmbedder(
                config.model,
                config.encoder_backend,
                workdir / MODELS_DIR,
                batch_size=config.encode_batch_size,
                threads=threads,
            )
        self._encoder = ProfileEncoder(config, embedder, Vocabulary((), ()))
        if self._encoder.text_fingerprint != export.text_fingerprint:
            raise PreconditionFailed(
                "this worker's encoder does not compute the server's text vectors (text "
                f"fingerprint {self._encoder.text_fingerprint}, the server's "
                f"{export.text_fingerprint}): is the same model installed here?"
            )
        self.text_fingerprint = export.text_fingerprint

    def text_vectors(self, users_texts: Sequence[Sequence[TextItem]]) -> list[bytes]:
        """Each user's pooled text vector as float32 bytes (b"" for a user without texts)."""
        pooled = self._encoder.channels.text_vectors(users_texts)
        return [b"" if v is None else f32(v) for v in pooled]
