#!/usr/bin/env python
"""Benchmarks (not tests): each prints a table and writes JSON, and measures its baseline in
the same run, since absolute numbers on a shared machine drift from run to run.

    python bench/run.py lookalike --data ../shared/data --json OUT.json [--dataset thucnews]

lookalike  Each user is a StackOverflow title / THUCNews headline / blogger (first posts).
           For each label (tag / topic / industry), 20 random seed users of that label ->
           FindLookalikes(k=100) over gRPC -> precision@100 (share of the label), for the
           default encoder and, after restarting the server with other settings, for the
           semantic channel alone and the lexical channel alone; beside the random baseline.
           Also ingest throughput end to end through gRPC (client -> server -> model ->
           SQLite -> FAISS) beside plain SentenceTransformer.encode on the same texts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import DATASETS, User  # noqa: E402
from _harness import ServerProcess, encode_baseline  # noqa: E402

from audience.client import AudienceClient, LookalikeQuery, Profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("AUDIENCE_DATA", ROOT.parent / "shared" / "data"))
# Attributes declared for the user vector per data set (never the label itself).
SCHEMAS = {"blogs": ["gender:categorical", "age:numeric:13:48"]}


def precision(
    client: AudienceClient,
    queries: list[LookalikeQuery],
    labels: list[str],
    label_of: dict[str, str],
    k: int,
) -> tuple[float, dict[str, float], float]:
    t0 = time.perf_counter()
    results = client.find_lookalikes_many(queries, concurrency=4)
    per_query_ms = (time.perf_counter() - t0) / len(queries) * 1000
    per_label = {
        lab: sum(label_of[u.user_id] == lab for u in res.users) / k
        for lab, res in zip(labels, results)
    }
    return sum(per_label.values()) / len(per_label), per_label, per_query_ms


def bench_lookalike(args: argparse.Namespace, dataset: str) -> dict:
    users: list[User] = DATASETS[dataset](args.data, args.max_texts)
    if args.users and args.users < len(users):
        users = random.Random(0).sample(users, args.users)
    label_of = {u.user_id: u.label for u in users}
    by_label: dict[str, list[str]] = {}
    for u in users:
        by_label.setdefault(u.label, []).append(u.user_id)
    labels = sorted(lab for lab, ids in by_label.items() if len(ids) > args.seeds)
    texts = [t for u in users for t in u.texts]
    log(f"{dataset}: {len(users)} users, {len(texts)} texts, {len(labels)} labels")

    log("baseline: plain SentenceTransformer.encode ...")
    baseline = encode_baseline(texts)

    rng = random.Random(args.seed)
    queries = [
        LookalikeQuery(seed_ids=rng.sample(by_label[lab], args.seeds), k=args.k) for lab in labels
    ]
    schema = [a for spec in SCHEMAS.get(dataset, []) for a in ("--attribute", spec)]
    out: dict = {
        "dataset": dataset,
        "users": len(users),
        "texts": len(texts),
        "labels": len(labels),
        "seeds_per_label": args.seeds,
        "k": args.k,
    }
    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with (
            ServerProcess(data_dir, *schema) as server,
            AudienceClient(server.target, timeout=600) as client,
        ):
            client.wait_ready(timeout=300)
            log("ingest through gRPC ...")
            t0 = time.perf_counter()
            client.upsert_users(
                (Profile(u.user_id, texts=u.texts, attributes=u.attributes) for u in users),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            ingest_s = time.perf_counter() - t0
            log("rebuild-index (fits the lexical channel) ...")
            rebuild = client.rebuild_index()
            stats = client.stats()
            default, per_label, query_ms = precision(client, queries, labels, label_of, args.k)
        modes = {"default": default}
        for mode, weight in (("semantic", "0"), ("lexical", "1")):
            log(f"restart with --lexical-weight {weight} ({mode} only) ...")
            with (
                ServerProcess(data_dir, "--lexical-weight", weight) as server,
                AudienceClient(server.target, timeout=600) as client,
            ):
                client.wait_ready(timeout=600)
                modes[mode] = precision(client, queries, labels, label_of, args.k)[0]

    random_p = sum(len(by_label[lab]) / len(users) for lab in labels) / len(labels)
    k = args.k
    out.update(
        {
            f"precision_at_{k}": default,
            f"precision_at_{k}_semantic": modes["semantic"],
            f"precision_at_{k}_lexical": modes["lexical"],
            f"random_precision_at_{k}": random_p,
            "per_label_precision": per_label,
            "lexical_weight": stats.lexical_weight,
            "ingest_users_per_s": len(users) / ingest_s,
            "ingest_texts_per_s": len(texts) / ingest_s,
            "encode_baseline_per_s": baseline,
            "ingest_vs_encode": len(texts) / ingest_s / baseline,
            "rebuild_s": rebuild.seconds,
            "mean_query_ms_4_concurrent": query_ms,
            "batch_size": args.batch_size,
        }
    )
    print(
        f"\n== lookalike on {dataset}: {len(users)} users, {len(labels)} labels, "
        f"{args.seeds} seeds per label, k={k}"
    )
    print(f"{'precision@' + str(k):<44}{'value':>10}{'x random':>10}")
    for name, value in (
        (f"default (lexical share {stats.lexical_weight:.1f})", default),
        ("semantic only", modes["semantic"]),
        ("lexical only", modes["lexical"]),
        ("random baseline", random_p),
    ):
        print(f"  {name:<42}{value:>10.3f}{value / random_p:>10.1f}")
    print(f"{'throughput':<44}{'value':>10}{'x base':>10}")
    print(
        f"  {'ingest through gRPC, texts/s':<42}{len(texts) / ingest_s:>10.1f}"
        f"{len(texts) / ingest_s / baseline:>10.2f}"
    )
    print(f"  {'ingest through gRPC, users/s':<42}{len(users) / ingest_s:>10.1f}")
    print(f"  {'SentenceTransformer.encode, texts/s':<42}{baseline:>10.1f}{1.0:>10.2f}")
    print(f"  {'mean FindLookalikes ms (4 concurrent)':<42}{query_ms:>10.1f}")
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="bench", required=True)
    lk = sub.add_parser("lookalike", help="precision@100 and ingest throughput")
    lk.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder with the data sets (env AUDIENCE_DATA; default ../shared/data)",
    )
    lk.add_argument(
        "--dataset",
        default="stackoverflow",
        help=f"comma-separated, of {','.join(DATASETS)} (default stackoverflow)",
    )
    lk.add_argument("--json", type=Path, help="write the results here")
    lk.add_argument("--users", type=int, help="use a random sample of this many users")
    lk.add_argument("--max-texts", type=int, default=2, help="texts per blogger (blogs)")
    lk.add_argument("--seeds", type=int, default=20, help="seed users per label")
    lk.add_argument("-k", type=int, default=100)
    lk.add_argument("--batch-size", type=int, default=256, help="users per UpsertUsers")
    lk.add_argument("--seed", type=int, default=1, help="random seed for the seed users")
    lk.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    names = [d.strip() for d in args.dataset.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        p.error(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")
    runs = {name: bench_lookalike(args, name) for name in names}
    # The first data set's figures also sit at the top level of the JSON.
    result = {
        **runs[names[0]],
        "datasets": runs,
        "bench": args.bench,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
