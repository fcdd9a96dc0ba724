#!/usr/bin/env python
"""Raw FAISS HNSW search, one query at a time, back to back against 2 ms apart (a benchmark,
not a test): does a search slow down when calls arrive at a server's pace, and why?

    .venv/bin/python bench/_paced_search.py [--users 300000] [--kinds fp16 f32 sq8]
        [--rounds 3] [--json OUT.json]

Clustered unit vectors (2,000 centres plus noise, 384 dims), an HNSW graph of each storage kind
(built by the product's HnswIndex, as `hnsw` / `hnsw-f32` / `hnsw-sq8`), 400 queries near
stored vectors, efSearch 200, k 100. Per round and kind, the median search time: back to back
(the baseline), with a 2 ms sleep after each search, and with a 2 ms busy spin instead (the core
never idles), each with OpenMP at 2 threads and at 1. A slowdown that the spin shares is not the
core waking up; one that 1 thread shares is not OpenMP's thread pool.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

DIM = 384
GAP_S = 0.002
KINDS = ["fp16", "f32", "sq8"]  # HnswIndex storage: hnsw, hnsw-f32, hnsw-sq8


def _graph(x: np.ndarray, kind: str):
    """The faiss index the product's HnswIndex builds for `kind` (fp16 / f32 / sq8 storage,
    its M and efConstruction), to be searched raw, at the engine's depth."""
    from audience.index._vectors._ann import HnswIndex

    return HnswIndex.build(DIM, np.arange(len(x)), x, storage=kind)._index


def _median_ms(index, queries: np.ndarray, gap: str) -> float:
    import faiss

    params = faiss.SearchParametersHNSW(efSearch=200)
    lat = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i : i + 1], 100, params=params)
        lat.append((time.perf_counter() - t0) * 1000)
        if gap == "sleep":
            time.sleep(GAP_S)
        elif gap == "spin":
            end = time.perf_counter() + GAP_S
            while time.perf_counter() < end:
                pass
    return statistics.median(lat)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=300_000)
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=str)
    args = p.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM), dtype=np.float32)
    x = centres[np.arange(args.users) % 2000]
    x += 0.6 * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.integers(0, args.users, 400)]
    queries += 0.02 * rng.standard_normal(queries.shape, dtype=np.float32)
    rows = []
    for kind in args.kinds:
        index = _graph(x, kind)
        for rnd in range(args.rounds):
            for threads in (2, 1):
                faiss.omp_set_num_threads(threads)
                ms = {gap: _median_ms(index, queries, gap) for gap in ("none", "sleep", "spin")}
                rows.append({"kind": kind, "round": rnd, "omp_threads": threads, **ms})
        del index
    print(f"{'kind':<6}{'round':>6}{'omp':>5}{'b2b ms':>9}{'sleep ms':>10}{'spin ms':>9}"
          f"{'sleep x':>9}{'spin x':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['kind']:<6}{r['round']:>6}{r['omp_threads']:>5}{r['none']:>9.3f}"
            f"{r['sleep']:>10.3f}{r['spin']:>9.3f}{r['sleep'] / r['none']:>9.2f}"
            f"{r['spin'] / r['none']:>8.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"users": args.users, "gap_s": GAP_S, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
