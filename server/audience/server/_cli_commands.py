"""The `audience` commands: each takes the parsed arguments and returns an exit status.
Client and server load inside the commands that use them (see _cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import _cli_format as fmt
from ._config import ROLES, hash_token, load_config

if TYPE_CHECKING:
    from audience.client import AudienceClient

log = logging.getLogger("audience.server")


def _client(args: argparse.Namespace) -> AudienceClient:
    from audience.client import AudienceClient

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return AudienceClient(
        args.target,
        timeout=args.timeout,
        token=args.token,
        root_certificates=read(args.tls_ca),
        certificate_chain=read(args.tls_cert),
        private_key=read(args.tls_key),
    )


# ---------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from . import _process

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from disk, never from a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # `segments build --engine ray` may start a local Ray in this process: a busy machine
    # can take over Ray's default 30 s to start its GCS.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    config = load_config(
        args.config,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        model=args.model,
        encoder_backend=args.encoder_backend,
        index_kind=args.index_kind,
        ann_threshold=args.ann_threshold,
        hnsw_ef_search=args.ef_search,
        attributes=args.attribute or None,
        attribute_weight=args.attribute_weight,
        recency_half_life_days=args.recency_half_life_days,
        sentiment=args.sentiment,
        lexical_weight=args.lexical_weight,
        lexical_dim=args.lexical_dim,
        max_workers=args.max_workers,
        tokens=_tokens(args.token, args.tokens_file),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        huge_pages=args.huge_pages,
        grpc_poll_io=args.grpc_poll_io,
        quiet_threads=args.quiet_threads,
        publish_to=args.publish_to,
        publish_every_s=args.publish_every_s,
        publish_keep=args.publish_keep,
        replica_of=args.replica_of,
        primary=args.primary,
        poll_s=args.poll_s,
        max_lag_s=args.max_lag_s,
        ray_address=args.ray_address or os.environ.get("RAY_ADDRESS") or None,
    )
    _process.apply(
        _process.ProcessSettings(
            config.huge_pages, config.grpc_poll_io, quiet_threads=config.quiet_threads
        )
    )
    from ._app import serve  # grpc, faiss and the model load from here on

    serve(config)
    return 0


def _tokens(
    flags: list[str] | None, tokens_file: Path | None
) -> tuple[tuple[str, str], ...] | None:
    """--token ROLE:TOKEN (hashed here) and --tokens-file (JSON: [{"sha256", "role"}])."""
    out = []
    for flag in flags or ():
        role, sep, token = flag.partition(":")
        if not sep or role not in ROLES or not token:
            raise ValueError(f"--token wants ROLE:TOKEN with ROLE one of {ROLES}")
        out.append((hash_token(token), role))
    if tokens_file:
        out += [(t["sha256"], t["role"]) for t in json.loads(Path(tokens_file).read_text())]
    return tuple(out) or None


def cmd_hash_token(args: argparse.Namespace) -> int:
    print(hash_token(args.token))
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    """Export the model for an ONNX backend into the data dir, or verify the export there."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from audience.index import DEFAULT_MODEL
    from audience.index._encode._onnx import ensure_export, export_dir
    from audience.index._encode._onnx_export import QuantizerNoise, export_onnx

    for handler in logging.getLogger().handlers:  # the quantizer logs a line per tensor
        handler.addFilter(QuantizerNoise())
    model = args.model or DEFAULT_MODEL
    target = export_dir(Path(args.data_dir) / "models", model, args.backend)
    problem, manifest = ensure_export(
        model, args.backend, target, force=args.force, export=export_onnx
    )
    print(f"{'verified' if problem is None else 'exported'} {target / 'model.onnx'}")
    print(f"sha256 {manifest['sha256']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check every stored user of a data dir (no server may run on it); --repair recomputes
    damaged vectors from the stored texts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from audience.index._check import check_data_dir

    config = load_config(
        args.config,
        data_dir=args.data_dir,
        model=args.model,
        encoder_backend=args.encoder_backend,
        lexical_weight=args.lexical_weight,
        lexical_dim=args.lexical_dim,
    )
    report = check_data_dir(config.engine, repair=args.repair)
    for line in report.lines():
        print(line)
    print(f"checked in {report.seconds:.1f}s")
    healthy = report.structure is None and (
        not report.damaged or (args.repair and not report.unrepairable)
    )
    return 0 if healthy else 1


def cmd_restore(args: argparse.Namespace) -> int:
    from audience.index._backup import MANIFEST, restore_backup
    from audience.index._erasure import restore_snapshot

    if not (args.source / MANIFEST).exists():  # a snapshot (`audience snapshot`)
        copied = restore_snapshot(args.source, args.data_dir, live=args.erasures_from)
        print(
            f"restored {args.source} into {args.data_dir}, with {copied} recorded erasures "
            "(applied when a server opens it)"
        )
        return 0
    done = restore_backup(args.source, args.data_dir, live=args.erasures_from)
    print(
        f"verified and restored {done.files} files ({done.bytes / 1e6:,.1f} MB) into "
        f"{args.data_dir}"
    )
    if done.erasures_from:
        print(
            f"{done.erasures} erasures recorded in {done.erasures_from} came along; a server "
            "opening the copy applies those made after the backup"
        )
    else:
        print(
            "warning: no erasure record found (the source data dir is gone?): users erased "
            "since the backup are not known; pass --erasures-from DATA_DIR",
            file=sys.stderr,
        )
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with _client(args) as client:
        done = client.backup(str(out if out.is_absolute() else out.absolute()))
    print(
        f"backup of generation {done.generation} (sequence {done.sequence}): {done.files} "
        f"files, {done.bytes / 1e6:,.1f} MB at {done.path} in {done.seconds:.1f}s"
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.publish()
    if args.json:
        print(json.dumps(asdict(done)))
    else:
        print(
            f"published generation {done.generation}: {done.users:,} users, "
            f"{done.bytes / 1e6:,.1f} MB in {done.seconds:.1f}s -> {done.path}"
        )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ._ingest import ColumnMap, group_profiles, input_files, read_rows

    cols = ColumnMap(
        id_col=args.id_col,
        text_cols=tuple(args.text_col or ()),
        attr_cols=tuple(ColumnMap.parse_attr(a) for a in args.attr or ()),
        time_col=args.time_col,
        time_format=args.time_format,
        weight_col=args.weight_col,
    )
    files = input_files(args.paths)
    if args.engine == "ray":
        return _ingest_on_ray(args, cols, files)
    t0 = time.perf_counter()
    rows = (row for path in files for row in read_rows(path, args.format, args.delimiter))
    profiles, report = group_profiles(rows, cols, max_texts_per_user=args.max_texts_per_user)
    for line in report.lines(args.time_format):
        print(line, file=sys.stderr)
    print(f"(read in {time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    if args.limit_users:
        profiles = profiles[: args.limit_users]
    t1 = time.perf_counter()
    with _client(args) as client:
        client.wait_ready(timeout=args.wait)
        result = client.upsert_users(
            profiles, batch_size=args.batch_size, progress=not args.no_progress
        )
    _print_upserted(result, time.perf_counter() - t1)
    return 0


def _ingest_on_ray(args: argparse.Namespace, cols, files: list[Path]) -> int:
    from ._ray_ingest import connect, describe_cluster, ray_ingest

    if args.limit_users:
        raise SystemExit("ingest: --limit-users is for the local engine")
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    # A local Ray on a busy machine can take over Ray's default 30 s to start its GCS.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    t0 = time.perf_counter()
    with _client(args) as client:
        client.wait_ready(timeout=args.wait)
        try:
            connect(address)
        except (RuntimeError, ConnectionError, ValueError) as exc:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray"
            raise SystemExit(f"ingest: could not {where}: {exc}") from None
        print(describe_cluster(), file=sys.stderr)
        result, report = ray_ingest(
            client,
            files,
            cols,
            fmt=args.format,
            delimiter=args.delimiter,
            max_texts_per_user=args.max_texts_per_user,
            address=address,
            workers=args.workers,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    for line in report.lines(args.time_format):
        print(line, file=sys.stderr)
    _print_upserted(result, time.perf_counter() - t0)
    return 0


def _print_upserted(result, seconds: float) -> None:
    print(
        f"upserted {result.upserted} users in {seconds:.1f}s "
        f"({result.upserted / max(seconds, 1e-9):.1f} users/s), sequence {result.sequence}"
    )


def lookalike_query(args: argparse.Namespace, include_attributes: Sequence[str] = ()):
    """The LookalikeQuery of the lookalike flags (shared by `lookalike` and `export`)."""
    from audience.client import Filter, LookalikeQuery

    if not args.seed and not args.seed_text:
        raise SystemExit(f"{args.command}: give at least one --seed USER_ID or --seed-text TEXT")
    return LookalikeQuery(
        seed_ids=args.seed or (),
        seed_texts=args.seed_text or (),
        k=args.k if args.fraction is None else None,
        fraction=args.fraction,
        filters=[Filter.parse(f) for f in args.filter or ()],
        negative_ids=args.negative or (),
        exclude_ids=args.exclude or (),
        include_seeds=args.include_seeds,
        min_score=args.min_score,
        segment_ids=args.segment or (),
        exclude_segment_ids=args.exclude_segment or (),
        search_effort=args.search_effort,
        exact=args.exact,
        include_attributes=include_attributes,
        strategy=args.strategy,
        estimate_quality=getattr(args, "quality", False),
        explain=getattr(args, "explain", False),
    )


def names(spec: str | None) -> list[str]:
    """`age, gender` -> ["age", "gender"]."""
    return [a.strip() for a in (spec or "").split(",") if a.strip()]


def cmd_lookalike(args: argparse.Namespace) -> int:
    shown = names(args.show)
    query = lookalike_query(args, shown)
    with _client(args) as client:
        result = client.find_lookalikes(query)
    attrs = {u.user_id: u.attributes or {} for u in result.users}
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        users = [
            {"user_id": u.user_id, "score": u.score}
            | ({"attributes": attrs[u.user_id]} if shown else {})
            | ({"closest_seed": u.closest_seed} if args.explain else {})
            for u in result.users
        ]
        doc = {
            "eligible": result.eligible,
            "strategy": result.strategy,
            "users": users,
            "warnings": list(result.warnings),
            "quality": asdict(result.quality) if result.quality else None,
            "diagnostics": asdict(result.diagnostics) if result.diagnostics else None,
        }
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    if result.diagnostics is not None:
        print("\n".join(fmt.diagnostics(result.diagnostics)), end="\n\n")
    strategy = f" ({result.strategy})" if result.strategy != "centroid" else ""
    print(f"{len(result.users)} of {result.eligible:,} eligible users{strategy}")
    if result.quality is not None:
        print("\n".join(fmt.quality(result.quality)))
    closest = ["closest seed"] if args.explain else []
    rows = [
        (
            rank,
            f"{u.score:.3f}",
            u.user_id,
            *_attribute_cells(attrs.get(u.user_id, {}), shown),
            *([u.closest_seed or "-"] if args.explain else []),
        )
        for rank, u in enumerate(result.users, 1)
    ]
    for line in fmt.table(["rank", "score", "user", *shown, *closest], rows):
        print(line)
    return 0


def cmd_seeds_diagnose(args: argparse.Namespace) -> int:
    query = lookalike_query(args)
    with _client(args) as client:
        diagnostics = client.diagnose_seeds(query)
    if args.json:
        print(json.dumps(asdict(diagnostics), ensure_ascii=False))
    else:
        print("\n".join(fmt.diagnostics(diagnostics)))
    return 0


def _attribute_cells(attributes: dict, shown: list[str]) -> list[str]:
    return [fmt.number(attributes[a]) if a in attributes else "-" for a in shown]


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        print("\n".join(fmt.stats(stats)))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.snapshot()
    print(f"snapshot of generation {done.generation} at {done.path}")
    return 0


def cmd_segments_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tree = client.segment_tree()
    shown = tree.nodes() if args.tree else tree.segments
    if args.json:
        print(json.dumps([asdict(s) for s in shown], ensure_ascii=False))
    elif args.ids:
        print("\n".join(s.segment_id for s in shown))
    elif args.tree:
        print("\n".join(fmt.segment_tree(tree)))
    else:
        print("\n".join(fmt.segment_rows(tree.segments)))
    return 0


def cmd_segments_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        segment = client.get_segment(args.segment_id)
        tree = client.segment_tree()
    if args.json:
        doc = {**asdict(segment), "method": tree.method, "method_reason": tree.method_reason}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print("\n".join(fmt.segment_card(segment, tree)))
    return 0


def cmd_users_show(args: argparse.Namespace) -> int:
    from audience.client import FailedPrecondition

    with _client(args) as client:
        record = client.get_user(args.user_id)
        try:
            memberships = client.get_user_segments([args.user_id])
        except FailedPrecondition:  # no segments built yet
            memberships = []
    if args.json:
        profile = asdict(record.profile)
        del profile["vector"], profile["text_vector"]  # bytes: not for people (nor logged)
        doc = {**profile, "segments": [asdict(m) for m in memberships]}
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print("\n".join(fmt.user(record, memberships)))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until the server answers SERVING (a first start exports the model: ~20 s)."""
    with _client(args) as client:
        client.wait_ready(timeout=args.wait)
    print(f"{args.target} is serving")
    return 0


def cmd_segments_report(args: argparse.Namespace) -> int:
    from audience.index import SegmentModel

    from ._report import write_report

    model = SegmentModel.load(Path(args.data_dir) / "segments")
    if model is None:
        raise ValueError(f"no segments built in {args.data_dir}; run `audience segments build`")
    page = write_report(model, Path(args.out))
    print(f"wrote {page}")
    return 0


# ---------------------------------------------------------------- parser
