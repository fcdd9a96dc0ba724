"""The ONNX encoder backends against torch (congruence), their exports (checksums, re-export
of a corrupted file) and `audience export-model`. Real model; each variant is exported once
per session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audience.index import (
    EngineConfig,
    OnnxEmbedder,
    PreconditionFailed,
    SentenceTransformerEmbedder,
    TextEmbedder,
    make_embedder,
)
from audience.index._encode._onnx import check_export, export_dir
from audience.index._encode._onnx_export import export_onnx
from audience.server._cli import main

MODEL = "all-MiniLM-L6-v2"
TEXTS = [
    "How do I fill a DataSet or a DataTable from a LINQ query resultset ?",
    "Programming in Rust: borrow checker errors and lifetimes",
    "Football tactics: the Champions League final and the midfield press",
    "Cooking at home: I bake sourdough bread every weekend",
    "Why does my bash script fail when the file name has spaces?",
    "A",
    "",
    "Ünïcödé, émojis 🎉 and punctuation?!...",
    "apache mod_rewrite " * 200,  # over max_seq_length (256 tokens): truncated
    "中国人民公安大学2012年硕士研究生目录及书目",
    "词汇阅读是关键 08年考研暑期英语复习全指南",
]


def _export(data_dir: Path, backend: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export-model", "--data-dir", str(data_dir), "--backend", backend]) == 0
    return out.getvalue()


@pytest.fixture(scope="session")
def onnx_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding both exports, made through `audience export-model`."""
    data = tmp_path_factory.mktemp("onnx-data")
    for backend in ("onnx", "onnx-int8"):
        assert _export(data, backend).startswith("exported ")
    return data


@pytest.fixture(scope="session")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL)


@pytest.fixture(scope="session")
def want(reference: SentenceTransformerEmbedder) -> np.ndarray:
    return reference.embed(TEXTS)


def _embedder(data: Path, backend: str) -> OnnxEmbedder:
    emb = make_embedder(EngineConfig(data_dir=data, encoder_backend=backend))
    assert isinstance(emb, OnnxEmbedder)
    return emb


