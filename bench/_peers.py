"""`bench/run.py peers`: Audience beside the vector databases a team would run instead.

The same vectors for every system: the StackOverflow title embeddings (plain
sentence-transformers) replicated with noise to --users (as `perf` does), each user with a
`tier` in 0..9 (a value 10% of users hold: the filter). The same queries: 1,000 seed lists of
20 users of one tag; Audience gets the seed ids (FindLookalikes), the others the seeds' mean
vector and drop the seeds from k + 20 results, as Audience does inside. The truth: exact
inner-product search (faiss.knn) over all users, and over the users of the filter's tier.

One system at a time, each in its own process(es) (bench/_peer_systems.py): build (load +
index, timed; size on disk), then a fresh process on the data on disk (restart: process start
to the first answer), tuned to the least search effort of a ladder reaching recall@100 >= 0.95
on 200 other seed lists, then timed with 1 client, 8 concurrent clients and the filter. RSS is
the serving process' peak (the server's, for a server). Audience runs as `audience serve` and
is called over gRPC with 20 seed ids (the API takes seeds, not a query vector).

Beside Audience, two floors in the same run (`grpc_floors`), with the same Python gRPC client
stack: the bare grpcio server of bench/_grpc_floor.py whose handler does, hot, as much work as
Audience's engine call took in-process (what any Python gRPC service would get for that work
on this machine), and a bare grpcio server around the same engine call at the same effort
(no interceptors, health or jobs). Their QPS against the in-process libraries' says how much of
Audience's gap to them is the Python gRPC call itself.

Optional dependencies: `make bench-peers-deps` (Milvus Lite, pymilvus, Chroma, LanceDB). A
system whose package is missing is reported as skipped, with that command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from _data import DATASETS
from _grpc_floor import EngineFloorServer, FloorClient, FloorServer
from _harness import ServerProcess, encode_baseline, log
from _peer_systems import GOAL_RECALL, HNSW_LADDER, SEEDS, K, disk_bytes, peak_rss, recall
from _perf import _concurrent_qps, _replicate, draw_seed_sets, label_rows

from audience.client import AudienceClient, Filter, LookalikeQuery, Profile

SYSTEMS = ["audience", "faiss_hnsw", "lancedb", "milvus_lite", "chroma_server"]
# Besides the default index: Audience on its compressed graph (8-bit codes).
AUDIENCE_KINDS = {"audience": "hnsw", "audience_sq8": "hnsw-sq8"}
NEEDS = {"lancedb": "lancedb", "milvus_lite": "pymilvus", "chroma_server": "chromadb"}
SERVERS = ("milvus_lite", "chroma_server")
LIBRARIES = ("lancedb", "faiss_hnsw")
TUNE, WARM = 200, 100
FILTER_TIER = 3
WORKER = Path(__file__).with_name("_peer_systems.py")


def _prepare(args, work: Path) -> dict:
    """Vectors, tiers, queries and the exact answers, written to `work`."""
    users = DATASETS["stackoverflow"](args.data, 1)
    log(f"encoding {len(users):,} StackOverflow titles (plain sentence-transformers) ...")
    base = encode_baseline([u.texts[0] for u in users], return_vectors=True)[1]
    n = args.users
    vectors = _replicate(base, n, args.seed)
    tier = np.random.default_rng(args.seed).integers(0, 10, n).astype(np.int8)
    rng = random.Random(args.seed)
    by_label, names, reps = label_rows([u.label for u in users], n)
    sets = np.array(draw_seed_sets(rng, by_label, names, reps, n, args.queries + TUNE + WARM))
    qvecs = vectors[sets].astype(np.float64).mean(axis=1)
    qvecs = (qvecs / np.linalg.norm(qvecs, axis=1, keepdims=True)).astype(np.float32)

    log(f"exact answers for {len(sets):,} queries over {n:,} users ...")
    import faiss

    def exact(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        nn = ids[faiss.knn(qvecs[rows], vectors[ids], K + SEEDS, faiss.METRIC_INNER_PRODUCT)[1]]
        return np.array([[i for i in r if i not in set(s)][:K] for r, s in zip(nn, sets[rows])])

    q = np.arange(args.queries)
    t = np.arange(args.queries, args.queries + TUNE)
    everyone = np.arange(n)
    np.save(work / "vectors.npy", vectors)
    np.save(work / "tier.npy", tier)
    arrays = {
        "queries": qvecs[q],
        "seeds": sets[q],
        "truth": exact(everyone, q),
        "filtered_truth": exact(np.flatnonzero(tier == FILTER_TIER), q),
        "tune": qvecs[t],
        "tune_seeds": sets[t],
        "tune_truth": exact(everyone, t),
        "warm": qvecs[args.queries + TUNE :],
        "warm_seeds": sets[args.queries + TUNE :],
        "filter_tier": np.array(FILTER_TIER),
    }
    np.savez(work / "queries.npz", **arrays)
    return arrays


def _audience(args, name: str, work: Path, qz: dict) -> dict:
    """Audience over gRPC: build, restart, tune search_effort, time; as the workers do."""
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    tier = np.load(work / "tier.npy")
    n = len(vectors)
    ids = [f"u{i}" for i in range(n)]
    data_dir = work / name
    kind = AUDIENCE_KINDS[name]
    flags = ["--lexical-dim", "0", f"--index-kind={kind}", *args.serve_flag]
    out: dict = {"config": f"`audience serve --index-kind={kind}`, FindLookalikes over gRPC"}
    with (
        ServerProcess(data_dir, *flags) as server,
        AudienceClient(server.target, timeout=3600) as client,
    ):
        client.wait_ready(timeout=600)
        t0 = time.perf_counter()
        client.upsert_users(
            (
                Profile(ids[i], vector=vectors[i].tobytes(), attributes={"tier": int(tier[i])})
                for i in range(n)
            ),
            batch_size=1000,
            progress=not args.quiet,
        )
        client.snapshot()  # the last index generation is written
        out["build_s"] = time.perf_counter() - t0
    out["disk_bytes"] = disk_bytes(data_dir)
    os.sync()  # the restart is not measured against the kernel's writeback

    def query(seeds, effort=0, filtered=False) -> LookalikeQuery:
        filters = (Filter.eq("tier", FILTER_TIER),) if filtered else ()
        seed_ids = [ids[i] for i in seeds]
        return LookalikeQuery(seed_ids=seed_ids, k=K, search_effort=effort, filters=filters)

    def answers(client, queries) -> tuple[list[float], list[list[int]]]:
        lat, got = [], []
        for q in queries:
            t1 = time.perf_counter()
            res = client.find_lookalikes(q)
            lat.append((time.perf_counter() - t1) * 1000)
            got.append([int(u.user_id[1:]) for u in res.users])
        return lat, got

    t0 = time.perf_counter()
    server = ServerProcess(data_dir, *flags)
    client = AudienceClient(server.target, timeout=600)
    try:
        client.wait_ready(timeout=600)
        client.find_lookalikes(query(qz["warm_seeds"][0]))
        out["restart_s"] = time.perf_counter() - t0
        warm = [query(s) for s in qz["warm_seeds"]]
        for effort in HNSW_LADDER:
            answers(client, [replace(q, search_effort=effort) for q in warm[:20]])
            got = answers(client, [query(s, effort) for s in qz["tune_seeds"]])[1]
            tuned = recall(got, qz["tune_truth"])
            if tuned >= GOAL_RECALL:
                break
        answers(client, [replace(q, search_effort=effort) for q in warm])
        queries = [query(s, effort) for s in qz["seeds"]]
        lat, got = answers(client, queries)
        out.update(
            effort=effort,
            tune_recall_at_100=tuned,
            recall_at_100=recall(got, qz["truth"]),
            qps_single=len(lat) / (sum(lat) / 1000),
            p50_ms=float(np.percentile(lat, 50)),
            p99_ms=float(np.percentile(lat, 99)),
        )
        out["qps_8_clients"] = _concurrent_qps(server.target, queries * 2, 8)
        lat, got = answers(client, [query(s, effort, True) for s in qz["seeds"]])
        out["filtered_qps"] = len(lat) / (sum(lat) / 1000)
        out["filtered_p50_ms"] = float(np.percentile(lat, 50))
        out["filtered_recall_at_100"] = recall(got, qz["filtered_truth"])
        out["rss_bytes"] = peak_rss(server.proc.pid)
    finally:
        client.close()
        server.stop()
    out["grpc_floors"] = _floors(data_dir, work, kind, queries)
    return out


def _floors(data_dir: Path, work: Path, kind: str, queries: list[LookalikeQuery]) -> dict:
    """The two bare grpcio servers of the module's docstring, timed as Audience was: one
    client (p50, QPS), then 8 concurrent clients."""
    from audience.index import Engine, EngineConfig, Seed
    from audience.index import LookalikeQuery as EngineQuery

    log("  the same calls on bare grpcio servers ...")
    engine = Engine.open(EngineConfig(data_dir=data_dir, lexical_dim=0, index_kind=kind))
    try:
        calls = [
            EngineQuery(
                seeds=tuple(Seed(user_id=u) for u in q.seed_ids),
                k=q.k,
                search_effort=q.search_effort,
            )
            for q in queries
        ]
        _latencies_ms(engine.find_lookalikes, calls[:WARM])
        lat = _latencies_ms(engine.find_lookalikes, calls)
    finally:
        engine.close()
    work_ms = float(np.percentile(lat, 50))
    out: dict = {"inprocess_p50_ms": work_ms}

    with FloorServer(work) as floor:
        clients = [FloorClient(floor.target) for _ in range(8)]
        try:
            lat = clients[0].latencies(work_ms, len(queries))
            done: list[int] = []

            def work_on(c: FloorClient) -> None:
                done.append(len(c.latencies(work_ms, len(queries) // 4, warm=0)))

            for c in clients:
                c.latencies(work_ms, 1, warm=0)  # connected before the clock starts
            qps_8 = _threads_qps([partial(work_on, c) for c in clients], done)
        finally:
            for c in clients:
                c.close()
    out["bare"] = _timings(lat, qps_8)

    with EngineFloorServer(work, data_dir, {"index_kind": kind}) as floor:
        with AudienceClient(floor.target, timeout=600) as client:
            _latencies_ms(client.find_lookalikes, queries[:WARM])
            lat = _latencies_ms(client.find_lookalikes, queries)
        qps_8 = _concurrent_qps(floor.target, queries * 2, 8)
    out["engine"] = _timings(lat, qps_8)
    return out


def _latencies_ms(call, items: list) -> list[float]:
    """Milliseconds of `call(item)` for each item, one after the other."""
    lat = []
    for item in items:
        t0 = time.perf_counter()
        call(item)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def _threads_qps(jobs: list, done: list[int]) -> float:
    """Calls per second of `jobs` run on one thread each (each appends its calls to done)."""
    threads = [threading.Thread(target=job) for job in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def _timings(lat: list[float], qps_8: float) -> dict:
    return {
        "qps_single": len(lat) / (sum(lat) / 1000),
        "p50_ms": float(np.percentile(lat, 50)),
        "qps_8_clients": qps_8,
    }


def _worker(name: str, mode: str, work: Path) -> tuple[dict, float]:
    """Run one worker; (its JSON, seconds from its start to READY, or to its end)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), name, mode, str(work)],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = None
    for line in proc.stdout:
        if line.strip() == "READY" and ready is None:
            ready = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError(f"{name} {mode} failed (exit {proc.returncode})")
    if ready is None:
        ready = time.perf_counter() - t0
    return json.loads((work / f"{name}-{mode}.json").read_text()), ready


