"""ONNX Runtime text embedder: run an exported sentence-transformers model without torch
(under half the RSS, a tenth of the load time, and for "onnx-int8" about 4x the texts/s of
sentence-transformers on an idle 2-core CPU; bench/_onnx_quality.py).

    OnnxEmbedder(model, variant, cache_dir)    needs only onnxruntime, tokenizers, numpy
    ensure_export(model, variant, directory)   checks an export; makes a missing or damaged
                                               one with _onnx_export.py (in a child process
                                               unless told otherwise: torch stays out)

An export is a directory `<cache_dir>/<model_id>-<variant>/` (variant "onnx" or "onnx-int8"):

    model.onnx      inputs input_ids, attention_mask[, token_type_ids] (int64, batch x seq);
                    output sentence_embedding (float32, batch x dim): the transformer, the
                    model's pooling (mean or cls) and L2 normalisation, in one graph
    tokenizer.json  the model's fast (Rust) tokenizer
    manifest.json   the sha256 of every file above, source model, variant, max_seq_length,
                    ..., and its own checksum; written last: a directory without it is an
                    unfinished export, and one whose files do not match it is made again

Exports are made from the local model directory, never downloaded.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._config import DEFAULT_MODEL, ONNX_VARIANTS
from .._durable import read_sealed_json, sha256_file
from .._errors import PreconditionFailed

log = logging.getLogger("audience.index")

MANIFEST_FORMAT = 2  # 2: every file checksummed, the manifest sealed
# Padded tokens per batch at most (32 titles of 16 tokens, 2 texts of 256). A request's texts
# are sorted by length and cut into batches; the smaller the batches, the nearer each pads to
# its own texts' lengths: 256 StackOverflow titles pad to 1.10x their tokens at 512 against
# 1.27x at 2048, and batches of ~500 real tokens run as fast per token as larger ones (2,000
# titles at once: 736 vs 735 texts/s; 256 tokens: 688). bench/_onnx_quality.py --variants
# onnx-int8 int8-t2048; through gRPC in batches of 256 users (bench/run.py perf --users 0):
# 522 -> 621 users/s, precision@100 unchanged. It also bounds a batch's working memory.
MAX_BATCH_TOKENS = 512
EXPORT_MODULE = "audience.index._encode._onnx_export"  # run as `python -m` by export_in_child

Exporter = Callable[..., Any]  # (model, out_dir, *, quantize) -> out_dir


def base_model_id(model: str) -> str:
    """The name the torch embedder uses for `model` (its directory name unless the default)."""
    return model if model == DEFAULT_MODEL else Path(model).expanduser().name


def export_dir(cache_dir: Path, model: str, variant: str) -> Path:
    """Where the `variant` export of `model` lives under `cache_dir`."""
    return Path(cache_dir) / f"{base_model_id(model)}-{variant}"


def check_export(directory: Path, model: str, variant: str) -> str | None:
    """None if `directory` holds a complete, intact export of `model` as `variant`;
    else why not ("missing" when there is no finished export at all)."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        return "missing"
    try:
        manifest, sealed = read_sealed_json(manifest_path, legacy_ok=True)
    except (OSError, ValueError) as exc:
        return f"its manifest.json is unreadable ({exc})"
    if manifest.get("format") != MANIFEST_FORMAT or not sealed:
        return f"it was made by an older version (manifest format {manifest.get('format')!r})"
    if manifest.get("source_model") != base_model_id(model) or manifest.get("variant") != variant:
        return (
            f"it holds {manifest.get('source_model')!r} as {manifest.get('variant')!r}, "
            f"not {base_model_id(model)!r} as {variant!r}"
        )
    files = manifest.get("files") or {}
    for name in ("model.onnx", "tokenizer.json"):
        if name not in files:
            return f"its manifest lists no checksum of {name}"
    for name, digest in files.items():
        if not (directory / name).exists():
            return f"{name} is missing"
        if sha256_file(directory / name) != digest:
            return f"{name} does not match the sha256 in its manifest (corrupted or modified)"
    return None


def export_in_child(model: str, out_dir: Path, *, quantize: bool) -> Path:
    """Export in a child process (`python -m` the export module), so that torch never loads
    into this one."""
    cmd = [sys.executable, "-m", EXPORT_MODULE, model, str(out_dir)]
    if quantize:
        cmd.append("--quantize")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise PreconditionFailed(f"exporting {model} to ONNX failed: {tail[0]}")
    return out_dir