@pytest.mark.parametrize(
    "backend, mean_floor, min_floor",
    # int8: measured 0.991 mean / 0.973 min (the empty text) on these texts, 0.994 mean over
    # 20,000 StackOverflow titles (bench/_onnx_quality.py); floors with a margin
    [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.98, 0.95)],
)
def test_agrees_with_torch(
    onnx_data: Path, want: np.ndarray, backend: str, mean_floor: float, min_floor: float
) -> None:
    emb = _embedder(onnx_data, backend)
    assert isinstance(emb, TextEmbedder)
    assert emb.model_id == f"{MODEL}+{backend}" and emb.dim == want.shape[1]
    assert emb.warnings == []
    got = emb.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * want, axis=1)
    assert cos.mean() >= mean_floor and cos.min() >= min_floor, cos
    # the order of texts (and so the batches they land in) does not change a text's vector
    again = emb.embed(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(again, got, atol=2e-3 if backend == "onnx-int8" else 1e-5)


def test_batches_keep_to_the_token_budget(onnx_data: Path, want: np.ndarray) -> None:
    emb = _embedder(onnx_data, "onnx-int8")
    shapes: list[tuple[int, int]] = []
    run = emb._run
    emb._run = lambda feeds: (shapes.append(feeds["input_ids"].shape), run(feeds))[1]
    texts = TEXTS * 20
    got = emb.embed(texts)
    assert sum(b for b, _ in shapes) == len(texts) and len(shapes) > 1
    assert all(b <= emb.batch_size and (b * w <= emb.max_batch_tokens or b == 1) for b, w in shapes)
    assert [w for _, w in shapes] == sorted(w for _, w in shapes)  # by length: little padding
    assert float(np.min(np.sum(got[: len(TEXTS)] * want, axis=1))) >= 0.95


def test_chinese_and_empty(onnx_data: Path, want: np.ndarray) -> None:
    emb = _embedder(onnx_data, "onnx")
    zh = emb.embed([TEXTS[-1]])
    assert zh.shape == (1, emb.dim) and np.isfinite(zh).all()
    assert float(zh[0] @ want[-1]) >= 0.9999
    empty = emb.embed([])
    assert empty.shape == (0, emb.dim) and empty.dtype == np.float32


def test_corrupted_model_is_exported_again(
    onnx_data: Path, tmp_path: Path, want: np.ndarray
) -> None:
    models = tmp_path / "data" / "models"
    target = export_dir(models, MODEL, "onnx")
    shutil.copytree(export_dir(onnx_data / "models", MODEL, "onnx"), target)
    with open(target / "model.onnx", "r+b") as f:  # flip bytes in the middle of the weights
        f.seek(target.joinpath("model.onnx").stat().st_size // 2)
        f.write(b"\x00\x01\x02\x03")
    assert "sha256" in (check_export(target, MODEL, "onnx") or "")

    emb = _embedder(tmp_path / "data", "onnx")
    assert len(emb.warnings) == 1 and "exported again" in emb.warnings[0]
    assert check_export(target, MODEL, "onnx") is None
    assert float(np.min(np.sum(emb.embed(TEXTS) * want, axis=1))) >= 0.9999
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [
        target.name
    ]  # no temp or old directories left behind


def test_tampered_tokenizer_and_manifest_are_caught(
    onnx_data: Path, tmp_path: Path, want: np.ndarray
) -> None:
    """Every file of an export is checksummed: a tokenizer with two vocabulary ids swapped
    (which would embed texts quietly wrong) is caught and exported again, with a warning; so
    is a truncated one, and an edited manifest."""
    models = tmp_path / "data" / "models"
    target = export_dir(models, MODEL, "onnx")
    shutil.copytree(export_dir(onnx_data / "models", MODEL, "onnx"), target)
    tok = json.loads((target / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["bread"], vocab["oven"] = vocab["oven"], vocab["bread"]
    (target / "tokenizer.json").write_text(json.dumps(tok))
    assert "tokenizer.json does not match" in (check_export(target, MODEL, "onnx") or "")

    emb = _embedder(tmp_path / "data", "onnx")
    assert len(emb.warnings) == 1 and "tokenizer.json" in emb.warnings[0]
    assert check_export(target, MODEL, "onnx") is None
    assert float(np.min(np.sum(emb.embed(TEXTS) * want, axis=1))) >= 0.9999

    whole = (target / "tokenizer.json").read_bytes()
    (target / "tokenizer.json").write_bytes(whole[: len(whole) // 2])
    assert "tokenizer.json does not match" in (check_export(target, MODEL, "onnx") or "")
    (target / "tokenizer.json").write_bytes(whole)
    manifest = target / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"max_seq_length": 256', '"max_seq_length": 512'))
    assert "checksum" in (check_export(target, MODEL, "onnx") or "")
    manifest.write_text(text)
    assert check_export(target, MODEL, "onnx") is None


def test_export_model_cli_verifies(onnx_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = export_dir(onnx_data / "models", MODEL, "onnx-int8")
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["variant"] == "onnx-int8" and manifest["source_model"] == MODEL
    assert main(["export-model", "--data-dir", str(onnx_data), "--backend", "onnx-int8"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"verified {target / 'model.onnx'}",
        f"sha256 {manifest['sha256']}",
    ]
    # the installed console script, as an operator runs it
    script = Path(sys.executable).with_name("audience")
    proc = subprocess.run(
        [str(script), "export-model", "--data-dir", str(onnx_data), "--backend", "onnx"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("verified ") and "sha256 " in proc.stdout


def test_runtime_does_not_load_torch(onnx_data: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from audience.index import OnnxEmbedder; "
        f"e = OnnxEmbedder({MODEL!r}, 'onnx-int8', Path({str(onnx_data / 'models')!r})); "
        "assert e.embed(['hello world']).shape == (1, e.dim); "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "max-pooled"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(PreconditionFailed, match="mean or cls pooling"):
        export_onnx(str(model), tmp_path / "out", quantize=False)
    assert not (tmp_path / "out").exists()
