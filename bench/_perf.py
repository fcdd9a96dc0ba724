"""`bench/run.py perf`: encoder and index performance, each against a baseline in the same run.

1. Ingest: the StackOverflow titles through gRPC into a server with the default encoder
   backend (client -> server -> model -> SQLite -> index), in four rounds, each preceded by
   plain SentenceTransformer.encode (torch fp32, batch 64) on the same round's texts (the
   baseline; the idle server's CPU meanwhile is reported); then lookalike precision@100 with
   that backend and with the torch fp32 backend (a second server).
2. Scale: N users (default 1,000,000) with given vectors: the StackOverflow title embeddings
   replicated with noise (cosine ~0.86 to their original), ingested through gRPC. Then the
   same engine in this process (the call without gRPC) and the raw faiss search; then a
   fresh server process on that data dir: time to SERVING, RSS, FindLookalikes (20 seed
   users of one StackOverflow tag, k=100) latency and QPS with 1 and 8 clients, the single
   client in rounds alternating with exact search (faiss IndexFlatIP over the same vectors,
   in this process: the QPS baseline, and the truth for recall@100) and with a bare gRPC
   server with no Audience code whose handler works as long as the engine call took
   in-process (bench/_grpc_floor.py): the latency any Python gRPC service adds here.
   Where a call's time goes beyond that floor: the engine in-process with a pause after
   each call (a server's pace: its caches cool between calls); a bare gRPC server around
   the same engine call (on a copy of the data dir, same client, same rounds: what
   Audience's own server code adds); and, from the server's own metrics, its handler's time
   beside the whole call as the client sees it.

Like `audience serve`, the benchmark restarts itself once with transparent huge pages (unless
--serve-flag=--no-huge-pages), so the in-process engine and the exact baseline use the same
kind of memory as the server, and with its quiet thread pools (unless --no-quiet-threads).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
from _data import DATASETS
from _grpc_floor import EngineFloorServer, FloorClient, FloorServer
from _harness import ServerProcess, encode_baseline, log, plain_model

from audience.client import AudienceClient, LookalikeQuery, LookalikeResult, Profile
from audience.server._process import huge_pages_active, quiet_thread_pools, reexec_with_huge_pages

DEFAULT_BACKEND = "default"  # whatever the server's default encoder backend is
ROUNDS = 5  # gRPC and exact Flat timings alternate in this many rounds
WARMUP = 100  # queries (seeds not among the timed ones) that warm the server up
ROUND_WARMUP = 40  # of those, untimed before each gRPC round
INGEST_ROUNDS = 4  # plain encode and ingest through gRPC alternate in this many rounds
PACE_S = 0.002  # in-process calls paced like a server's: about a gRPC round trip apart


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def _precision(client: AudienceClient, users, seeds_per_label: int, seed: int) -> float:
    by_label: dict[str, list[str]] = {}
    for u in users:
        by_label.setdefault(u.label, []).append(u.user_id)
    label_of = {u.user_id: u.label for u in users}
    rng = random.Random(seed)
    labels = sorted(by_label)
    queries = [
        LookalikeQuery(seed_ids=rng.sample(by_label[lab], seeds_per_label), k=100) for lab in labels
    ]
    results = client.find_lookalikes_many(queries, concurrency=4)
    return statistics.mean(
        sum(label_of[u.user_id] == lab for u in res.users) / 100
        for lab, res in zip(labels, results)
    )


def _server_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ingest_and_precision(args, users, backend: str, tmp: Path, baseline=None) -> dict:
    """Users through gRPC into a server with `backend`, then lookalike precision@100.

    baseline: a SentenceTransformer; then the users go in INGEST_ROUNDS rounds, each preceded
    by plain `baseline.encode` of the same round's texts (batch 64), so that the machine's
    drift weighs on both sides of the ingest ratio alike; the result also holds the plain
    encode's rate, its vectors, and the CPU the idle server used while it ran."""
    extra = [] if backend == DEFAULT_BACKEND else ["--encoder-backend", backend]
    rounds = np.array_split(np.arange(len(users)), INGEST_ROUNDS if baseline else 1)
    ingest_s = encode_s = server_cpu_s = 0.0
    vectors = []
    with (
        ServerProcess(tmp / f"data-{backend}", *extra) as server,
        AudienceClient(server.target, timeout=600) as client,
    ):
        client.wait_ready(timeout=600)
        for r, chunk in enumerate(rounds):
            part = [users[i] for i in chunk]
            if baseline is not None:
                texts = [t for u in part for t in u.texts]
                cpu0, t0 = _server_cpu_s(server.proc.pid), time.perf_counter()
                vectors.append(
                    baseline.encode(
                        texts, batch_size=64, show_progress_bar=False, normalize_embeddings=True
                    )
                )
                encode_s += time.perf_counter() - t0
                server_cpu_s += _server_cpu_s(server.proc.pid) - cpu0
                log(f"  round {r + 1} of {len(rounds)}: plain encode done, ingest ...")
            t0 = time.perf_counter()
            client.upsert_users(
                (Profile(u.user_id, texts=u.texts) for u in part),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            ingest_s += time.perf_counter() - t0
        client.rebuild_index()  # fits the lexical channel, as the README says to
        stats = client.stats()
        precision = _precision(client, users, 20, args.seed)
    out = {
        "model": stats.model,
        "ingest_s": ingest_s,
        "users_per_s": len(users) / ingest_s,
        "precision": precision,
    }
    if baseline is not None:
        n_texts = sum(len(u.texts) for u in users)
        out.update(
            encode_per_s=n_texts / encode_s,
            vectors=np.concatenate(vectors),
            server_cpu_during_encode_s=server_cpu_s,
            encode_s=encode_s,
        )
    return out


def _replicate(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors: base rows in turn plus Gaussian noise (cosine ~0.86 to the original)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    sigma = 0.6 / np.sqrt(base.shape[1])
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = base[np.arange(s, s + m) % len(base)] + sigma * rng.standard_normal(
            (m, base.shape[1]), dtype=np.float32
        )
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def label_rows(labels: list[str], n: int) -> tuple[dict[str, list[int]], list[str], int]:
    """(base rows by label, the labels sorted, replicas of the base) for n replicated users."""
    by_label: dict[str, list[int]] = {}
    for b, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(b)
    return by_label, sorted(by_label), max(1, n // len(labels))


def draw_seed_sets(
    rng: random.Random, by_label: dict[str, list[int]], names: list[str], reps: int, n: int,
    count: int,
) -> list[list[int]]:  # fmt: skip
    """Seeds as a marketer picks them: 20 users of one topic (the replicas of titles that
    share a tag), not 20 unrelated users; `count` sets of sorted row numbers below n."""
    n_base = sum(len(rows) for rows in by_label.values())
    seed_sets = []
    for _ in range(count):
        members = by_label[rng.choice(names)]
        chosen: set[int] = set()
        while len(chosen) < 20:
            i = rng.choice(members) + n_base * rng.randrange(reps)
            if i < n:
                chosen.add(i)
        seed_sets.append(sorted(chosen))
    return seed_sets


def _timed_queries(
    client: AudienceClient, queries: list[LookalikeQuery]
) -> tuple[list[float], list[LookalikeResult]]:
    """(milliseconds per call, results), in the order of ``queries``."""
    lat, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(client.find_lookalikes(q))
        lat.append((time.perf_counter() - t0) * 1000)
    return lat, results


def _concurrent_qps(target: str | list[str], queries: list[LookalikeQuery], clients: int) -> float:
    """FindLookalikes per second from `clients` threads, each with its own client over
    `target` (an address, or a list of them: round_robin)."""
    per = [queries[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(chunk):
        with AudienceClient(target, timeout=60) as c:
            c.find_lookalikes(chunk[0])  # connect before the clock starts
            barrier.wait()
            for q in chunk:
                c.find_lookalikes(q)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in per]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return len(queries) / (time.perf_counter() - t0)


def _metrics_cost(
    data_dir: Path, serve_flags: list[str], warm: list, queries: list, cycles: int = 2
) -> dict:
    """FindLookalikes p50 with Prometheus metrics off and on: the same queries against a
    server restarted on the same data dir, off / on in turn (`cycles` times each, so that the
    machine's drift weighs on both). Each metrics-on run is scraped once, and its count of
    FindLookalikes calls checked."""
    lat: dict[str, list[float]] = {"off": [], "on": []}
    handler_s = client_s = 0.0
    for cycle in range(cycles):
        for mode in ("off", "on"):
            flags = [*serve_flags]
            if mode == "on":
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    metrics_port = sock.getsockname()[1]
                flags += ["--metrics-port", str(metrics_port)]
            log(f"  metrics {mode}, run {cycle + 1} of {cycles} ...")
            with (
                ServerProcess(data_dir, *flags) as server,
                AudienceClient(server.target, timeout=600) as client,
            ):
                client.wait_ready(timeout=600)
                _timed_queries(client, warm)
                if mode == "on":
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    before = _handling_seconds(url)
                lat[mode] += _timed_queries(client, queries)[0]
                if mode == "on":
                    after = _handling_seconds(url)
                    assert after[0] == len(warm) + len(queries), after
                    handler_s += after[1] - before[1]
                    client_s += sum(lat["on"][-len(queries) :]) / 1000
    off, on = _pct(lat["off"], 50), _pct(lat["on"], 50)
    return {
        "metrics_off_p50_ms": off,
        "metrics_on_p50_ms": on,
        "metrics_cost_ratio": on / off,
        # Where a call's time goes, from the same metrics-on calls: the server's handler (its
        # interceptors, request and response conversion and the engine) against the whole
        # call as the client sees it (the rest: gRPC both ways and the client's own Python).
        "server_handler_mean_ms": handler_s / len(lat["on"]) * 1000,
        "client_mean_ms_metrics_on": client_s / len(lat["on"]) * 1000,
    }


def _handling_seconds(url: str) -> tuple[float, float]:
    """(calls, seconds) of FindLookalikes in the server's handling-time histogram."""
    with urllib.request.urlopen(url, timeout=30) as page:
        text = page.read().decode()
    found = {}
    for line in text.splitlines():
        if 'grpc_method="FindLookalikes"' in line:
            for part in ("count", "sum"):
                if line.startswith(f"audience_grpc_server_handling_seconds_{part}"):
                    found[part] = float(line.split()[-1])
    return found["count"], found["sum"]


def _auto_latency(client, queries, rng, by_label, names, n_base, reps, ids) -> dict:
    """strategy=auto beside the centroid on the same 20 seeds, in alternating rounds; and on
    seed lists of two topics (10 + 10), where auto answers with multi-interest."""
    n = len(ids)

    def pick(label: str, count: int) -> list[str]:
        chosen: set[int] = set()
        while len(chosen) < count:
            i = rng.choice(by_label[label]) + n_base * rng.randrange(reps)
            if i < n:
                chosen.add(i)
        return [ids[i] for i in sorted(chosen)]

    mixed = []
    for _ in range(len(queries)):
        a, b = rng.sample(names, 2)
        mixed.append(LookalikeQuery(seed_ids=pick(a, 10) + pick(b, 10), k=100))
    lat: dict[str, list[float]] = {"centroid": [], "auto": [], "mixed_c": [], "mixed_a": []}
    for chunk in np.array_split(np.arange(len(queries)), ROUNDS):
        one = [queries[i] for i in chunk]
        two = [mixed[i] for i in chunk]
        lat["centroid"] += _timed_queries(client, one)[0]
        lat["auto"] += _timed_queries(client, [replace(q, strategy="auto") for q in one])[0]
        lat["mixed_c"] += _timed_queries(client, two)[0]
        lat["mixed_a"] += _timed_queries(client, [replace(q, strategy="auto") for q in two])[0]
    p = {k: _pct(v, 50) for k, v in lat.items()}
    return {
        "centroid_p50_ms": p["centroid"],
        "auto_p50_ms": p["auto"],
        "auto_vs_centroid_p50": p["auto"] / p["centroid"],
        "mixed_centroid_p50_ms": p["mixed_c"],
        "mixed_auto_p50_ms": p["mixed_a"],
        "mixed_auto_vs_centroid_p50": p["mixed_a"] / p["mixed_c"],
    }


def _engine_options(args) -> dict:
    """The EngineConfig index settings of the server's flags (an --index-kind=..., say)."""
    same: dict = {
        flag[2:].split("=", 1)[0].replace("-", "_"): flag.split("=", 1)[1]
        for flag in args.serve_flag
        if flag.startswith(("--index-kind=", "--ann-threshold=", "--ef-search="))
    }
    if "ef_search" in same:
        same["hnsw_ef_search"] = same.pop("ef_search")
    for key in ("ann_threshold", "hnsw_ef_search"):
        if key in same:
            same[key] = int(same[key])
    return same


def _in_process(args, data_dir: Path, ids: list[str], seed_sets, qvecs: np.ndarray) -> dict:
    """The same engine in this process (the call without gRPC) and the raw faiss search."""
    import faiss

    from audience.index import Engine, EngineConfig, Seed
    from audience.index import LookalikeQuery as EngineQuery

    log("  in-process engine ...")
    out: dict = {}
    engine = Engine.open(EngineConfig(data_dir=data_dir, lexical_dim=0, **_engine_options(args)))
    try:
        eq = [EngineQuery(seeds=tuple(Seed(user_id=ids[i]) for i in s), k=100) for s in seed_sets]
        for q in eq[:20]:
            engine.find_lookalikes(q)
        # Back to back: the floor's work. Then the same calls again with a pause after each,
        # as a server has between two calls of one client (its caches cool meanwhile); a
        # second pass finds some of the seeds' vectors still cached, if anything in its favour.
        # (Not interleaved in rounds: the calls after a paused round start cold, which would
        # lengthen the floor's work.)
        lat: dict[float, list[float]] = {0.0: [], PACE_S: []}
        for pause in lat:
            for q in eq:
                t1 = time.perf_counter()
                engine.find_lookalikes(q)
                lat[pause].append((time.perf_counter() - t1) * 1000)
                if pause:
                    time.sleep(pause)
        out["inprocess_p50_ms"] = _pct(lat[0.0], 50)
        out["inprocess_paced_p50_ms"] = _pct(lat[PACE_S], 50)
        index = engine.catalog.index
        raw = index._index  # the faiss index object itself, at the engine's depth
        params = None
        if hasattr(index, "default_effort"):
            kind = index.kind
            params = (
                faiss.SearchParametersIVF() if kind == "ivf-pq" else faiss.SearchParametersHNSW()
            )
            if kind == "ivf-pq":
                params.nprobe = index.default_effort
            else:
                params.efSearch = index.default_effort
        lat = []
        for qv in qvecs:
            t1 = time.perf_counter()
            raw.search(qv[None, :], 120, params=params)
            lat.append((time.perf_counter() - t1) * 1000)
        out["raw_search_p50_ms"] = _pct(lat, 50)
    finally:
        engine.close()
    return out


def _scale(args, base: np.ndarray, labels: list[str], tmp: Path) -> dict:
    import faiss

    n = args.users
    dim = base.shape[1]
    log(f"scale: {n:,} users x {dim} dims (replicated title embeddings) ...")
    vectors = _replicate(base, n, args.seed)
    ids = [f"u{i}" for i in range(n)]
    data_dir = tmp / "data-scale"
    serve_flags = ["--lexical-dim", "0", *args.serve_flag]
    out: dict = {"users": n, "dimension": dim, "raw_vector_bytes": n * dim * 4}

    with (
        ServerProcess(data_dir, *serve_flags) as server,
        AudienceClient(server.target, timeout=3600) as client,
    ):
        client.wait_ready(timeout=600)
        t0 = time.perf_counter()
        client.upsert_users(
            (Profile(ids[i], vector=vectors[i].tobytes()) for i in range(n)),
            batch_size=1000,
            progress=not args.quiet,
        )
        client.snapshot()  # the last index generation is written
        out["build_s"] = time.perf_counter() - t0
        out["build_users_per_s"] = n / out["build_s"]
        out["index_type"] = client.stats().index_type
    log(f"  ingested and indexed in {out['build_s']:.0f}s ({out['index_type']})")
    # The bulk load leaves gigabytes of dirty pages; let them reach the disk first, so the
    # restart and the latencies below are not measured against the kernel's writeback.
    os.sync()

    rng = random.Random(args.seed)
    by_label, names, reps = label_rows(labels, n)
    seed_sets = draw_seed_sets(rng, by_label, names, reps, n, args.queries + WARMUP)
    seed_sets, warm_sets = seed_sets[: args.queries], seed_sets[args.queries :]
    queries = [LookalikeQuery(seed_ids=[ids[i] for i in s], k=100) for s in seed_sets]
    warm = [LookalikeQuery(seed_ids=[ids[i] for i in s], k=100) for s in warm_sets]

    # Exact answers for the same query vectors (seeds are not returned: k + 20, then drop).
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    qvecs = np.stack([vectors[s].astype(np.float64).mean(axis=0) for s in seed_sets])
    qvecs = (qvecs / np.linalg.norm(qvecs, axis=1, keepdims=True)).astype(np.float32)
    nn_exact: list[np.ndarray] = []

    # The call without gRPC first: its p50 is the work the floor server's handler does.
    out.update(_in_process(args, data_dir, ids, seed_sets, qvecs))

    # The floor: a bare gRPC server (no Audience code) whose handler works as long as the
    # engine call took in-process: what any Python gRPC service adds here around that call.
    # It is timed in the same rounds as Audience, just before it, so that the machine's drift
    # weighs on both sides of the p50 ratio alike.
    # The second floor: a bare gRPC server around the same engine call (on a copy of the data
    # dir), timed with the same client in the same rounds: what Audience's own server code
    # (interceptors and the rest) adds, beside what the engine costs behind any gRPC server.
    # The copy is written out before anything is timed or calibrated (as after the load).
    bare_dir = tmp / "data-scale-bare"
    shutil.copytree(data_dir, bare_dir, ignore=shutil.ignore_patterns("LOCK"))
    os.sync()
    floor = FloorServer(tmp)
    floor_client = FloorClient(floor.target)
    engine_floor = EngineFloorServer(tmp, bare_dir, _engine_options(args))
    engine_floor_client = AudienceClient(engine_floor.target, timeout=600)
    t0 = time.perf_counter()
    server = ServerProcess(data_dir, *serve_flags)
    client = AudienceClient(server.target, timeout=600)
    try:
        client.wait_ready(timeout=600)
        out["start_to_serving_s"] = time.perf_counter() - t0
        log(f"  restart to SERVING: {out['start_to_serving_s']:.1f}s")
        _timed_queries(client, warm)  # other seeds: a serving index is warm
        out["grpc_floor_roundtrip_ms"] = statistics.median(floor_client.latencies(0.0, 500))
        # gRPC and exact Flat in alternating rounds over the same minute, so that the
        # machine's drift (large here) weighs on both sides of the QPS ratio alike. Each
        # Flat scan streams 1.5 GB through the caches, so each gRPC round is preceded by
        # untimed queries (other seeds again), as a serving index is warm with its traffic.
        _timed_queries(engine_floor_client, warm)
        lat, results, flat_lat, floor_lat, round_ratios = [], [], [], [], []
        engine_floor_lat: list[float] = []
        for r, chunk in enumerate(np.array_split(np.arange(len(queries)), ROUNDS)):
            floor_lat += floor_client.latencies(out["inprocess_p50_ms"], len(chunk), ROUND_WARMUP)
            round_warm = [warm[(r * ROUND_WARMUP + j) % len(warm)] for j in range(ROUND_WARMUP)]
            _timed_queries(engine_floor_client, round_warm)
            engine_floor_lat += _timed_queries(engine_floor_client, [queries[i] for i in chunk])[0]
            _timed_queries(client, round_warm)
            lat_r, results_r = _timed_queries(client, [queries[i] for i in chunk])
            results += results_r  # the chunks run in query order
            flat_r = []
            for i in chunk:
                t1 = time.perf_counter()
                nn_exact.append(flat.search(qvecs[i][None, :], 120)[1][0])
                flat_r.append((time.perf_counter() - t1) * 1000)
            lat += lat_r
            flat_lat += flat_r
            round_ratios.append(sum(flat_r) / sum(lat_r))
        out["grpc_p50_ms"], out["grpc_p99_ms"] = _pct(lat, 50), _pct(lat, 99)
        out["grpc_floor_p50_ms"] = _pct(floor_lat, 50)
        out["grpc_vs_floor_p50"] = out["grpc_p50_ms"] / out["grpc_floor_p50_ms"]  # goal <= 1.1
        out["grpc_engine_floor_p50_ms"] = _pct(engine_floor_lat, 50)
        out["grpc_vs_engine_floor_p50"] = out["grpc_p50_ms"] / out["grpc_engine_floor_p50_ms"]
        out["qps_single"] = len(lat) / (sum(lat) / 1000)
        out["qps_exact_flat"] = len(flat_lat) / (sum(flat_lat) / 1000)
        out["exact_flat_p50_ms"] = _pct(flat_lat, 50)
        out["qps_ratio_by_round"] = round_ratios
        del flat
        # The same queries at other per-query search efforts (efSearch / nprobe).
        by_effort = {}
        for effort in args.efforts:
            qe = [replace(q, search_effort=effort) for q in queries]
            by_effort[effort] = _timed_queries(client, qe)
        out.update(_auto_latency(client, queries, rng, by_label, names, len(base), reps, ids))
        out["qps_8_clients"] = _concurrent_qps(server.target, queries * 2, 8)
        out["rss_bytes"], out["rss_peak_bytes"] = _rss(server.proc.pid)
    finally:
        client.close()
        server.stop()
        floor_client.close()
        floor.stop()
        engine_floor_client.close()
        engine_floor.stop()
        shutil.rmtree(bare_dir, ignore_errors=True)

    out.update(_metrics_cost(data_dir, serve_flags, warm, queries))

    recalls = []
    truths: list[list[int]] = []
    for s, nn, res in zip(seed_sets, nn_exact, results):
        seeds = set(s)
        truth = [int(i) for i in nn if int(i) not in seeds][:100]
        truths.append(truth)
        got = {int(u.user_id[1:]) for u in res.users}
        recalls.append(len(got & set(truth)) / len(truth))
    out["recall_at_100"] = statistics.mean(recalls)
    out["by_search_effort"] = {
        str(effort): {
            "grpc_p50_ms": _pct(lat_e, 50),
            "qps_single": len(lat_e) / (sum(lat_e) / 1000),
            "recall_at_100": statistics.mean(
                len({int(u.user_id[1:]) for u in res.users} & set(t)) / len(t)
                for res, t in zip(res_e, truths)
            ),
        }
        for effort, (lat_e, res_e) in by_effort.items()
    }

    return out


def bench_perf(args: argparse.Namespace) -> dict:
    if "--no-quiet-threads" not in args.serve_flag:
        quiet_thread_pools()  # the in-process engine runs with the server's thread pools
    if "--no-huge-pages" not in args.serve_flag:
        # The in-process engine and the exact baseline get the same memory as the server.
        reexec_with_huge_pages()
    out: dict = {"huge_pages": huge_pages_active()}
    users = DATASETS["stackoverflow"](args.data, 1)
    if args.ingest_users and args.ingest_users < len(users):
        users = random.Random(0).sample(users, args.ingest_users)
    texts = [t for u in users for t in u.texts]
    with tempfile.TemporaryDirectory(prefix="audience-perf-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_ingest:
            log(f"ingest through gRPC, default backend ({len(users):,} users), in rounds with")
            log(f"  plain SentenceTransformer.encode on the same {len(texts):,} titles ...")
            default = _ingest_and_precision(
                args, users, DEFAULT_BACKEND, tmp, plain_model(texts[:64])
            )
            base = default["vectors"]
            log("again with the torch fp32 backend (precision reference) ...")
            fp32 = _ingest_and_precision(args, users, "torch", tmp)
            out.update(
                {
                    "ingest_users": len(users),
                    "encoder_model": default["model"],
                    "ingest_users_per_s": default["users_per_s"],
                    "ingest_users_per_s_fp32": fp32["users_per_s"],
                    "encode_baseline_per_s": default["encode_per_s"],
                    "ingest_vs_encode": default["users_per_s"] / default["encode_per_s"],
                    "server_cpu_during_encode_s": default["server_cpu_during_encode_s"],
                    "encode_baseline_s": default["encode_s"],
                    "lookalike_precision_at_100": default["precision"],
                    "lookalike_precision_at_100_fp32": fp32["precision"],
                    "precision_ratio": default["precision"] / fp32["precision"],
                }
            )
        else:
            base = encode_baseline(texts, return_vectors=True)[1]
        if args.users:
            out.update(_scale(args, base, [u.label for u in users], tmp))
    _table(out)
    return out


def _table(out: dict) -> None:
    def row(name: str, value, base=None, fmt="{:>12.1f}") -> None:
        ratio = f"{value / base:>10.2f}x" if base else ""
        print(f"  {name:<46}{fmt.format(value)}{ratio}")

    print("\n== perf")
    if "ingest_users_per_s" in out:
        print(f"ingest ({out['ingest_users']:,} StackOverflow titles, {out['encoder_model']})")
        row("ingest through gRPC, users/s", out["ingest_users_per_s"], out["encode_baseline_per_s"])
        row(
            "ingest through gRPC, torch fp32 backend",
            out["ingest_users_per_s_fp32"],
            out["encode_baseline_per_s"],
        )
        row("plain SentenceTransformer.encode, texts/s", out["encode_baseline_per_s"])
        row(
            "idle server's CPU during plain encode, s",
            out["server_cpu_during_encode_s"],
            out["encode_baseline_s"],
            "{:>12.2f}",
        )
        row(
            "lookalike precision@100",
            out["lookalike_precision_at_100"],
            out["lookalike_precision_at_100_fp32"],
            "{:>12.3f}",
        )
        row(
            "lookalike precision@100, torch fp32",
            out["lookalike_precision_at_100_fp32"],
            fmt="{:>12.3f}",
        )
    if "users" in out:
        pages = "transparent huge pages" if out["huge_pages"] else "4 KiB pages"
        print(
            f"scale ({out['users']:,} users x {out['dimension']} dims, {out['index_type']}, "
            f"{pages})"
        )
        row("FindLookalikes p50 ms, gRPC", out["grpc_p50_ms"], out["inprocess_p50_ms"], "{:>12.2f}")
        row("FindLookalikes p99 ms, gRPC", out["grpc_p99_ms"], fmt="{:>12.2f}")
        row("same engine call in-process, p50 ms", out["inprocess_p50_ms"], fmt="{:>12.2f}")
        row(
            "  the same, 2 ms between calls, p50 ms",
            out["inprocess_paced_p50_ms"],
            out["inprocess_p50_ms"],
            "{:>12.2f}",
        )
        row("raw faiss index.search, p50 ms", out["raw_search_p50_ms"], fmt="{:>12.2f}")
        row(
            "bare gRPC server, call as long, p50 ms",
            out["grpc_floor_p50_ms"],
            out["inprocess_p50_ms"],
            "{:>12.2f}",
        )
        row("bare gRPC server, empty call, p50 ms", out["grpc_floor_roundtrip_ms"], fmt="{:>12.2f}")
        row(
            "FindLookalikes p50 / bare gRPC server's",
            out["grpc_vs_floor_p50"],
            fmt="{:>11.2f}x",
        )
        if "grpc_engine_floor_p50_ms" in out:
            row(
                "bare gRPC server around the engine, p50 ms",
                out["grpc_engine_floor_p50_ms"],
                out["inprocess_p50_ms"],
                "{:>12.2f}",
            )
            row("FindLookalikes p50 / that server's", out["grpc_vs_engine_floor_p50"],
                fmt="{:>11.2f}x")  # fmt: skip
        row("exact Flat search, p50 ms", out["exact_flat_p50_ms"], fmt="{:>12.2f}")
        if "auto_p50_ms" in out:
            row("strategy=auto p50 ms (20 seeds, 1 topic)", out["auto_p50_ms"],
                out["centroid_p50_ms"], "{:>12.2f}")  # fmt: skip
            row("centroid p50 ms, same seeds and rounds", out["centroid_p50_ms"], fmt="{:>12.2f}")
            row("strategy=auto p50 ms (10 + 10 seeds, 2 topics)", out["mixed_auto_p50_ms"],
                out["mixed_centroid_p50_ms"], "{:>12.2f}")  # fmt: skip
            row("centroid p50 ms, same seeds and rounds", out["mixed_centroid_p50_ms"],
                fmt="{:>12.2f}")  # fmt: skip
        row("recall@100 vs exact", out["recall_at_100"], fmt="{:>12.3f}")
        row("QPS, 1 gRPC client", out["qps_single"], out["qps_exact_flat"])
        for effort, e in out.get("by_search_effort", {}).items():
            row(f"  search_effort={effort}: recall@100", e["recall_at_100"], fmt="{:>12.3f}")
            row(
                f"  search_effort={effort}: QPS, 1 gRPC client",
                e["qps_single"],
                out["qps_exact_flat"],
            )
        row("QPS, exact Flat (in-process)", out["qps_exact_flat"])
        ratios = " ".join(f"{r:.1f}x" for r in out["qps_ratio_by_round"])
        print(f"  {'QPS 1 gRPC client / Flat, by round':<46}{ratios}")
        row("QPS, 8 gRPC clients", out["qps_8_clients"], out["qps_exact_flat"])
        gib = 1 << 30
        row("server RSS, GiB", out["rss_bytes"] / gib, out["raw_vector_bytes"] / gib, "{:>12.2f}")
        row("raw float32 vectors, GiB", out["raw_vector_bytes"] / gib, fmt="{:>12.2f}")
        row("ingest + index build, s", out["build_s"])
        row("restart to SERVING, s", out["start_to_serving_s"])
        if "metrics_on_p50_ms" in out:
            row(
                "FindLookalikes p50 ms, metrics on",
                out["metrics_on_p50_ms"],
                out["metrics_off_p50_ms"],
                "{:>12.2f}",
            )
            row("FindLookalikes p50 ms, metrics off", out["metrics_off_p50_ms"], fmt="{:>12.2f}")
            row(
                "  metrics on: server handler, mean ms",
                out["server_handler_mean_ms"],
                out["client_mean_ms_metrics_on"],
                "{:>12.2f}",
            )
            row("  metrics on: whole call (client), mean ms", out["client_mean_ms_metrics_on"],
                fmt="{:>12.2f}")  # fmt: skip
