"""`bench/run.py scale`: scaling out, each figure beside its baseline in the same run.

1. Ingest: the StackOverflow titles (one user each) written to a TSV file, then
   `audience ingest` into a fresh server: locally (the server embeds; the baseline), and with
   Ray at 1 and 2 encoder workers (`ray_ingest`, the code behind `--engine ray`, over a local
   Ray started once: its start-up is reported apart). Texts/s for each; then lookalike
   precision@100 (20 seed users per tag) on the local and the Ray (2 workers) ingest, after
   the same rebuild-index on both.
2. Replicas: N users (default 1,000,000) with given vectors (the titles' embeddings
   replicated with noise, as `perf` does) loaded into a primary that publishes to a folder;
   a replica process polls it. `audience publish`, then the time until the replica serves
   that generation (replica_lag_s). Then FindLookalikes QPS with 8 concurrent clients against
   the primary alone and against primary + replica behind round_robin (one client object
   over both addresses), alternated twice so that drift weighs on both. This machine has
   2 CPUs: first with each server pinned to a CPU of its own (what a replica on a machine of
   its own gives; one server then has one CPU), then with both on every CPU (a second
   process on the same machine: `_shared`). The client threads run unpinned.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _data import DATASETS
from _harness import ServerProcess, log, spawn_listening
from _perf import _concurrent_qps, _replicate

from audience.client import AudienceClient, LookalikeQuery, Profile

ROUNDS = 2  # one server / with a replica, alternated


def _precision(client: AudienceClient, users, seeds: int, seed: int) -> float:
    by_label: dict[str, list[str]] = {}
    for u in users:
        by_label.setdefault(u.label, []).append(u.user_id)
    label_of = {u.user_id: u.label for u in users}
    rng = random.Random(seed)
    scores = []
    for lab in sorted(by_label):
        res = client.find_lookalikes(seed_ids=rng.sample(by_label[lab], seeds), k=100)
        scores.append(sum(label_of[u.user_id] == lab for u in res.users) / 100)
    return float(np.mean(scores))


def _ingest(args, users, tmp: Path) -> dict:
    from audience.server._ingest import ColumnMap
    from audience.server._ray_ingest import connect, ray_ingest

    tsv = tmp / "titles.tsv"
    tsv.write_text(
        "id\ttext\n" + "".join(f"{u.user_id}\t{u.texts[0]}\n" for u in users), encoding="utf-8"
    )
    texts = len(users)
    cols = ColumnMap("id", ("text",))
    out: dict = {"ingest_users": len(users)}
    precision = {}
    for run in ("local", "ray_1", "ray_2"):
        data_dir = tmp / f"data-{run}"
        with (
            ServerProcess(data_dir) as server,
            AudienceClient(server.target, timeout=3600) as client,
        ):
            client.wait_ready(timeout=600)
            log(f"ingest {texts:,} titles: {run} ...")
            if run == "local":
                t0 = time.perf_counter()
                cmd = [sys.executable, "-m", "audience.server", "ingest", str(tsv),
                       "--id-col", "id", "--text-col", "text", "--target", server.target,
                       "--no-progress", "--batch-size", "256"]  # fmt: skip
                subprocess.run(cmd, check=True, capture_output=True)
                out["local_texts_per_s"] = texts / (time.perf_counter() - t0)
            else:
                if "ray_startup_s" not in out:
                    t0 = time.perf_counter()
                    connect(None, num_cpus=args.ray_cpus)
                    out["ray_startup_s"] = time.perf_counter() - t0
                workers = int(run[-1])
                t0 = time.perf_counter()
                ray_ingest(client, [tsv], cols, workers=workers, batch_size=256, progress=False)
                out[f"ray_texts_per_s_{workers}"] = texts / (time.perf_counter() - t0)
            if run != "ray_1":
                client.rebuild_index()  # fits the lexical channel on both alike
                precision[run] = _precision(client, users, 20, args.seed)
    out["precision_local"] = precision["local"]
    out["precision_ray"] = precision["ray_2"]
    out["precision_diff"] = precision["ray_2"] - precision["local"]
    return out


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (all CPUs: unpinned)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def _qps_rounds(primary: int, replica: int, targets: tuple[str, str], queries) -> dict:
    """8-client QPS, one server vs primary + replica, alternated ROUNDS times, in two
    placements: each server pinned to a CPU of its own (a replica on another machine; one
    server then has one CPU), and both on every CPU (a second process on the same machine)."""
    everything = set(range(os.cpu_count() or 1))
    out: dict = {}
    placements = [("", {0}, {1})] if len(everything) >= 2 else []
    placements.append(("_shared", everything, everything))
    for suffix, p_cpus, r_cpus in placements:
        _pin(primary, p_cpus)
        _pin(replica, r_cpus)
        one, both = [], []
        for r in range(ROUNDS):
            log(f"  8 clients{suffix or ', a CPU per server'}, round {r + 1} of {ROUNDS}")
            one.append(_concurrent_qps(targets[0], queries, 8))
            both.append(_concurrent_qps(list(targets), queries, 8))
        out[f"qps_one_server{suffix}"] = float(np.mean(one))
        out[f"qps_with_replica{suffix}"] = float(np.mean(both))
        out[f"qps_rounds{suffix}"] = {"one_server": one, "with_replica": both}
    _pin(primary, everything)
    _pin(replica, everything)
    return out


def _replicas(args, base: np.ndarray, tmp: Path) -> dict:
    n = args.users
    vectors = _replicate(base, n, args.seed)
    ids = [f"u{i}" for i in range(n)]
    pub = tmp / "published"
    flags = ["--lexical-dim", "0", "--no-huge-pages"]
    out: dict = {"users": n}
    primary = ServerProcess(tmp / "primary", *flags, "--publish-to", str(pub))
    port_file = tmp / "replica-port"
    replica_log = open(tmp / "replica.log", "ab")
    replica, port = spawn_listening(
        [sys.executable, "-m", "audience.server", "serve", "--data-dir", str(tmp / "replica"),
         "--port", "0", "--port-file", str(port_file), "--replica-of", str(pub),
         "--primary", primary.target, "--poll-every", "1", "--no-huge-pages"],
        port_file, stdout=replica_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    r_target = f"127.0.0.1:{port}"
    try:
        with AudienceClient(primary.target, timeout=3600) as pc:
            pc.wait_ready(timeout=600)
            log(f"replicas: loading {n:,} users into the primary ...")
            t0 = time.perf_counter()
            pc.upsert_users(
                (Profile(ids[i], vector=vectors[i].tobytes()) for i in range(n)),
                batch_size=1000,
                progress=not args.quiet,
            )
            out["load_s"] = time.perf_counter() - t0
            log("publish ...")
            t0 = time.perf_counter()
            done = pc.publish()
            published = time.perf_counter()
            out["publish_s"] = published - t0
            out["published_bytes"] = done.bytes
            with AudienceClient(r_target, timeout=600) as rc:
                while True:
                    try:
                        rep = rc.stats().replication
                        if rep is not None and rep.generation == done.generation:
                            break
                    except Exception:  # noqa: BLE001 - NOT_SERVING / UNAVAILABLE until loaded
                        pass
                    if time.perf_counter() - published > 1800:
                        raise RuntimeError("the replica did not load the generation in 30 min")
                    time.sleep(0.2)
                out["replica_lag_s"] = time.perf_counter() - published
                log(f"  replica serves generation {done.generation} "
                    f"{out['replica_lag_s']:.1f}s after the publish")  # fmt: skip
            rng = random.Random(args.seed)
            queries = [
                LookalikeQuery(seed_ids=[ids[rng.randrange(n)] for _ in range(20)], k=100)
                for _ in range(args.queries)
            ]
            out.update(_qps_rounds(primary.proc.pid, replica.pid, (primary.target, r_target),
                                   queries))  # fmt: skip
    finally:
        primary.stop()
        replica.terminate()
        replica.wait(timeout=300)
        replica_log.close()
    return out


def bench_scale_out(args: argparse.Namespace) -> dict:
    users = DATASETS["stackoverflow"](args.data, 1)
    if args.ingest_users and args.ingest_users < len(users):
        users = random.Random(0).sample(users, args.ingest_users)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="audience-scale-") as name:
        tmp = Path(name)
        out.update(_ingest(args, users, tmp))
        if args.users:
            from audience.index import EngineConfig, make_embedder

            log("embedding the titles for the replica part ...")
            embedder = make_embedder(EngineConfig(data_dir=tmp / "data-local"))
            base = embedder.embed([u.texts[0] for u in users])
            out.update(_replicas(args, base, tmp))
    _table(out)
    return out


def _table(out: dict) -> None:
    print("\n== scale out")
    print(f"{'':<44}{'value':>12}{'x base':>10}")
    base = out["local_texts_per_s"]
    for name, key in (
        ("ingest, local (server embeds), texts/s", "local_texts_per_s"),
        ("ingest, Ray 1 worker, texts/s", "ray_texts_per_s_1"),
        ("ingest, Ray 2 workers, texts/s", "ray_texts_per_s_2"),
    ):
        print(f"  {name:<42}{out[key]:>12.1f}{out[key] / base:>10.2f}")
    print(f"  {'Ray start-up (once per cluster), s':<42}{out['ray_startup_s']:>12.1f}")
    print(f"  {'precision@100, local ingest':<42}{out['precision_local']:>12.3f}")
    print(f"  {'precision@100, Ray ingest':<42}{out['precision_ray']:>12.3f}")
    if "replica_lag_s" in out:
        print(f"replicas at {out['users']:,} users")
        print(f"  {'publish, s':<42}{out['publish_s']:>12.1f}")
        print(f"  {'replica serving it, s after the publish':<42}{out['replica_lag_s']:>12.1f}")
        for suffix, where in (("", "a CPU per server"), ("_shared", "sharing all CPUs")):
            if f"qps_one_server{suffix}" not in out:
                continue
            one, both = out[f"qps_one_server{suffix}"], out[f"qps_with_replica{suffix}"]
            print(f"  QPS, 8 clients, {where}")
            print(f"    {'one server':<40}{one:>12.1f}{1.0:>10.2f}")
            print(f"    {'primary + replica (round_robin)':<40}{both:>12.1f}{both / one:>10.2f}")
