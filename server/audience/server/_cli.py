"""The `audience` admin CLI.

    audience serve --data-dir ./data [--attribute age:numeric:13:90 ...]
    audience ingest FILE --id-col ID --text-col TEXT [--attr COL ...]
    audience lookalike --seed ID [--seed-text TEXT] [-k 100 | --fraction 0.01] [--filter 'age>=30']
    audience stats | rebuild-index [--reembed] | snapshot
    audience check --data-dir ./data [--repair] | restore SNAPSHOT --data-dir NEW

Every command but `serve` talks to a running server (--target, default 127.0.0.1:50051, or
the AUDIENCE_TARGET environment variable). The client and the server load inside the commands
that use them: `serve` applies its process settings (_process.py) before grpc loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from audience.index import (
    ENCODER_BACKENDS,
    INDEX_KIND_SETTINGS,
    ONNX_VARIANTS,
    SEGMENT_REDUCERS,
)

from ._config import DEFAULT_PORT, ROLES, hash_token, load_config

if TYPE_CHECKING:
    from audience.client import AudienceClient

log = logging.getLogger("audience.server")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("faiss", "faiss.loader", "sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    config = load_config(
        args.config,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        model=args.model,
        encoder_backend=args.encoder_backend,
        index_kind=args.index_kind,
        ann_threshold=args.ann_threshold,
        hnsw_ef_search=args.ef_search,
        attributes=args.attribute or None,
        attribute_weight=args.attribute_weight,
        recency_half_life_days=args.recency_half_life_days,
        lexical_weight=args.lexical_weight,
        lexical_dim=args.lexical_dim,
        max_workers=args.max_workers,
        tokens=_tokens(args.token, args.tokens_file),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        huge_pages=args.huge_pages,
        grpc_poll_io=args.grpc_poll_io,
    )
    _process.apply(_process.ProcessSettings(config.huge_pages, config.grpc_poll_io))
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
    from audience.index._erasure import restore_snapshot

    copied = restore_snapshot(args.snapshot, args.data_dir, live=args.erasures_from)
    print(
        f"restored {args.snapshot} into {args.data_dir}, with {copied} recorded erasures "
        "(applied when a server opens it)"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ._ingest import ColumnMap, group_profiles, read_rows

    cols = ColumnMap(
        id_col=args.id_col,
        text_cols=tuple(args.text_col or ()),
        attr_cols=tuple(ColumnMap.parse_attr(a) for a in args.attr or ()),
        time_col=args.time_col,
        time_format=args.time_format,
        weight_col=args.weight_col,
    )
    t0 = time.perf_counter()
    rows = read_rows(Path(args.file), args.format, args.delimiter)
    profiles, report = group_profiles(rows, cols, max_texts_per_user=args.max_texts_per_user)
    print(
        f"read {report.rows} rows -> {report.users} users, {report.texts} texts "
        f"({report.skipped_rows} rows without an id, {report.unparsed_times} unparsed times, "
        f"{report.dropped_texts} texts over --max-texts-per-user) "
        f"in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    if args.limit_users:
        profiles = profiles[: args.limit_users]
    t1 = time.perf_counter()
    with _client(args) as client:
        client.wait_ready(timeout=args.wait)
        result = client.upsert_users(
            profiles, batch_size=args.batch_size, progress=not args.no_progress
        )
    seconds = time.perf_counter() - t1
    print(
        f"upserted {result.upserted} users in {seconds:.1f}s "
        f"({result.upserted / max(seconds, 1e-9):.1f} users/s), sequence {result.sequence}"
    )
    return 0


def cmd_lookalike(args: argparse.Namespace) -> int:
    from audience.client import Filter

    if not args.seed and not args.seed_text:
        raise SystemExit("lookalike: give at least one --seed USER_ID or --seed-text TEXT")
    with _client(args) as client:
        result = client.find_lookalikes(
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
        )
    if args.json:
        print(
            json.dumps(
                {"eligible": result.eligible, "users": [asdict(u) for u in result.users]},
                ensure_ascii=False,
            )
        )
    else:
        print(f"{len(result.users)} of {result.eligible} eligible users")
        for rank, u in enumerate(result.users, 1):
            print(f"{rank:>5}  {u.score:.4f}  {u.user_id}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        print(json.dumps(asdict(stats)))
    else:
        for key, value in asdict(stats).items():
            print(f"{key:>12}: {value}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.rebuild_index(reembed=args.reembed)
    print(f"rebuilt: {done.users} users, generation {done.generation}, {done.seconds:.1f}s")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.snapshot()
    print(f"snapshot of generation {done.generation} at {done.path}")
    return 0


def cmd_segments_build(args: argparse.Namespace) -> int:
    with _client(args) as client:
        done = client.build_segments(
            target_segments=args.target_segments,
            reducer=args.reducer or "",
            min_cluster_size=args.min_cluster_size or 0,
            sample_size=args.sample_size or 0,
        )
    print(
        f"segments {done.model_version}: {done.segments} segments over {done.users} users, "
        f"{100 * done.outlier_share:.1f}% outliers, {done.seconds:.1f}s"
    )
    return 0


def cmd_segments_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        segments = client.list_segments()
    if args.json:
        print(json.dumps([asdict(s) for s in segments], ensure_ascii=False))
        return 0
    for s in segments:
        print(
            f"{s.segment_id:>10}  {s.size:>8}  {100 * s.share:5.1f}%  {s.status:<7} "
            f"{', '.join(s.keywords[:8])}"
        )
    return 0


def cmd_segments_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        segment = client.get_segment(args.segment_id)
    print(json.dumps(asdict(segment), ensure_ascii=False, indent=2))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audience", description="Audience admin CLI.")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    def client_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--target",
            default=os.environ.get("AUDIENCE_TARGET", f"127.0.0.1:{DEFAULT_PORT}"),
            help="server address host:port (env AUDIENCE_TARGET)",
        )
        sp.add_argument(
            "--token",
            default=os.environ.get("AUDIENCE_TOKEN"),
            help="bearer token (env AUDIENCE_TOKEN)",
        )
        sp.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, seconds")
        sp.add_argument("--tls-ca", type=Path, help="CA to verify a TLS server (PEM); TLS on")
        sp.add_argument("--tls-cert", type=Path, help="client certificate for mTLS (PEM)")
        sp.add_argument("--tls-key", type=Path, help="client key for mTLS (PEM)")

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--config", type=Path, help="TOML file ([server], [engine], [limits])")
    s.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    s.add_argument("--port-file", type=Path, help="write the bound port to this file")
    s.add_argument(
        "--model", help="sentence-transformers model directory (default: packaged all-MiniLM-L6-v2)"
    )
    s.add_argument(
        "--attribute",
        action="append",
        metavar="SPEC",
        help="attribute in the user vector: name:numeric:MIN:MAX or "
        "name:categorical[:a,b,c], optional @WEIGHT; repeatable "
        "(default: the data dir's last schema)",
    )
    s.add_argument(
        "--attribute-weight", type=float, help="share of the vector for attributes (0.1)"
    )
    s.add_argument(
        "--encoder-backend",
        choices=ENCODER_BACKENDS,
        help="how the model runs (default onnx-int8); onnx models are exported into the data dir",
    )
    s.add_argument(
        "--index-kind",
        choices=INDEX_KIND_SETTINGS,
        help="vector index (auto: exact below --ann-threshold users, hnsw above)",
    )
    s.add_argument("--ann-threshold", type=int, help="users from which auto uses hnsw (100000)")
    s.add_argument("--ef-search", type=int, help="default hnsw search depth per query (256)")
    s.add_argument("--recency-half-life-days", type=float, help="decay of older texts (off)")
    s.add_argument(
        "--lexical-weight",
        type=float,
        help="share of the lexical channel in the text part, 0..1 (default: by the corpus, "
        "0.9 when mostly Chinese/Japanese/Korean, else 0.3)",
    )
    s.add_argument("--lexical-dim", type=int, help="lexical dimensions, 0 = off (256)")
    s.add_argument("--max-workers", type=int, help="handler threads (16)")
    s.add_argument(
        "--huge-pages",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="back the index with transparent huge pages (on; restarts the process once)",
    )
    s.add_argument(
        "--grpc-poll-io",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grpc's poll-based socket I/O, set before grpc loads (on; see the README)",
    )
    s.add_argument(
        "--token",
        action="append",
        metavar="ROLE:TOKEN",
        help="accept this bearer token with role reader|writer|admin; repeatable "
        "(prefer --tokens-file: arguments are visible to other local users)",
    )
    s.add_argument(
        "--tokens-file",
        type=Path,
        help='JSON list of {"sha256": ..., "role": ...} (see `audience hash-token`)',
    )
    s.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    s.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    s.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: turns on mTLS")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("hash-token", help="print the sha256 of a token, for --tokens-file")
    s.add_argument("token")
    s.set_defaults(func=cmd_hash_token)

    s = sub.add_parser(
        "export-model", help="export the model for an ONNX encoder backend into the data dir"
    )
    s.add_argument("--data-dir", default="./data", help="data directory (default ./data)")
    s.add_argument(
        "--model", help="sentence-transformers model directory (default: packaged all-MiniLM-L6-v2)"
    )
    s.add_argument("--backend", choices=ONNX_VARIANTS, default="onnx-int8")
    s.add_argument("--force", action="store_true", help="export again even if intact")
    s.set_defaults(func=cmd_export_model)

    s = sub.add_parser(
        "check", help="check every stored user of a data dir (the server stopped); --repair"
    )
    s.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    s.add_argument("--config", type=Path, help="the server's TOML file (its [engine] settings)")
    s.add_argument("--model", help="the server's --model, if it gives one")
    s.add_argument("--encoder-backend", choices=ENCODER_BACKENDS, help="the server's, if given")
    s.add_argument("--lexical-weight", type=float, help="the server's, if given")
    s.add_argument("--lexical-dim", type=int, help="the server's, if given")
    s.add_argument(
        "--repair",
        action="store_true",
        help="recompute damaged vectors from the stored texts (with the server's settings)",
    )
    s.set_defaults(func=cmd_check)

    s = sub.add_parser(
        "restore", help="copy a snapshot into a new data dir, with the erasures made since"
    )
    s.add_argument("snapshot", type=Path, help="a snapshot directory (see `audience snapshot`)")
    s.add_argument("--data-dir", type=Path, required=True, help="the new data dir (empty)")
    s.add_argument(
        "--erasures-from",
        type=Path,
        help="the data dir the snapshot came from, whose erasures since must reach the copy "
        "(default: the one the snapshot lies in)",
    )
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("ingest", help="load profiles from a CSV/TSV/JSONL/Parquet file")
    client_flags(s)
    s.add_argument("file")
    s.add_argument("--format", default="auto", choices=("auto", "csv", "tsv", "jsonl", "parquet"))
    s.add_argument("--delimiter", help="CSV/TSV delimiter (default , or tab)")
    s.add_argument("--id-col", required=True, help="column with the user id")
    s.add_argument("--text-col", action="append", help="column with a text; repeatable")
    s.add_argument(
        "--attr", action="append", metavar="COL[:number|:text]", help="attribute column; repeatable"
    )
    s.add_argument("--time-col", help="column with the text's time")
    s.add_argument(
        "--time-format", help="strptime format of --time-col (default: epoch or ISO 8601)"
    )
    s.add_argument("--weight-col", help="column with the text's weight")
    s.add_argument("--max-texts-per-user", type=int, help="keep only the newest N texts per user")
    s.add_argument("--limit-users", type=int, help="upload only the first N users")
    s.add_argument("--batch-size", type=int, default=64, help="users per request")
    s.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the server")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("lookalike", help="find users like the seeds")
    client_flags(s)
    s.add_argument("--seed", action="append", help="seed user id; repeatable")
    s.add_argument("--seed-text", action="append", help="seed free text; repeatable")
    s.add_argument("-k", type=int, default=100, help="audience size (default 100)")
    s.add_argument("--fraction", type=float, help="audience size as a share of eligible users")
    s.add_argument(
        "--filter",
        action="append",
        help="e.g. 'gender=female', 'age>=30', 'industry in Arts,Education'; repeatable",
    )
    s.add_argument("--negative", action="append", help="user id to steer away from; repeatable")
    s.add_argument("--exclude", action="append", help="user id never to return; repeatable")
    s.add_argument("--segment", action="append", help="only members of this segment; repeatable")
    s.add_argument("--exclude-segment", action="append", help="never members of this segment")
    s.add_argument("--include-seeds", action="store_true")
    s.add_argument(
        "--search-effort",
        type=int,
        help="search depth of an HNSW / IVF-PQ index (efSearch / nprobe)",
    )
    s.add_argument("--exact", action="store_true", help="exhaustive search on an ANN index")
    s.add_argument("--min-score", type=float)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_lookalike)

    s = sub.add_parser("stats", help="counts and settings of the running server")
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("rebuild-index", help="rebuild the vector index from the store")
    client_flags(s)
    s.add_argument(
        "--reembed", action="store_true", help="embed every text again (after a model change)"
    )
    s.set_defaults(func=cmd_rebuild)

    seg = sub.add_parser("segments", help="build, list, show and report customer segments")
    segsub = seg.add_subparsers(dest="segments_command", required=True)
    s = segsub.add_parser("build", help="cluster the users into segments (HDBSCAN)")
    client_flags(s)
    s.add_argument(
        "--target-segments",
        type=int,
        default=0,
        help="exactly this many segments (k-means on UMAP of the user vectors); "
        "0 = HDBSCAN decides how many",
    )
    s.add_argument("--reducer", choices=SEGMENT_REDUCERS, help="space the clustering sees (umap)")
    s.add_argument("--min-cluster-size", type=int, help="smallest segment (1%% of the sample)")
    s.add_argument("--sample-size", type=int, help="users the clustering is fitted on (20000)")
    s.set_defaults(func=cmd_segments_build, timeout=None)
    s = segsub.add_parser("list", help="the current segments")
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_segments_list)
    s = segsub.add_parser("show", help="one segment in full (JSON)")
    client_flags(s)
    s.add_argument("segment_id")
    s.set_defaults(func=cmd_segments_show)
    s = segsub.add_parser("report", help="HTML page + PNGs of the current segments")
    s.add_argument("--data-dir", default="./data", help="the server's data dir (read only)")
    s.add_argument("--out", required=True, help="folder to write index.html and PNGs into")
    s.set_defaults(func=cmd_segments_report)

    s = sub.add_parser("snapshot", help="write a consistent copy of store and index")
    client_flags(s)
    s.set_defaults(func=cmd_snapshot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _error_message(exc: Exception) -> str | None:
    """What to print for an error a command can end with; None for a bug (a traceback)."""
    from audience.client import AudienceError as ClientError
    from audience.index import AudienceError as EngineError

    if isinstance(exc, ClientError):
        return f"{exc.code}: {exc.details}"

    if isinstance(exc, (EngineError, ValueError, OSError)):
        return str(exc)
    return None
