"""ONNX Runtime text embedder: export a sentence-transformers model once, then run it
without torch (under half the RSS, a tenth of the load time, and for "onnx-int8" about 4x
the texts/s of sentence-transformers on an idle 2-core CPU; bench/_onnx_quality.py).

    export_onnx(model, out_dir, quantize=...)   needs torch; `audience export-model` runs it
    OnnxEmbedder(model, variant, cache_dir)      needs only onnxruntime, tokenizers, numpy

An export is a directory `<cache_dir>/<model_id>-<variant>/` (variant "onnx" or "onnx-int8"):

    model.onnx      inputs input_ids, attention_mask[, token_type_ids] (int64, batch x seq);
                    output sentence_embedding (float32, batch x dim): the transformer, the
                    model's pooling (mean or cls) and L2 normalisation, in one graph
    tokenizer.json  the model's fast (Rust) tokenizer
    manifest.json   sha256 of model.onnx, source model, variant, max_seq_length, ...,
                    written last: a directory without it is an unfinished export

Exports are made from the local model directory, never downloaded. "onnx-int8" quantizes the
weights of the MatMuls to int8 after export (ONNX Runtime dynamic quantization: activations
are quantized per batch at run time, so no calibration data is needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._config import DEFAULT_MODEL
from ._durable import fsync_dir, sha256_file, write_durably
from ._errors import PreconditionFailed

log = logging.getLogger("audience.index")

VARIANTS = ("onnx", "onnx-int8")
MANIFEST_FORMAT = 1
OPSET = 17
# Dynamic int8 quantization, chosen with bench/_onnx_quality.py: the weights of every MatMul,
# signed int8, one scale per output channel (per-tensor scales: cosine to torch 0.968 mean
# instead of 0.994; unsigned weights: a third slower; reduce_range: no better). The token
# embedding table (Gather) stays float32: int8 would save 35 MB but was no faster and agreed
# no better.
QUANT_OP_TYPES = ("MatMul",)
QUANT_PER_CHANNEL = True
QUANT_REDUCE_RANGE = False
QUANT_WEIGHT_TYPE = "QInt8"
# Padded tokens per batch at most (64 titles of 32 tokens, 8 texts of 256): bounds the
# working memory of a batch of long texts (peak RSS 820 -> 334 MB on 256-token texts).
MAX_BATCH_TOKENS = 2048
# Texts whose sanity check runs after an export (ONNX Runtime against torch).
_CHECK_TEXTS = (
    "How do I fill a DataSet or a DataTable from a LINQ query resultset?",
    "Cooking at home: I bake sourdough bread every weekend",
    "中国人民公安大学2012年硕士研究生目录及书目",
    "",
    "word " * 300,  # longer than max_seq_length: truncated
)


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
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"its manifest.json is unreadable ({exc})"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"its manifest format {manifest.get('format')!r} is not {MANIFEST_FORMAT}"
    if manifest.get("source_model") != base_model_id(model) or manifest.get("variant") != variant:
        return (
            f"it holds {manifest.get('source_model')!r} as {manifest.get('variant')!r}, "
            f"not {base_model_id(model)!r} as {variant!r}"
        )
    for name in ("model.onnx", "tokenizer.json"):
        if not (directory / name).exists():
            return f"{name} is missing"
    if sha256_file(directory / "model.onnx") != manifest.get("sha256"):
        return "model.onnx does not match the sha256 in its manifest (corrupted or modified)"
    return None


def ensure_export(
    model: str, variant: str, directory: Path, *, force: bool = False, in_child: bool = True
) -> tuple[str | None, dict[str, Any]]:
    """Check the export of `model` as `variant` in `directory` and export it (again) when it
    is missing, damaged or `force`d: (why it was exported, None if it was intact; its
    manifest). `in_child` keeps torch out of this process."""
    problem = "forced" if force else check_export(directory, model, variant)
    if problem:
        if problem == "missing":
            log.info("Model - No %s export of %s in %s; exporting it", variant, model, directory)
        elif problem != "forced":
            log.error(
                "Model - The export in %s is unusable: %s; exporting again", directory, problem
            )
        (_export_in_child if in_child else export_onnx)(
            model, directory, quantize=variant == "onnx-int8"
        )
        if again := check_export(directory, model, variant):
            raise PreconditionFailed(f"the {variant} export in {directory} is unusable: {again}")
    return problem, _read_json(directory / "manifest.json")


# ---------------------------------------------------------------- export (torch)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _pipeline(path: Path) -> tuple[Path, str]:
    """(transformer dir, pooling "mean" | "cls") of a sentence-transformers directory.

    A Normalize module needs nothing: the exported graph always L2-normalises, since every
    `TextEmbedder` returns unit-norm rows (the torch backend normalises too)."""
    if not (path / "modules.json").exists():  # plain transformers: mean-pooled, as ST does
        return path, "mean"
    modules = json.loads((path / "modules.json").read_text())
    transformer, pooling = None, None
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        where = path / module.get("path", "")
        if kind == "Transformer" and transformer is None:
            transformer = where
        elif kind == "Pooling" and pooling is None:
            cfg = _read_json(where / "config.json")
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if modes == ["pooling_mode_mean_tokens"]:
                pooling = "mean"
            elif modes == ["pooling_mode_cls_token"]:
                pooling = "cls"
            else:
                raise PreconditionFailed(
                    f"the ONNX backend supports mean or cls pooling, not {modes or 'none'} "
                    f"(in {where}); use encoder_backend 'torch' for this model"
                )
        elif kind == "Normalize":
            pass
        else:
            raise PreconditionFailed(
                f"the ONNX backend cannot export the {kind or '?'} module of {path}; "
                "use encoder_backend 'torch' for this model"
            )
    if transformer is None or pooling is None:
        raise PreconditionFailed(f"{path} has no Transformer + Pooling modules to export")
    return transformer, pooling


def export_onnx(model: str, out_dir: Path, *, quantize: bool) -> Path:
    """Export the sentence-transformers model `model` (DEFAULT_MODEL or a local directory)
    into `out_dir` as ONNX, int8-quantized if `quantize`; return `out_dir`.

    The directory is built beside `out_dir` and renamed into place, under a lock, so a crash
    or a concurrent export never leaves half of one; an existing export is replaced.
    """
    from ._embed import resolve_model_path

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    variant = "onnx-int8" if quantize else "onnx"
    source = Path(resolve_model_path(model))
    with _lock(out_dir):
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            log.info("Export - Start %s as %s", base_model_id(model), variant)
            started = time.monotonic()
            manifest = _export_into(model, source, tmp, quantize=quantize)
            manifest["seconds"] = round(time.monotonic() - started, 1)
            write_durably(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
            _swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Export - Completed %s (sha256 %s)", out_dir, manifest["sha256"][:12])
    return out_dir


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _export_into(model: str, source: Path, tmp: Path, *, quantize: bool) -> dict[str, Any]:
    import inspect

    import torch
    from transformers import AutoModel, AutoTokenizer

    with contextlib.suppress(ImportError, AttributeError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on an operator's terminal
    transformer_dir, pooling = _pipeline(source)
    st_config = _read_json(transformer_dir / "sentence_bert_config.json")
    hf = AutoModel.from_pretrained(
        str(transformer_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(
        str(transformer_dir), local_files_only=True, use_fast=True
    )
    max_len = st_config.get("max_seq_length") or min(
        int(getattr(hf.config, "max_position_embeddings", 512)),
        int(getattr(tokenizer, "model_max_length", 512)),
    )
    inputs = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(hf.forward).parameters:
        inputs.append("token_type_ids")

    class Encoder(torch.nn.Module):
        """Transformer -> pooling -> L2 normalisation (always: TextEmbedder rows are unit-norm)."""

        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            feeds = dict(zip(inputs, args))
            h = self.hf(**feeds).last_hidden_state
            if pooling == "cls":
                pooled = h[:, 0]
            else:
                mask = feeds["attention_mask"].unsqueeze(-1).to(h.dtype)
                pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    encoder = Encoder().eval()
    enc = tokenizer(["a b c", "a longer example sentence"], padding=True, return_tensors="pt")
    example = tuple(enc[name] for name in inputs)
    fp32_path = tmp / ("model.fp32.onnx" if quantize else "model.onnx")
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["sentence_embedding"] = {0: "batch"}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            encoder,
            example,
            str(fp32_path),
            input_names=inputs,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model_path = tmp / "model.onnx"
    quant: dict[str, Any] | None = None
    if quantize:
        quant = quantize_int8(fp32_path, model_path)
        fp32_path.unlink()

    tok_json = transformer_dir / "tokenizer.json"
    if tok_json.exists():
        shutil.copyfile(tok_json, tmp / "tokenizer.json")
    else:  # only a slow tokenizer's files: transformers converts it to a fast one
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    for name in ("model.onnx", "tokenizer.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())

    # Sanity check: ONNX Runtime on the new file against torch on the same texts.
    check_texts = list(_CHECK_TEXTS)
    with torch.no_grad():
        enc = tokenizer(
            check_texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        want = encoder(*(enc[name] for name in inputs)).numpy()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "source_model": base_model_id(model),
        "source_path": str(source),
        "variant": "onnx-int8" if quantize else "onnx",
        "sha256": sha256_file(model_path),
        "bytes": model_path.stat().st_size,
        "dim": int(want.shape[1]),
        "inputs": inputs,
        "pooling": pooling,
        "max_seq_length": int(max_len),
        "do_lower_case": bool(st_config.get("do_lower_case", False)),
        "pad_id": int(tokenizer.pad_token_id or 0),
        "opset": OPSET,
        "quantization": quant,
        "exported_with": {
            "torch": torch.__version__,
            "onnxruntime": _ort_version(),
        },
    }
    got = OnnxEmbedder.from_directory(tmp, manifest).embed(check_texts)
    cosine = float(np.min(np.sum(got * want, axis=1)))
    floor = 0.95 if quantize else 0.9999
    if not cosine >= floor:
        raise PreconditionFailed(
            f"the ONNX export of {base_model_id(model)} disagrees with torch "
            f"(min cosine {cosine:.4f} < {floor}); use encoder_backend 'torch'"
        )
    manifest["check_min_cosine"] = round(cosine, 6)
    return manifest


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    op_types: Sequence[str] = QUANT_OP_TYPES,
    per_channel: bool = QUANT_PER_CHANNEL,
    reduce_range: bool = QUANT_REDUCE_RANGE,
    weight_type: str = QUANT_WEIGHT_TYPE,
    nodes_to_exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Dynamic int8 quantization of `src` into `dst`; returns the settings used."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=getattr(QuantType, weight_type),
            nodes_to_exclude=list(nodes_to_exclude),
            # for outputs of fused (contrib) ops, whose type shape inference cannot tell
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return {
        "method": "dynamic",
        "op_types": list(op_types),
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "weight_type": weight_type,
        "nodes_excluded": len(nodes_to_exclude),
    }


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _export_in_child(model: str, out_dir: Path, *, quantize: bool) -> None:
    """Run export_onnx in a child process, so that torch never loads into this one."""
    cmd = [sys.executable, "-m", "audience.index._onnx", model, str(out_dir)]
    if quantize:
        cmd.append("--quantize")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise PreconditionFailed(f"exporting {model} to ONNX failed: {tail[0]}")


# ---------------------------------------------------------------- runtime (no torch)


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
        if variant not in VARIANTS:
            raise PreconditionFailed(f"ONNX variant must be one of {', '.join(VARIANTS)}")
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


def _main(argv: list[str]) -> int:
    """python -m audience.index._onnx MODEL OUT_DIR [--quantize] (used by OnnxEmbedder)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m audience.index._onnx")
    p.add_argument("model")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--quantize", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_onnx(args.model, args.out_dir, quantize=args.quantize)
    except Exception as exc:  # reported to the parent as the last stderr line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
