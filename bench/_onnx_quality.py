#!/usr/bin/env python
"""ONNX encoder backends against torch: speed and quality in one run (a benchmark, not a test).

    .venv/bin/python bench/_onnx_quality.py [--data ../shared/data] [--speed-n 5000]
        [--variants onnx onnx-int8 ...] [--json OUT.json]

For each data set (StackOverflow titles, THUCNews headlines), one text = one item:
  speed      texts/s on the same `--speed-n` texts (random.Random(0) sample) of plain
             SentenceTransformer.encode(batch_size=64) (the baseline), the torch backend
             (SentenceTransformerEmbedder) and each ONNX variant, in `--rounds` rounds (order
             reversed every other round); median texts/s, and the median over rounds of the
             ratio to the baseline measured in the same round.
  agreement  cosine of each variant's vector with torch fp32, over all texts: mean, min, p1.
             Also texts per CPU second of this process ("x cpu"), and the wall ratio over
             the rounds only in which other processes kept at most 0.25 cores busy
             ("x quiet"; /proc/stat), since a loaded machine slows torch far more than ORT.
  p@100      per label, 20 seed texts (random.Random(1)), their normalised centroid, the
             exact top-100 by cosine among all texts but the seeds; share of the seed label,
             mean over labels. Semantic vectors alone (no lexical channel, no attributes).

Variants: onnx and onnx-int8 are what the backends ship (export_onnx); the others are the
alternatives tried (other quantization settings, ORT's offline transformer fusion, OpenVINO,
thread settings) and are built here from the fp32 export.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from _data import _tsv  # noqa: E402

from audience.index._encode._embed import SentenceTransformerEmbedder, resolve_model_path  # noqa: E402
from audience.index._encode._onnx import OnnxEmbedder  # noqa: E402
from audience.index._encode._onnx_export import export_onnx, quantize_int8  # noqa: E402

DATASETS = {"stackoverflow": "stackoverflow_titles.tsv", "thucnews": "thucnews_headlines.tsv"}
MODEL = "all-MiniLM-L6-v2"


def load(path: Path) -> tuple[list[str], list[str]]:
    rows = _tsv(path)
    return [r["text"] for r in rows], [r["label"] for r in rows]


# ---------------------------------------------------------------- variants


class _Dir:
    """Builds variant directories from the fp32 export under `work`."""

    def __init__(self, work: Path):
        self.work = work
        self.fp32 = export_onnx(MODEL, work / "onnx", quantize=False)
        self.manifest = json.loads((self.fp32 / "manifest.json").read_text())

    def derived(self, name: str, make: Callable[[Path, Path], dict | None]) -> OnnxEmbedder:
        target = self.work / name
        if not (target / "model.onnx").exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.fp32 / "tokenizer.json", target / "tokenizer.json")
            make(self.fp32 / "model.onnx", target / "model.onnx")
        manifest = dict(self.manifest, variant=name)
        return OnnxEmbedder.from_directory(target, manifest)


def _matmuls(path: Path, where: Callable[[str], bool]) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and where(n.name)]


def _fuse(src: Path, dst: Path) -> None:
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384)
    opt.save_model_to_file(str(dst))


def _fuse_then_int8(src: Path, dst: Path) -> None:
    fused = dst.with_name("fused.fp32.onnx")
    _fuse(src, fused)
    quantize_int8(fused, dst, op_types=("MatMul", "Attention"))
    fused.unlink()


def _retune(emb: OnnxEmbedder, *, threads: int | None = None, spin: bool = True) -> OnnxEmbedder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    emb._session = ort.InferenceSession(
        str(emb.directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return emb


def _batch(emb: OnnxEmbedder, size: int, tokens: int | None = None) -> OnnxEmbedder:
    emb.batch_size = size
    emb.max_batch_tokens = tokens or emb.max_batch_tokens
    return emb


class _OpenVino(OnnxEmbedder):
    """OpenVINO on the same ONNX file (its CPU plugin runs bf16 where the CPU has it)."""

    def __init__(self, base: OnnxEmbedder, hint: str, precision: str | None = None):
        import openvino as ov

        self.__dict__.update(base.__dict__)
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0))}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled = ov.Core().compile_model(str(base.directory / "model.onnx"), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._request.infer(feeds)[0].copy()


def build_variants(names: list[str], work: Path) -> dict[str, Callable[[], object]]:
    d = _Dir(work)
    # what the int8 backend ships, exported the way the backend exports it
    int8 = lambda: OnnxEmbedder(MODEL, "onnx-int8", work / "cache")  # noqa: E731
    fp32 = lambda: OnnxEmbedder.from_directory(d.fp32, d.manifest)  # noqa: E731
    last = lambda n: "layer.5/" in n  # noqa: E731
    ffn_out = lambda n: "/output/dense/" in n and "attention" not in n  # noqa: E731
    table: dict[str, Callable[[], object]] = {
        "onnx": fp32,
        "onnx-int8": int8,
        "int8-pertensor": lambda: d.derived(
            "int8-pertensor", lambda s, t: quantize_int8(s, t, per_channel=False)
        ),
        "int8-reduce": lambda: d.derived(
            "int8-reduce", lambda s, t: quantize_int8(s, t, reduce_range=True)
        ),
        "int8-u8": lambda: d.derived(
            "int8-u8", lambda s, t: quantize_int8(s, t, weight_type="QUInt8")
        ),
        "int8-gather": lambda: d.derived(
            "int8-gather", lambda s, t: quantize_int8(s, t, op_types=("MatMul", "Gather"))
        ),
        "int8-keeplast": lambda: d.derived(
            "int8-keeplast",
            lambda s, t: quantize_int8(s, t, nodes_to_exclude=_matmuls(s, last)),
        ),
        "int8-keepffnout": lambda: d.derived(
            "int8-keepffnout",
            lambda s, t: quantize_int8(s, t, nodes_to_exclude=_matmuls(s, ffn_out)),
        ),
        "fused": lambda: d.derived("fused", _fuse),
        "fused-int8": lambda: d.derived("fused-int8", _fuse_then_int8),
        "onnx-1thread": lambda: _retune(fp32(), threads=1, spin=False),
        "int8-1thread": lambda: _retune(int8(), threads=1, spin=False),
        "onnx-spin": lambda: _retune(fp32(), spin=True),
        "int8-b16": lambda: _batch(int8(), 16),
        "int8-b128": lambda: _batch(int8(), 128),
        "int8-b256": lambda: _batch(int8(), 256),
        "int8-t256": lambda: _batch(int8(), 64, 256),  # padded tokens per batch (512 ships)
        "int8-t1024": lambda: _batch(int8(), 64, 1024),
        "int8-t2048": lambda: _batch(int8(), 64, 2048),  # shipped until 2026-12-02
        "int8-spin": lambda: _retune(int8(), spin=True),
        "openvino": lambda: _OpenVino(fp32(), "LATENCY"),
        "openvino-f32": lambda: _OpenVino(fp32(), "LATENCY", "f32"),
        "openvino-tput": lambda: _OpenVino(fp32(), "THROUGHPUT"),
        "openvino-int8": lambda: _OpenVino(int8(), "LATENCY"),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(table)}")
    return {n: table[n] for n in names}


# ---------------------------------------------------------------- measures


def _busy_s() -> float:
    """CPU seconds all processes on this machine have used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def texts_per_s(fn: Callable[[list[str]], object], texts: list[str]) -> tuple[float, float, float]:
    """(texts per wall second, texts per CPU second of this process (all threads), cores
    that other processes kept busy meanwhile)."""
    t0, c0, b0 = time.perf_counter(), time.process_time(), _busy_s()
    fn(texts)
    wall, own, busy = time.perf_counter() - t0, time.process_time() - c0, _busy_s() - b0
    return len(texts) / wall, len(texts) / own, max(0.0, busy - own) / wall


