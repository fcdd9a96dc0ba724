#!/usr/bin/env python
"""Exact scan against HNSW at small user counts (a benchmark, not a test): where should
`index_kind = "auto"` stop scanning (`ann_threshold`)?

    .venv/bin/python bench/_threshold.py [--data ../shared/data]
        [--users 5000 10000 20000 50000 100000] [--rounds 3] [--json OUT.json]

The vectors `perf` uses (the StackOverflow title embeddings of plain sentence-transformers,
replicated with noise to each size), the product's own index classes with their default
options (`flat`, the baseline; `hnsw`: fp16, M 32, efConstruction 80, efSearch 256), and 300
lookalike-shaped queries (the mean of 20 users of one tag, k 120 as a lookalike searches for
100 users plus its 20 seeds), one at a time and 2 ms apart as a server receives them, the two
kinds alternating by round. Per size: the p50 of each, HNSW's recall@100 against the scan and
its build time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _data import DATASETS
from _harness import encode_baseline, log
from _perf import _replicate, draw_seed_sets, label_rows

ROOT = Path(__file__).resolve().parent.parent
GAP_S = 0.002
QUERIES = 300


def _queries(vectors: np.ndarray, labels: list[str], rng: random.Random) -> np.ndarray:
    """Unit means of 20 users of one tag, drawn as `perf` draws its seeds; below the number of
    titles, from the titles that are there."""
    n = len(vectors)
    by_label, names, reps = label_rows(labels[:n], n)
    names = [t for t in names if len(by_label[t]) >= 20]
    seed_sets = draw_seed_sets(rng, by_label, names, reps, n, QUERIES)
    q = vectors[np.array(seed_sets)].astype(np.float64).mean(axis=1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _latencies_ms(index, queries: np.ndarray) -> list[float]:
    lat = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i : i + 1], 120)
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(GAP_S)
    return lat


def measure(base: np.ndarray, labels: list[str], n: int, rounds: int, seed: int) -> dict:
    from audience.index import EngineConfig
    from audience.index._vectors import IndexPolicy, build_index

    policy = IndexPolicy(EngineConfig(data_dir=Path("unused")))
    vectors = _replicate(base, n, seed)
    queries = _queries(vectors, labels, random.Random(seed))
    ids = np.arange(n)
    flat = build_index(policy.options("flat"), vectors.shape[1], ids, vectors)
    t0 = time.perf_counter()
    hnsw = build_index(policy.options("hnsw"), vectors.shape[1], ids, vectors)
    build_s = time.perf_counter() - t0
    lat: dict[str, list[float]] = {"flat": [], "hnsw": []}
    for _ in range(rounds):
        for kind, index in (("flat", flat), ("hnsw", hnsw)):
            lat[kind] += _latencies_ms(index, queries)
    truth = flat.search(queries, 100)[1]
    got = hnsw.search(queries, 100)[1]
    recall = statistics.mean(len(set(a) & set(b)) / 100 for a, b in zip(truth, got))
    return {
        "users": n,
        "flat_p50_ms": statistics.median(lat["flat"]),
        "hnsw_p50_ms": statistics.median(lat["hnsw"]),
        "hnsw_recall_at_100": recall,
        "hnsw_build_s": build_s,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("AUDIENCE_DATA", ROOT.parent / "shared" / "data")),
        help="folder with the data sets (env AUDIENCE_DATA; default ../shared/data)",
    )
    p.add_argument("--users", type=int, nargs="+", default=[5000, 10000, 20000, 50000, 100000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    users = DATASETS["stackoverflow"](args.data, 1)
    log(f"encoding {len(users):,} StackOverflow titles (plain sentence-transformers) ...")
    base = encode_baseline([u.texts[0] for u in users], return_vectors=True)[1]
    labels = [u.label for u in users]
    rows = []
    head = ("users", 8), ("exact p50 ms", 14), ("hnsw p50 ms", 13), ("ratio", 7), ("recall", 8)
    print("".join(f"{name:>{width}}" for name, width in head) + f"{'build s':>8}")
    for n in args.users:
        r = measure(base, labels, n, args.rounds, args.seed)
        rows.append(r)
        print(
            f"{n:>8,}{r['flat_p50_ms']:>14.2f}{r['hnsw_p50_ms']:>13.2f}"
            f"{r['flat_p50_ms'] / r['hnsw_p50_ms']:>7.1f}{r['hnsw_recall_at_100']:>8.3f}"
            f"{r['hnsw_build_s']:>8.1f}",
            flush=True,
        )
    if args.json:
        out = {"gap_s": GAP_S, "queries": QUERIES, "rows": rows}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
