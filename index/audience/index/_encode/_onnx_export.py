"""Exporting a sentence-transformers model to ONNX (needs torch; `audience export-model` and
`OnnxEmbedder`'s child process run it, never the server itself).

    export_onnx(model, out_dir, quantize=...)   torch -> model.onnx (+ int8), tokenizer,
                                                manifest; checked against torch before use
    python -m audience.index._encode._onnx_export MODEL OUT_DIR [--quantize]

"onnx-int8" quantizes the weights of the MatMuls to int8 after export (ONNX Runtime dynamic
quantization: activations are quantized per batch at run time, so no calibration data is
needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._durable import fsync_dir, seal_json, sha256_file, write_durably
from .._errors import PreconditionFailed
from ._embed import resolve_model_path
from ._onnx import MANIFEST_FORMAT, OnnxEmbedder, base_model_id

log = logging.getLogger("audience.index")

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

# Texts whose sanity check runs after an export (ONNX Runtime against torch).
_CHECK_TEXTS = (
    "How do I fill a DataSet or a DataTable from a LINQ query resultset?",
    "Cooking at home: I bake sourdough bread every weekend",
    "中国人民公安大学2012年硕士研究生目录及书目",
    "",
    "word " * 300,  # longer than max_seq_length: truncated
)


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
            write_durably(tmp / "manifest.json", seal_json(manifest, indent=2))
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
        "files": {name: sha256_file(tmp / name) for name in ("model.onnx", "tokenizer.json")},
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


class QuantizerNoise(logging.Filter):
    """Drops the INFO and WARNING lines that ONNX Runtime's quantizer logs on the root logger
    (one per tensor). For a program's own log handlers: `handler.addFilter(QuantizerNoise())`;
    the library itself never changes logging settings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "root"
            and record.levelno < logging.ERROR
            and f"onnxruntime{os.sep}quantization" in record.pathname
        )


def _main(argv: list[str]) -> int:
    """python -m audience.index._encode._onnx_export MODEL OUT_DIR [--quantize]."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m audience.index._encode._onnx_export")
    p.add_argument("model")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--quantize", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuantizerNoise())
    try:
        export_onnx(args.model, args.out_dir, quantize=args.quantize)
    except Exception as exc:  # reported to the parent as the last stderr line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