def precision_at_k(
    vecs: np.ndarray, labels: list[str], seeds: int = 20, k: int = 100, seed: int = 1
) -> float:
    lab = np.asarray(labels)
    rng = random.Random(seed)
    scores = []
    for name in sorted(set(labels)):
        members = np.flatnonzero(lab == name).tolist()
        chosen = rng.sample(members, seeds)
        centroid = vecs[chosen].mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        sims = vecs @ centroid
        sims[chosen] = -np.inf
        top = np.argpartition(-sims, k)[:k]
        scores.append(float(np.mean(lab[top] == name)))
    return float(np.mean(scores))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--speed-n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--variants", nargs="+", default=["onnx", "onnx-int8"])
    p.add_argument("--no-quality", action="store_true", help="speed only")
    p.add_argument("--work", type=Path, help="keep exports here (default: a temp dir)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    torch_emb = SentenceTransformerEmbedder(MODEL)
    makers = build_variants(args.variants, work)
    embedders = {name: make() for name, make in makers.items()}
    runners: dict[str, Callable[[list[str]], object]] = {
        "st.encode": lambda t: plain.encode(t, batch_size=64, show_progress_bar=False),
        "torch": torch_emb.embed,
        **{name: e.embed for name, e in embedders.items()},  # type: ignore[attr-defined]
    }
    report: dict = {
        "cores": len(os.sched_getaffinity(0)),
        "speed_n": args.speed_n,
        "rounds": args.rounds,
        "datasets": {},
    }
    for ds in args.datasets:
        texts, labels = load(args.data / DATASETS[ds])
        sample = random.Random(0).sample(texts, min(args.speed_n, len(texts)))
        for fn in runners.values():
            fn(sample[:128])  # warm-up
        wall: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        others: list[float] = []  # per round: the most cores other processes used
        for r in range(args.rounds):
            names = list(runners) if r % 2 == 0 else list(reversed(runners))
            busy = 0.0
            for name in names:
                w, c, o = texts_per_s(runners[name], sample)
                wall[name].append(w)
                cpu[name].append(c)
                busy = max(busy, o)
            others.append(round(busy, 2))
        # Rounds in which other processes used at most a quarter of a core, if any
        quiet = [i for i, o in enumerate(others) if o <= 0.25]
        # Ratio against st.encode within each round, then the median over rounds: robust to
        # the load of other processes drifting during the run.
        base, base_cpu = np.asarray(wall["st.encode"]), np.asarray(cpu["st.encode"])
        rows = {
            n: {
                "texts_per_s": round(float(np.median(v)), 1),
                "vs_st_encode": round(float(np.median(np.asarray(v) / base)), 2),
                "vs_st_encode_rounds": [round(x, 2) for x in np.asarray(v) / base],
                "texts_per_cpu_s": round(float(np.median(cpu[n])), 1),
                "cpu_vs_st_encode": round(float(np.median(np.asarray(cpu[n]) / base_cpu)), 2),
                "quiet_vs_st_encode": (
                    round(float(np.median((np.asarray(v) / base)[quiet])), 2) if quiet else None
                ),
            }
            for n, v in wall.items()
        }
        report.setdefault("other_cores_busy_per_round", {})[ds] = others
        if not args.no_quality:
            ref = torch_emb.embed(texts)
            rows["torch"]["p_at_100"] = round(precision_at_k(ref, labels), 4)
            for name, e in embedders.items():
                vecs = e.embed(texts)  # type: ignore[attr-defined]
                cos = np.sum(vecs * ref, axis=1)
                rows[name].update(
                    cos_mean=round(float(cos.mean()), 5),
                    cos_p1=round(float(np.percentile(cos, 1)), 5),
                    cos_min=round(float(cos.min()), 5),
                    p_at_100=round(precision_at_k(vecs, labels), 4),
                )
        report["datasets"][ds] = rows
        print(f"\n{ds}: {len(texts)} texts, speed on {len(sample)}, {report['cores']} cores")
        print(f"cores other processes kept busy, per round: {others} ({len(quiet)} quiet)")
        print(
            f"{'backend':16} {'texts/s':>8} {'x encode':>8} {'x quiet':>7} {'x cpu':>6} "
            f"{'cos mean':>9} {'cos p1':>8} {'cos min':>8} {'p@100':>7} {'x torch p':>9}"
        )
        base_p = rows["torch"].get("p_at_100")
        for name, row in rows.items():
            q = [row.get(k) for k in ("cos_mean", "cos_p1", "cos_min", "p_at_100")]
            rel = row["p_at_100"] / base_p if base_p and "p_at_100" in row else None
            cells = [f"{x:.4f}" if x is not None else "-" for x in q]
            print(
                f"{name:16} {row['texts_per_s']:8.1f} {row['vs_st_encode']:8.2f} "
                f"{row['quiet_vs_st_encode'] or float('nan'):7.2f} "
                f"{row['cpu_vs_st_encode']:6.2f} "
                f"{cells[0]:>9} {cells[1]:>8} {cells[2]:>8} {cells[3]:>7} "
                f"{(f'{rel:.3f}' if rel else '-'):>9}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
