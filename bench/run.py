#!/usr/bin/env python
"""Benchmarks (not tests): each prints a table and writes JSON, and measures its baseline in
the same run, since absolute numbers on a shared machine drift from run to run.

    python bench/run.py lookalike --data ../shared/data --json OUT.json [--dataset thucnews]
                                  [--mixed 1,2,3]
    python bench/run.py segments --data ../shared/data --json OUT.json [--scale 1000000]
    python bench/run.py perf --json OUT.json [--users 1000000]
    python bench/run.py scale --json OUT.json [--users 1000000]
    python bench/run.py predict --data ../shared/data --json OUT.json

perf       Ingest through gRPC with the default encoder backend vs plain
           SentenceTransformer.encode, and lookalike precision vs the torch fp32 backend;
           then N users with given vectors: FindLookalikes latency through gRPC vs the same
           engine call in-process vs raw faiss search, recall@100 vs exact search, QPS with 1
           and 8 clients vs exact Flat search, RSS vs the raw vector bytes, build time, and
           restart to SERVING (see bench/_perf.py).

scale      Ray batch ingest (1 and 2 workers) beside a local ingest, with lookalike precision
           on both; a primary publishing N users and a read replica: the time until the
           replica serves a publish, and 8-client QPS with and without it (bench/_scale.py).

predict    Blogs: gender, age band and industry (top 10) learned from 200, 1000 and all but
           a held-out fifth of the bloggers (FitPredictors, PredictAttributes), beside the
           majority baseline and logistic regression on the semantic channel alone;
           StackOverflow: zero-shot tags with the 20 tag names, precision@1 beside random
           (see bench/_predict.py).

segments   The same users, segmented by HDBSCAN (HDBSCAN decides how many; then with
           target_segments = the true number of labels), scored by NMI/ARI against the labels
           over all users (outliers as their own label), beside KMeans told the true k on the
           same user vectors; with --scale N also the clustering time for N replicated users.

lookalike  Each user is a StackOverflow title / THUCNews headline / blogger (first posts).
           For each label (tag / topic / industry), 20 random seed users of that label ->
           FindLookalikes(k=100) over gRPC -> precision@100 (share of the label), for the
           default encoder and, after restarting the server with other settings, for the
           semantic channel alone and the lexical channel alone; beside the random baseline.
           Also ingest throughput end to end through gRPC (client -> server -> model ->
           SQLite -> FAISS) beside plain SentenceTransformer.encode on the same texts.
           --mixed 1,2,3: seed lists of 1, 2, 3 labels, every strategy side by side:
           precision@k (in any seed label), balance (smallest seed label's count over the
           largest's), and the Pearson r across lists of the quality estimate (the
           audience's interest share) with the measured precision (`estimate_precision_r`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The client side opts in to grpc's poll-based socket I/O, as the README suggests for
# latency-sensitive callers (`audience serve` sets the same on its side); before grpc loads.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import DATASETS, User  # noqa: E402
from _harness import ServerProcess, encode_baseline, log  # noqa: E402
from _peers import SYSTEMS, bench_peers  # noqa: E402
from _perf import bench_perf  # noqa: E402
from _predict import bench_predict  # noqa: E402
from _scale import bench_scale_out  # noqa: E402

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
            if args.mixed:
                out["mixed"] = bench_mixed(client, args, by_label, labels, label_of)
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


STRATEGY_NAMES = ("centroid", "sum-scores", "best-score", "classifier", "multi-interest", "auto")


def bench_mixed(
    client: AudienceClient,
    args: argparse.Namespace,
    by_label: dict[str, list[str]],
    labels: list[str],
    label_of: dict[str, str],
) -> dict:
    """Seed lists drawn from 1, 2, 3 labels (20 seeds split evenly), every strategy on the
    same lists: precision@k (in any seed label), balance (the smallest seed label's share of
    the audience over the largest's), and how the quality estimate tracks precision: the
    audience's interest share (`estimate_precision_r`), and each other figure beside it."""
    import numpy as np

    rng = random.Random(args.seed + 7)
    out: dict = {}
    pooled: dict[str, list[float]] = {"precision": [], "interest_share": [], "interest_fit": [],
                                      "cohesion": [], "lift_at_1": [], "lift_at_5": [],
                                      "lift_at_10": [], "heldout_recall": []}  # fmt: skip
    for mix in args.mixed:
        lists = []
        for _ in range(args.lists):
            chosen = rng.sample(labels, mix)
            sizes = [args.seeds // mix + (i < args.seeds % mix) for i in range(mix)]
            lists.append((chosen, [u for lab, n in zip(chosen, sizes)
                                   for u in rng.sample(by_label[lab], n)]))  # fmt: skip
        row: dict = {}
        for strategy in STRATEGY_NAMES:
            queries = [
                LookalikeQuery(seed_ids=seeds, k=args.k, strategy=strategy, estimate_quality=True)
                for _, seeds in lists
            ]
            t0 = time.perf_counter()
            results = client.find_lookalikes_many(queries, concurrency=2)
            ms = (time.perf_counter() - t0) / len(queries) * 1000
            prec, bal, est, chosen_names = [], [], [], []
            for (chosen, _), res in zip(lists, results):
                counts = [sum(label_of[u.user_id] == lab for u in res.users) for lab in chosen]
                prec.append(sum(counts) / max(len(res.users), 1))
                bal.append(min(counts) / max(max(counts), 1))
                est.append(res.quality.interest_share)
                chosen_names.append(res.strategy)
                pooled["precision"].append(prec[-1])
                for key in list(pooled)[1:]:
                    pooled[key].append(getattr(res.quality, key))
            row[strategy] = {
                "precision": float(np.mean(prec)),
                "balance": float(np.mean(bal)) if mix > 1 else None,
                "estimate_precision_r": _pearson(prec, est),
                "mean_query_ms": ms,
                "per_list_precision": prec,
                "per_list_interest_share": est,
            }
            if strategy == "auto":
                row[strategy]["chose"] = {n: chosen_names.count(n) for n in set(chosen_names)}
            log(f"mix {mix} {strategy}: precision {np.mean(prec):.3f} balance {np.mean(bal):.3f}")
        out[str(mix)] = row
    # across every seed list and strategy of the run: does the estimate track precision?
    out["estimate_precision_r"] = _pearson(pooled["precision"], pooled["interest_share"])
    out["estimate_precision_r_by_estimate"] = {
        key: _pearson(pooled["precision"], pooled[key]) for key in pooled if key != "precision"
    }
    print(f"\n== strategies, {args.lists} seed lists per mix, {args.seeds} seeds, k={args.k}")
    print(f"{'mix':<5}{'strategy':<16}{'precision':>10}{'balance':>9}{'est. r':>8}{'ms':>8}")
    for mix, row in out.items():
        if not isinstance(row, dict) or mix.startswith("estimate"):
            continue
        for name, v in row.items():
            bal = "-" if v["balance"] is None else f"{v['balance']:.3f}"
            r = "-" if v["estimate_precision_r"] is None else f"{v['estimate_precision_r']:.2f}"
            print(
                f"{mix:<5}{name:<16}{v['precision']:>10.3f}{bal:>9}{r:>8}{v['mean_query_ms']:>8.1f}"
            )
    by = out["estimate_precision_r_by_estimate"]
    print("quality estimate vs precision, Pearson r over every list and strategy: "
          + ", ".join(f"{k} {v:.2f}" for k, v in by.items() if v is not None))  # fmt: skip
    return out


def _pearson(a: list[float], b: list[float]) -> float | None:
    import numpy as np

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def bench_segments(args: argparse.Namespace, dataset: str) -> dict:
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    users: list[User] = DATASETS[dataset](args.data, args.max_texts)
    if args.users and args.users < len(users):
        users = random.Random(0).sample(users, args.users)
    ids = [u.user_id for u in users]
    truth = [u.label for u in users]
    k_true = len(set(truth))
    log(f"{dataset}: {len(users)} users, {k_true} labels")
    schema = [a for spec in SCHEMAS.get(dataset, []) for a in ("--attribute", spec)]
    out: dict = {"dataset": dataset, "users": len(users), "labels": k_true}

    def labels_of(client: AudienceClient) -> list[str]:
        return labels_by_segment(client, ids)

    def scores(pred: list[str]) -> dict:
        return {
            "nmi": normalized_mutual_info_score(truth, pred),
            "ari": adjusted_rand_score(truth, pred),
        }

    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        with (
            ServerProcess(Path(tmp) / "data", *schema) as server,
            AudienceClient(server.target, timeout=3600) as client,
        ):
            client.wait_ready(timeout=300)
            log("ingest through gRPC ...")
            client.upsert_users(
                (Profile(u.user_id, texts=u.texts, attributes=u.attributes) for u in users),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            client.rebuild_index()
            vectors = np.stack(
                [
                    np.frombuffer(client.get_user(uid, include_vector=True).vector, "<f4")
                    for uid in ids
                ]
            )
            # The baseline clusters what the build clusters: the text channels of the stored
            # vectors, each row normalised again (attributes describe segments, they do not
            # make them). Where attributes are declared, k-means on the whole stored vectors
            # is reported beside it.
            from audience.index._segments import used_dims  # the build's own selection

            clustered = used_dims(vectors, client.stats().text_dimension)
            log(f"baseline: KMeans with the true k={k_true} ...")
            t0 = time.perf_counter()
            km = KMeans(k_true, n_init=3, random_state=0).fit_predict(clustered)
            out["kmeans_true_k"] = {
                **scores([str(x) for x in km]),
                "seconds": time.perf_counter() - t0,
                "dimensions": int(clustered.shape[1]),
            }
            if clustered is not vectors:
                whole = KMeans(k_true, n_init=3, random_state=0).fit_predict(vectors)
                out["kmeans_true_k_stored_vectors"] = {
                    **scores([str(x) for x in whole]),
                    "dimensions": int(vectors.shape[1]),
                }
            log("build segments (HDBSCAN decides) ...")
            build = client.build_segments()
            pred = labels_of(client)
            out.update(scores(pred))
            out.update(
                {
                    "segments": build.segments,
                    "outlier_share": build.outlier_share,
                    "build_s": build.seconds,
                }
            )
            segments = client.list_segments()
            out["segment_profiles"] = [
                {
                    "segment_id": s.segment_id,
                    "size": s.size,
                    "keywords": s.keywords[:8],
                    "attributes": {name: _brief(p) for name, p in s.attribute_profile.items()},
                }
                for s in segments
            ]
            # AssignSegments on the users of the build agrees with their built labels?
            rng = random.Random(args.seed)
            sample = rng.sample(range(len(users)), min(2000, len(users)))
            assigned = []
            for start in range(0, len(sample), 500):
                chunk = [users[i] for i in sample[start : start + 500]]
                assigned += client.assign_segments(
                    [
                        Profile("assign-" + u.user_id, texts=u.texts, attributes=u.attributes)
                        for u in chunk
                    ]
                )
            agree = [a.segment_id or "outlier" for a in assigned]
            out["reassign_agreement"] = sum(x == pred[i] for x, i in zip(agree, sample)) / len(
                sample
            )
            tree = client.segment_tree()
            level = tree_level(tree, k_true)
            leaves = leaf_labels(client, tree, ids)
            out["nmi_tree_true_k"] = scores([level.get(s, s) for s in leaves])["nmi"]
            out["tree_groups"] = len(tree.groups)
            out["tree_parts"] = len(tree.parts)
            out["tree_level_nodes"] = len(set(level.values()))
            out["keyword_noise_rate"] = noise_rate([s.keywords[:10] for s in tree.segments])
            out["markup_keywords"] = sorted(
                {w for s in tree.segments for w in s.keywords[:10] if MARKUP.search(w)}
            )
            out["segment_names"] = [s.name for s in tree.segments]
            out["top_level"] = [
                {"segment_id": t.segment_id, "size": t.size, "name": t.name}
                for t in tree.top_level()
            ]
            log(f"build segments (target_segments={k_true}) ...")
            target = client.build_segments(target_segments=k_true)
            tk = scores(labels_of(client))
            out.update(
                {
                    "nmi_target_k": tk["nmi"],
                    "ari_target_k": tk["ari"],
                    "segments_target_k": target.segments,
                    "outlier_share_target_k": target.outlier_share,
                    "build_target_k_s": target.seconds,
                    "method_target_k": target.method,
                    "method_reason_target_k": target.method_reason,
                }
            )
            out["methods"] = {}
            for method in args.methods:
                log(f"build segments (target_segments={k_true}, method={method}) ...")
                forced = client.build_segments(target_segments=k_true, method=method)
                out["methods"][method] = {
                    **scores(labels_of(client)),
                    "segments": forced.segments,
                    "build_s": forced.seconds,
                }
    if args.scale and not getattr(args, "_scaled", False):  # once, on the first data set
        args._scaled = True
        out["scale"] = bench_scale(vectors, args.scale)

    km = out["kmeans_true_k"]
    print(
        f"\n== segments on {dataset}: {len(users)} users, {k_true} true labels "
        "(NMI/ARI over all users, outliers as their own label)"
    )
    print(f"{'method':<44}{'NMI':>8}{'ARI':>8}{'segs':>6}{'outl.':>8}{'secs':>8}")
    print(
        f"  {'KMeans, told the true k (baseline)':<42}{km['nmi']:>8.3f}{km['ari']:>8.3f}"
        f"{k_true:>6}{0.0:>8.3f}{km['seconds']:>8.1f}"
    )
    if "kmeans_true_k_stored_vectors" in out:
        whole = out["kmeans_true_k_stored_vectors"]
        print(
            f"  {'KMeans, true k, stored vectors + attributes':<42}{whole['nmi']:>8.3f}"
            f"{whole['ari']:>8.3f}{k_true:>6}"
        )
    print(
        f"  {'Audience, HDBSCAN decides':<42}{out['nmi']:>8.3f}{out['ari']:>8.3f}"
        f"{out['segments']:>6}{out['outlier_share']:>8.3f}{out['build_s']:>8.1f}"
    )
    print(
        f"  {'Audience, target_segments=' + str(k_true):<42}{out['nmi_target_k']:>8.3f}"
        f"{out['ari_target_k']:>8.3f}{out['segments_target_k']:>6}"
        f"{out['outlier_share_target_k']:>8.3f}{out['build_target_k_s']:>8.1f}"
    )
    for method, m in out["methods"].items():
        print(
            f"  {'Audience, target_segments=' + str(k_true) + ', ' + method:<42}{m['nmi']:>8.3f}"
            f"{m['ari']:>8.3f}{m['segments']:>6}{'':>8}{m['build_s']:>8.1f}"
        )
    print(
        f"  {'tree level with ' + str(out['tree_level_nodes']) + ' nodes (free build)':<42}"
        f"{out['nmi_tree_true_k']:>8.3f}"
    )
    print(f"  target_segments chose {out['method_target_k']}: {out['method_reason_target_k']}")
    print(
        f"  keyword noise rate {out['keyword_noise_rate']:.3f} (share of top-10 keywords in the "
        f"top 10 of over half the segments); markup keywords: {out['markup_keywords'] or 'none'}"
    )
    print(f"  top level: {', '.join(t['name'] or t['segment_id'] for t in out['top_level'])}")
    print(
        f"  AssignSegments agrees with the build for {100 * out['reassign_agreement']:.1f}% "
        "of a 2,000-user sample"
    )
    if "scale" in out:
        sc = out["scale"]
        print(
            f"  scale: {sc['users']} users clustered in {sc['seconds']:.1f}s "
            f"({sc['segments']} segments, {100 * sc['outlier_share']:.1f}% outliers)"
        )
    return out


MARKUP = re.compile(r"^(nbsp|amp|quot|lt|gt|urllink|http|https|www|com|html|href)$")


def tree_level(tree, k: int) -> dict[str, str]:
    """leaf id (a segment not split, or a leaf part) -> the node holding it at the tree's
    level with k nodes (`SegmentTree.level`: nodes split in their split order)."""
    children = {s.segment_id: s.children for s in tree.nodes() if s.children}
    out = {}
    for node in tree.level(k):
        todo = [node.segment_id]
        while todo:
            n = todo.pop()
            if n in children:
                todo += children[n]
            else:
                out[n] = node.segment_id
    return out


def leaf_labels(client: AudienceClient, tree, ids: list[str]) -> list[str]:
    """Each user's finest node: its leaf part, or its segment where that is not split."""
    leaf_of = {}
    for node in [*tree.segments, *tree.parts]:
        if not node.children:
            for u in client.stream_segment_members(node.segment_id):
                leaf_of[u.user_id] = node.segment_id
    return [leaf_of.get(uid, "outlier") for uid in ids]


def labels_by_segment(client: AudienceClient, ids: list[str]) -> list[str]:
    seg_of = {}
    for seg in client.list_segments():
        for u in client.stream_segment_members(seg.segment_id):
            seg_of[u.user_id] = seg.segment_id
    return [seg_of.get(uid, "outlier") for uid in ids]


def noise_rate(keyword_lists: list[list[str]]) -> float:
    """Share of top-10 keywords that are in the top 10 of more than half of the segments."""
    from collections import Counter

    seen = Counter(w for kws in keyword_lists for w in set(kws))
    common = {w for w, n in seen.items() if n > len(keyword_lists) / 2}
    total = sum(len(kws) for kws in keyword_lists)
    return sum(w in common for kws in keyword_lists for w in kws) / total if total else 0.0


def _brief(profile: dict) -> dict:
    """The gist of one attribute's profile for the bench JSON."""
    if profile.get("type") == "numeric":
        return {k: profile.get(k) for k in ("median", "q1", "q3", "population_median")}
    return {v["value"]: v["share"] for v in profile.get("values", [])[:4]}


def bench_scale(vectors, n: int) -> dict:
    """Segment `n` users whose vectors replicate the benchmark's (with small noise): the
    clustering stage alone, in process (fit on the sample, assign the rest)."""
    import numpy as np

    from audience.index import SegmentBuilder, SegmentParams

    rng = np.random.default_rng(0)
    big = np.empty((n, vectors.shape[1]), np.float32)
    for start in range(0, n, 100_000):
        rows = rng.integers(0, len(vectors), size=min(100_000, n - start))
        part = vectors[rows] + rng.normal(0, 0.02, (len(rows), vectors.shape[1])).astype(np.float32)
        big[start : start + len(rows)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    log(f"scale: clustering {n} users ...")
    t0 = time.perf_counter()
    c = SegmentBuilder(SegmentParams()).cluster(big)
    seconds = time.perf_counter() - t0
    return {
        "users": n,
        "seconds": seconds,
        "segments": int(c.labels.max() + 1),
        "outlier_share": float((c.labels < 0).mean()),
        "timings": c.timings,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="bench", required=True)

    def data_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--data",
            type=Path,
            default=DEFAULT_DATA,
            help="folder with the data sets (env AUDIENCE_DATA; default ../shared/data)",
        )

    lk = sub.add_parser("lookalike", help="precision@100 and ingest throughput")
    data_flag(lk)
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
    lk.add_argument(
        "--mixed",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="also seed lists drawn from this many labels, every strategy: e.g. 1,2,3",
    )
    lk.add_argument("--lists", type=int, default=30, help="seed lists per mix (--mixed)")
    sg = sub.add_parser("segments", help="HDBSCAN segments vs KMeans told the true k")
    data_flag(sg)
    sg.add_argument(
        "--dataset",
        default="stackoverflow,blogs",
        help=f"comma-separated, of {','.join(DATASETS)} (default stackoverflow,blogs)",
    )
    sg.add_argument("--json", type=Path, help="write the results here")
    sg.add_argument("--users", type=int, help="use a random sample of this many users")
    sg.add_argument("--max-texts", type=int, default=2, help="texts per blogger (blogs)")
    sg.add_argument("--batch-size", type=int, default=256, help="users per UpsertUsers")
    sg.add_argument(
        "--scale",
        type=int,
        default=0,
        help="also time the clustering of this many replicated users (e.g. 1000000)",
    )
    sg.add_argument(
        "--methods",
        type=lambda v: [x for x in v.split(",") if x],
        default=["kmeans", "umap-kmeans", "tree"],
        help="also build with target_segments = the true k and each of these methods forced",
    )
    sg.add_argument("--seed", type=int, default=1)
    sg.add_argument("--quiet", action="store_true")
    pf = sub.add_parser("perf", help="encoder and index performance at scale")
    data_flag(pf)
    pf.add_argument("--json", type=Path, help="write the results here")
    pf.add_argument(
        "--users", type=int, default=1_000_000, help="users at scale (0 = skip; 1000000)"
    )
    pf.add_argument("--ingest-users", type=int, help="StackOverflow titles to ingest (all 20,000)")
    pf.add_argument("--skip-ingest", action="store_true", help="only the scale part")
    pf.add_argument("--queries", type=int, default=300, help="lookalike queries at scale")
    pf.add_argument("--batch-size", type=int, default=256, help="users per UpsertUsers")
    pf.add_argument(
        "--serve-flag",
        action="append",
        default=[],
        help="extra `audience serve` flag at scale, e.g. --serve-flag=--index-kind=ivf-pq",
    )
    pf.add_argument(
        "--efforts",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="also measure these per-query search efforts, e.g. 256,512",
    )
    pf.add_argument("--seed", type=int, default=1)
    pf.add_argument("--quiet", action="store_true")
    pr = sub.add_parser("predict", help="learned attributes (blogs) and zero-shot tags (SO)")
    data_flag(pr)
    pr.add_argument("--json", type=Path, help="write the results here")
    pr.add_argument("--max-texts", type=int, default=6, help="posts per blogger (all: 6)")
    pr.add_argument("--tag-users", type=int, help="StackOverflow titles for the tags (20,000)")
    pr.add_argument("--skip-tags", action="store_true", help="only the blogs part")
    pr.add_argument("--batch-size", type=int, default=256, help="users per UpsertUsers")
    pr.add_argument("--seed", type=int, default=1)
    pr.add_argument("--quiet", action="store_true")
    pe = sub.add_parser("peers", help="Audience beside Milvus Lite, Chroma, LanceDB, FAISS")
    data_flag(pe)
    pe.add_argument("--json", type=Path, help="write the results here")
    pe.add_argument(
        "--users", type=int, default=1_000_000, help="users (default 1000000; 200000 is quick)"
    )
    pe.add_argument("--queries", type=int, default=1000, help="timed lookalike queries")
    pe.add_argument(
        "--systems",
        type=lambda v: [x for x in v.split(",") if x],
        default=SYSTEMS,
        help=f"comma-separated, of {','.join(SYSTEMS)},audience_sq8 (default: all but the last)",
    )
    pe.add_argument("--serve-flag", action="append", default=[], help="extra `audience serve` flag")
    pe.add_argument("--work-dir", type=Path, help="where the systems' data go (default: $TMPDIR)")
    pe.add_argument("--seed", type=int, default=1)
    pe.add_argument("--quiet", action="store_true")
    sc = sub.add_parser("scale", help="Ray ingest and read replicas, beside one server")
    data_flag(sc)
    sc.add_argument("--json", type=Path, help="write the results here")
    sc.add_argument(
        "--users", type=int, default=1_000_000, help="users for the replica part (0 = skip)"
    )
    sc.add_argument("--ingest-users", type=int, help="StackOverflow titles to ingest (all 20,000)")
    sc.add_argument("--queries", type=int, default=400, help="lookalike queries per QPS round")
    sc.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray (default: all)")
    sc.add_argument("--seed", type=int, default=1)
    sc.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    if args.bench in ("perf", "scale", "predict", "peers"):
        run = {
            "perf": bench_perf,
            "scale": bench_scale_out,
            "predict": bench_predict,
            "peers": bench_peers,
        }[args.bench]
        result = {
            **run(args),
            "bench": args.bench,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cpu_count": os.cpu_count(),
        }
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            log(f"wrote {args.json}")
        return 0
    names = [d.strip() for d in args.dataset.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        p.error(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")
    bench = bench_lookalike if args.bench == "lookalike" else bench_segments
    runs = {name: bench(args, name) for name in names}
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