def _peer(name: str, work: Path) -> dict:
    build, _ = _worker(name, "build", work)
    served, restart_s = _worker(name, "serve", work)
    return {**build, **served, "restart_s": restart_s}


def bench_peers(args: argparse.Namespace) -> dict:
    unknown = [s for s in args.systems if s not in SYSTEMS and s not in AUDIENCE_KINDS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {SYSTEMS + ['audience_sq8']}")
    tmp_root = args.work_dir or Path(tempfile.gettempdir())
    tmp_root.mkdir(parents=True, exist_ok=True)
    out: dict = {"users": args.users, "queries": args.queries, "k": K, "systems": {}}
    with tempfile.TemporaryDirectory(prefix="audience-peers-", dir=tmp_root) as tmp_name:
        work = Path(tmp_name)
        qz = _prepare(args, work)
        out["dimension"] = int(qz["queries"].shape[1])
        for name in args.systems:
            need = NEEDS.get(name)
            if need and importlib.util.find_spec(need) is None:
                why = f"{need} is not installed: make bench-peers-deps"
                out["systems"][name] = {"skipped": why}
                log(f"{name}: skipped ({why})")
                continue
            log(f"{name}: build, restart, tune, serve ...")
            t0 = time.perf_counter()
            if name in AUDIENCE_KINDS:
                result = _audience(args, name, work, qz)
            else:
                result = _peer(name, work)
            out["systems"][name] = result
            log(
                f"  {time.perf_counter() - t0:.0f}s: recall {result['recall_at_100']:.3f}, "
                f"{result['qps_single']:.0f} QPS"
            )
            shutil.rmtree(work / name, ignore_errors=True)  # not needed any more: free the disk
    out.update(_versus(out["systems"]))
    _table(out)
    return out


def _versus(systems: dict) -> dict:
    """Audience's ratios to the best server peer and the best in-process library."""
    a = systems.get("audience")
    if not a or "skipped" in a:
        return {}
    ratios: dict = {}
    for group, names in (("server", SERVERS), ("library", LIBRARIES)):
        ran = {n: systems[n] for n in names if n in systems and "skipped" not in systems[n]}
        if not ran:
            continue
        for metric in ("qps_single", "qps_8_clients", "filtered_qps"):
            best = max(ran, key=lambda n: ran[n][metric])
            ratios[f"audience_{metric}_vs_best_{group}"] = a[metric] / ran[best][metric]
            ratios[f"best_{group}_{metric}"] = best
            for floor, timed in a.get("grpc_floors", {}).items():
                if group == "library" and isinstance(timed, dict) and metric in timed:
                    mine = timed[metric] / ran[best][metric]
                    ratios[f"{floor}_grpc_floor_{metric}_vs_best_library"] = mine
        if group == "server":
            small = min(ran, key=lambda n: ran[n]["rss_bytes"])
            ratios["audience_rss_vs_smallest_server"] = a["rss_bytes"] / ran[small]["rss_bytes"]
            fast = min(ran, key=lambda n: ran[n]["restart_s"])
            ratios["audience_restart_vs_fastest_server"] = a["restart_s"] / ran[fast]["restart_s"]
    return {"versus": ratios}


def _table(out: dict) -> None:
    print(f"\n== peers ({out['users']:,} users x {out.get('dimension')} dims, k = {out['k']})")
    head = (
        f"{'system':<15}{'recall':>7}{'effort':>10}{'QPS 1':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'QPS 8':>8}{'filt QPS':>9}{'filt rec':>9}{'RSS GiB':>8}{'disk GiB':>9}"
        f"{'build s':>8}{'restart s':>10}"
    )
    print(head)
    gib = 1 << 30
    for name, r in out["systems"].items():
        if "skipped" in r:
            print(f"{name:<15}skipped: {r['skipped']}")
            continue
        effort = r["effort"]
        effort = "/".join(map(str, effort)) if isinstance(effort, list) else effort
        print(
            f"{name:<15}{r['recall_at_100']:>7.3f}{effort!s:>10}{r['qps_single']:>8.0f}"
            f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['qps_8_clients']:>8.0f}"
            f"{r['filtered_qps']:>9.0f}{r['filtered_recall_at_100']:>9.3f}"
            f"{r['rss_bytes'] / gib:>8.2f}{r['disk_bytes'] / gib:>9.2f}{r['build_s']:>8.0f}"
            f"{r['restart_s']:>10.1f}"
        )
    floors = out["systems"].get("audience", {}).get("grpc_floors")
    if floors:
        print(
            f"Audience's engine call in-process, p50 {floors['inprocess_p50_ms']:.2f} ms; served by"
        )
        for floor, what in (
            ("bare", "a bare grpcio server, as much work"),
            ("engine", "a bare grpcio server, same engine call"),
        ):
            r = floors[floor]
            print(
                f"  {what:<40}{r['qps_single']:>8.0f} QPS 1{r['p50_ms']:>8.2f} ms p50"
                f"{r['qps_8_clients']:>8.0f} QPS 8"
            )
    for key, value in out.get("versus", {}).items():
        if isinstance(value, float):
            print(f"  {key:<48}{value:>8.2f}x")
