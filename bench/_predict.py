"""bench/run.py predict: attributes learned from the users who have them, and zero-shot tags.

Blogs (one user per blogger, every post): gender, age band (13-17, 23-27, 33-48) and
industry (the 10 commonest). One random fifth of the bloggers is held out; for each target
and training size (200, 1000, all the rest) the training users carry the value as an
attribute of its own (`gender__200`, ...), so that one ingest serves every case: the server
fits each through FitPredictors and answers PredictAttributes for the held-out users, whose
profiles carry none of them. In the same run, on the same split: the majority baseline, and
plain logistic regression on the semantic channel alone (the sentence-transformer's pooled
vector, read back from the server), as the issue's reference.

StackOverflow titles: zero-shot tags with the 20 tag names, precision@1 (the top tag is the
title's own), ranked by the served score (z against a background sample) and by raw cosine,
beside the random baseline (1/20).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _data import DATASETS, User
from _harness import ServerProcess, log

from audience.client import AudienceClient, Profile

SIZES = ("200", "1000", "all")
TARGETS = ("gender", "age_band", "industry")
TOP_INDUSTRIES = 10
SEMANTIC_DIM = 384  # all-MiniLM-L6-v2: the first block of the user vector


def age_band(age: float) -> str | None:
    if 13 <= age <= 17:
        return "13-17"
    if 23 <= age <= 27:
        return "23-27"
    if 33 <= age <= 48:
        return "33-48"
    return None


def macro_f1(truth: list[str], answer: list[str]) -> float:
    f1 = []
    for c in sorted(set(truth)):
        tp = sum(t == c and a == c for t, a in zip(truth, answer))
        fp = sum(t != c and a == c for t, a in zip(truth, answer))
        fn = sum(t == c and a != c for t, a in zip(truth, answer))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1))


def scores(truth: list[str], answer: list[str]) -> dict[str, float]:
    accuracy = float(np.mean([t == a for t, a in zip(truth, answer)]))
    return {"accuracy": round(accuracy, 4), "macro_f1": round(macro_f1(truth, answer), 4)}


def bench_predict(args: Any) -> dict:
    out = _blogs(args)
    if not args.skip_tags:
        out["tags"] = _tags(args)
    print(table(out))
    return out


def table(out: dict) -> str:
    lines = [
        "target    train  majority acc/F1  semantic LR acc/F1  learned acc/F1  (method)",
    ]
    for target in TARGETS:
        for size in SIZES:
            row = out[target][size]
            cells = [
                f"{row[m]['accuracy']:.3f}/{row[m]['macro_f1']:.3f}" if m in row else "-"
                for m in ("majority", "semantic_lr", "learned")
            ]
            method = row.get("learned", {}).get("method", "not fitted")
            lines.append(
                f"{target:<9} {row['train_users']:>5}  {cells[0]:>15}  {cells[1]:>18}  "
                f"{cells[2]:>14}  ({method})"
            )
    if "tags" in out:
        t = out["tags"]
        lines.append(
            f"zero-shot tags, StackOverflow ({t['users']} titles, {len(t['tags'])} names): "
            f"precision@1 {t['precision_at_1']:.3f} "
            f"(raw cosine {t['precision_at_1_raw_cosine']:.3f}), "
            f"random {t['random_precision_at_1']:.3f}"
        )
    return "\n".join(lines)


def _blogs(args: Any) -> dict:
    from sklearn.linear_model import LogisticRegression

    users: list[User] = DATASETS["blogs"](args.data, args.max_texts)
    rng = random.Random(args.seed)
    truth: dict[str, dict[str, str]] = {t: {} for t in TARGETS}
    top = {i for i, _ in Counter(u.attributes["industry"] for u in users).most_common(10)}
    for u in users:
        truth["gender"][u.user_id] = u.attributes["gender"]
        band = age_band(u.attributes["age"])
        if band:
            truth["age_band"][u.user_id] = band
        if u.attributes["industry"] in top:
            truth["industry"][u.user_id] = u.attributes["industry"]
    ids = [u.user_id for u in users]
    held_out = set(rng.sample(ids, len(ids) // 5))
    train: dict[str, dict[str, list[str]]] = {}
    stored: dict[str, dict[str, str]] = {u: {} for u in ids}
    for target in TARGETS:
        pool = sorted(u for u in truth[target] if u not in held_out)
        rng.shuffle(pool)
        train[target] = {"200": pool[:200], "1000": pool[:1000], "all": pool}
        for size, chosen in train[target].items():
            for u in chosen:
                stored[u][f"{target}__{size}"] = truth[target][u]
    log(f"blogs: {len(users)} users ({args.max_texts} texts at most), {len(held_out)} held out")

    result: dict = {"users": len(users), "held_out": len(held_out), "max_texts": args.max_texts}
    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        with (
            ServerProcess(Path(tmp) / "data") as server,
            AudienceClient(server.target, timeout=3600) as client,
        ):
            client.wait_ready(timeout=300)
            log("ingest through gRPC ...")
            t0 = time.perf_counter()
            client.upsert_users(
                (Profile(u.user_id, texts=u.texts, attributes=stored[u.user_id]) for u in users),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            client.rebuild_index()
            result["ingest_s"] = round(time.perf_counter() - t0, 1)
            names = [f"{t}__{s}" for t in TARGETS for s in SIZES]
            log("fit predictors through the server ...")
            fit = client.fit_predictors(names)
            result["fit_s"] = fit.seconds
            result["skipped"] = list(fit.skipped)
            fitted = {p.attribute: p for p in fit.predictors}
            semantic = {}
            for uid in ids:
                v = np.frombuffer(client.get_user(uid, include_vector=True).vector, "<f4")
                s = v[:SEMANTIC_DIM]
                semantic[uid] = s / max(float(np.linalg.norm(s)), 1e-12)
            for target in TARGETS:
                test = sorted(u for u in truth[target] if u in held_out)
                gold = [truth[target][u] for u in test]
                result[target] = {}
                for size in SIZES:
                    name, chosen = f"{target}__{size}", train[target][size]
                    labels = [truth[target][u] for u in chosen]
                    majority = Counter(labels).most_common(1)[0][0]
                    lr = LogisticRegression(max_iter=2000).fit(
                        np.stack([semantic[u] for u in chosen]), labels
                    )
                    lr_answer = list(lr.predict(np.stack([semantic[u] for u in test])))
                    row: dict = {
                        "train_users": len(chosen),
                        "test_users": len(test),
                        "majority": scores(gold, [majority] * len(test)),
                        "semantic_lr": scores(gold, lr_answer),
                    }
                    if name in fitted:
                        answer = []
                        for at in range(0, len(test), 500):
                            found = client.predict_attributes(
                                test[at : at + 500], attributes=[name]
                            )
                            answer += [str(u.values[0].value) for u in found]
                        p = fitted[name]
                        row["learned"] = {
                            **scores(gold, answer),
                            "method": p.method,
                            "cv_macro_f1": p.macro_f1,
                            "cv_calibration_error": p.calibration_error,
                            "candidates": p.candidates,
                        }
                    result[target][size] = row
                    log(f"{target} {size}: {row}")
    return result


def _tags(args: Any) -> dict:
    users: list[User] = DATASETS["stackoverflow"](args.data, 1)
    if args.tag_users and args.tag_users < len(users):
        users = random.Random(args.seed).sample(users, args.tag_users)
    names = sorted({u.label for u in users})
    log(f"stackoverflow: {len(users)} titles, {len(names)} tag names")
    hits_z = hits_cos = 0
    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        with (
            ServerProcess(Path(tmp) / "data") as server,
            AudienceClient(server.target, timeout=3600) as client,
        ):
            client.wait_ready(timeout=300)
            client.upsert_users(
                (Profile(u.user_id, texts=u.texts) for u in users),
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            client.rebuild_index()
            label = {u.user_id: u.label for u in users}
            ids = list(label)
            t0 = time.perf_counter()
            for at in range(0, len(ids), 1000):
                found = client.predict_attributes(
                    ids[at : at + 1000], tags=names, max_tags=len(names), min_tag_score=-1e9
                )
                for u in found:
                    hits_z += u.tags[0].tag == label[u.user_id]
                    best = max(u.tags, key=lambda t: t.similarity)
                    hits_cos += best.tag == label[u.user_id]
            seconds = time.perf_counter() - t0
    return {
        "users": len(ids),
        "tags": names,
        "precision_at_1": round(hits_z / len(ids), 4),
        "precision_at_1_raw_cosine": round(hits_cos / len(ids), 4),
        "random_precision_at_1": round(1 / len(names), 4),
        "users_per_s": round(len(ids) / seconds, 1),
    }
