"""`audience predict` commands: fit a model per attribute (a job), list the fitted models
with their held-out quality, and predict attributes and interest tags for stored users and
for texts not stored."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from . import _cli_format as fmt
from ._cli_commands import _client
from ._cli_jobs import _started

Flags = Callable[[argparse.ArgumentParser], None]


def add_predict_commands(sub: Any, client_flags: Flags, job_flags: Flags) -> None:
    predict = sub.add_parser(
        "predict", help="attributes and interest tags predicted for users who never said"
    )
    psub = predict.add_subparsers(dest="predict_command", required=True)
    s = psub.add_parser("fit", help="fit a model per attribute on the users who have it")
    client_flags(s)
    s.add_argument(
        "attributes", nargs="*", help="attributes to fit (default: every one enough users have)"
    )
    job_flags(s)
    s.set_defaults(func=cmd_predict_fit)
    s = psub.add_parser("list", help="the fitted models and their held-out quality")
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict_list)
    s = psub.add_parser("users", help="predicted attributes (and tags) of users")
    client_flags(s)
    s.add_argument("user_ids", nargs="*", help="stored users")
    s.add_argument(
        "--text", action="append", default=[], help="a text of a user not stored (repeatable)"
    )
    s.add_argument(
        "--attribute", action="append", default=[], help="only these (default: every fitted)"
    )
    s.add_argument("--tags", help="zero-shot tags against these comma-separated names")
    s.add_argument(
        "--segment-tags", action="store_true", help="zero-shot tags against segment keywords"
    )
    s.add_argument("--max-tags", type=int, default=5)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict_users)


def cmd_predict_fit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _started(args, client, client.start_fit_predictors(args.attributes))


def cmd_predict_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.list_predictors()
    if args.json:
        print(json.dumps([asdict(p) for p in found]))
    elif not found:
        print("no models fitted yet: `audience predict fit` fits one per attribute")
    else:
        print("\n".join(predictor_rows(found)))
    return 0


def cmd_predict_users(args: argparse.Namespace) -> int:
    from audience.client import InvalidArgument, Profile, Text

    if not args.user_ids and not args.text:
        raise InvalidArgument("give user ids, or --text for a user not stored")
    profiles = [Profile(f"text-{i}", [Text(t)]) for i, t in enumerate(args.text, 1)]
    tags = [t.strip() for t in args.tags.split(",")] if args.tags else None
    if args.segment_tags:
        tags = []
    with _client(args) as client:
        found = client.predict_attributes(
            args.user_ids,
            profiles=profiles,
            attributes=args.attribute,
            tags=tags,
            max_tags=args.max_tags,
        )
    if args.json:
        print(json.dumps([asdict(u) for u in found], ensure_ascii=False))
        return 0
    for user in found:
        print("\n".join(prediction_card(user)))
    return 0


def predictor_rows(found: Sequence[Any]) -> list[str]:
    rows = []
    for p in found:
        if p.kind == "numeric":
            quality = f"MAE {p.mae:.3g} (median's {p.baseline_mae:.3g})"
        else:
            quality = (
                f"accuracy {p.accuracy:.2f} (majority {p.majority_accuracy:.2f}), "
                f"macro-F1 {p.macro_f1:.2f} (majority {p.majority_macro_f1:.2f}), "
                f"calibration error {p.calibration_error:.2f}"
            )
        fitted = datetime.fromtimestamp(p.fitted_at).strftime("%Y-%m-%d %H:%M")
        values = fmt.cut(", ".join(p.classes), 40) if p.classes else "a number"
        rows.append(
            (p.attribute, values, p.method, fmt.number(p.users), quality, p.version, fitted)
        )
    header = ["attribute", "values", "method", "fitted on", "held-out quality", "v", "fitted"]
    return fmt.table(header, rows)


def prediction_card(user: Any) -> list[str]:
    lines = [user.user_id]
    for v in user.values:
        stored = "" if v.stored is None else f"   (stored: {v.stored})"
        if v.alternatives:
            odds = ", ".join(f"{a} {p:.0%}" for a, p in v.alternatives)
            lines.append(f"  {v.attribute}: {v.value} ({v.confidence:.0%}; {odds}){stored}")
        else:
            lines.append(f"  {v.attribute}: {v.value:.4g} (± {v.error:.3g}){stored}")
    if user.tags:
        tags = ", ".join(f"{t.tag} ({t.score:+.1f} sd)" for t in user.tags)
        lines.append(f"  tags: {tags}")
    return lines