def ensure_export(
    model: str,
    variant: str,
    directory: Path,
    *,
    force: bool = False,
    export: Exporter = export_in_child,
) -> tuple[str | None, dict[str, Any]]:
    """Check the export of `model` as `variant` in `directory` and export it (again) with
    `export` when it is missing, damaged or `force`d: (why it was exported, None if it was
    intact; its manifest). The default exports in a child process."""
    problem = "forced" if force else check_export(directory, model, variant)
    if problem:
        if problem == "missing":
            log.info("Model - No %s export of %s in %s; exporting it", variant, model, directory)
        elif problem != "forced":
            log.error(
                "Model - The export in %s is unusable: %s; exporting again", directory, problem
            )
        export(model, directory, quantize=variant == "onnx-int8")
        if again := check_export(directory, model, variant):
            raise PreconditionFailed(f"the {variant} export in {directory} is unusable: {again}")
    return problem, _read_json(directory / "manifest.json")


def _read_json(path: Path) -> dict[str, Any]:
    return read_sealed_json(path)[0] if path.exists() else {}


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEmbedder:
    """`TextEmbedder` on ONNX Runtime: the exported model, the Rust tokenizer, no torch.

    Texts are tokenized together, sorted by length and run in batches of `batch_size`, so a
    batch pads only to its own longest text. A missing export is made from the local model
    directory (in a child process); a corrupted one is made again, with a note in `warnings`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        variant: str = "onnx",
        cache_dir: Path | str = "models",
        *,
        batch_size: int = 64,
        threads: int | None = None,
    ):
        if variant not in ONNX_VARIANTS:
            raise PreconditionFailed(f"ONNX variant must be one of {', '.join(ONNX_VARIANTS)}")
        self.warnings: list[str] = []
        directory = export_dir(Path(cache_dir), model, variant)
        problem, manifest = ensure_export(model, variant, directory)
        if problem and problem != "missing":
            self.warnings.append(
                f"the {variant} model in {directory} was unusable ({problem}); "
                f"it was exported again from {model}"
            )
        self._load(directory, manifest, batch_size=batch_size, threads=threads)

    @classmethod
    def from_directory(
        cls, directory: Path, manifest: dict[str, Any], *, batch_size: int = 64
    ) -> OnnxEmbedder:
        """An embedder over an export directory as it is, without checks (used by export)."""
        self = cls.__new__(cls)
        self.warnings = []
        self._load(directory, manifest, batch_size=batch_size, threads=None)
        return self

    def _load(
        self, directory: Path, manifest: dict[str, Any], *, batch_size: int, threads: int | None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_id = f"{manifest['source_model']}+{manifest['variant']}"
        self.dim = int(manifest["dim"])
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = MAX_BATCH_TOKENS
        self.directory = directory
        self._lower = bool(manifest.get("do_lower_case"))
        self._pad_id = int(manifest.get("pad_id", 0))
        self._inputs = list(manifest["inputs"])
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.no_padding()  # padded per batch below
        self._tokenizer.enable_truncation(int(manifest["max_seq_length"]))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or _cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: the server's other threads (gRPC,
        # SQLite, FAISS) share these cores, and measured throughput was no lower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        log.info("Model - Loaded %s from %s (dim %d)", self.model_id, directory, self.dim)

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
        """Consecutive runs of `order` (ascending length): at most `batch_size` texts and at
        most `max_batch_tokens` padded tokens each (long texts go in smaller batches, which
        bounds the attention's batch x heads x seq x seq working memory)."""
        start, n, budget = 0, len(order), self.max_batch_tokens
        while start < n:
            end = min(start + self.batch_size, n)
            while end - start > 1 and (end - start) * lengths[order[end - 1]] > budget:
                end -= 1
            yield order[start:end]
            start = end

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, feeds)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        batch = [t.lower() for t in texts] if self._lower else list(texts)
        encodings = self._tokenizer.encode_batch(batch)
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        for rows in self._batches(order, lengths):
            width = int(lengths[rows[-1]])
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                e = encodings[i]
                k = int(lengths[i])
                ids[r, :k] = e.ids
                mask[r, :k] = 1
                types[r, :k] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[rows] = self._run({k: feeds[k] for k in self._inputs})
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)
