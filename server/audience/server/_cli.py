"""The `audience` admin CLI.

    audience serve --data-dir ./data [--attribute age:numeric:13:90 ...]
    audience ingest PATH... --id-col ID --text-col TEXT [--attr COL ...] [--engine ray]
    audience lookalike --seed ID [--seed-text TEXT] [-k 100 | --fraction 0.01] [--filter 'age>=30']
    audience stats | rebuild-index [--reembed] [--detach] | snapshot
    audience segments build [--detach] | jobs list | jobs watch JOB | jobs cancel JOB
    audience backup --out DIR
    audience check --data-dir ./data [--repair] | restore BACKUP --data-dir NEW

Every command but `serve` talks to a running server (--target, default 127.0.0.1:50051, or
the AUDIENCE_TARGET environment variable). The client and the server load inside the commands
that use them: `serve` applies its process settings (_process.py) before grpc loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from audience.index import (
    ENCODER_BACKENDS,
    INDEX_KIND_SETTINGS,
    ONNX_VARIANTS,
    SEGMENT_METHODS,
    SEGMENT_REDUCERS,
    STRATEGY_NAMES,
)

from ._cli_commands import (
    cmd_backup,
    cmd_check,
    cmd_export_model,
    cmd_hash_token,
    cmd_ingest,
    cmd_lookalike,
    cmd_publish,
    cmd_restore,
    cmd_seeds_diagnose,
    cmd_segments_list,
    cmd_segments_report,
    cmd_segments_show,
    cmd_serve,
    cmd_snapshot,
    cmd_stats,
    cmd_users_show,
    cmd_wait,
)
from ._cli_export import cmd_export_lookalike, cmd_export_segment
from ._cli_jobs import (
    cmd_jobs_cancel,
    cmd_jobs_list,
    cmd_jobs_show,
    cmd_jobs_watch,
    cmd_rebuild,
    cmd_segments_build,
)
from ._cli_predict import add_predict_commands
from ._config import DEFAULT_PORT


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("faiss", "faiss.loader", "sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


EXAMPLES = """\
examples:
  audience serve --data-dir ./data                  run the server (in its own terminal)
  audience wait                                      until it serves (a first start: ~20 s)
  audience ingest users.csv --id-col id --text-col text --attr age:number
  audience lookalike --seed u1 -k 20 --filter "age=20..29" --show age,gender
  audience users show u1
  audience segments build && audience segments list
  audience jobs list                                 long jobs: watch, cancel
  audience backup --out /mnt/backups/audience-1      then: audience restore DIR --data-dir NEW
  audience export lookalike --seed u1 -k 100000 --out audience.parquet

Every command but serve, check, restore, export-model and hash-token talks to a running
server: --target HOST:PORT, or the AUDIENCE_TARGET environment variable (default
127.0.0.1:50051); a token with --token or AUDIENCE_TOKEN. Add --json for scripts.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audience",
        description="Audience admin CLI.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    def job_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--detach",
            action="store_true",
            help="start the job, print its id and return (default: follow it to the end; "
            "Ctrl-C detaches)",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--config", type=Path, help="TOML file ([server], [engine], [limits])")
    s.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
    s.add_argument("--host", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    s.add_argument("--port-file", type=Path, help="write the bound port to this file")
    s.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (default: off)",
    )
    s.add_argument("--metrics-host", help="address of the metrics port (default 127.0.0.1)")
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
    s.add_argument("--ann-threshold", type=int, help="users from which auto uses hnsw (10000)")
    s.add_argument("--ef-search", type=int, help="default hnsw search depth per query (256)")
    s.add_argument("--recency-half-life-days", type=float, help="decay of older texts (off)")
    s.add_argument(
        "--sentiment",
        action="store_true",
        default=None,
        help="score each text's sentiment at ingest (VADER; snownlp for Chinese) and store "
        "the user's mean as the attribute 'sentiment' (-1..1)",
    )
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
        "--quiet-threads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="idle OpenMP threads sleep, BLAS in the calling thread (on; see the README)",
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
    g = s.add_argument_group("read replicas (README, 'Scaling out')")
    g.add_argument(
        "--publish-to",
        type=Path,
        metavar="DIR",
        help="primary: publish complete generations here (on `audience publish`, and see "
        "--publish-every) for replicas to load",
    )
    g.add_argument(
        "--publish-every",
        type=float,
        metavar="SECONDS",
        dest="publish_every_s",
        help="primary: also publish this often when something changed (default 0: on demand)",
    )
    g.add_argument(
        "--publish-keep", type=int, metavar="N", help="primary: generations kept in DIR (2)"
    )
    g.add_argument(
        "--replica-of",
        type=Path,
        metavar="DIR",
        help="serve reads from the generations a primary publishes to DIR (a replica); "
        "--data-dir is where they are copied",
    )
    g.add_argument(
        "--primary", metavar="HOST:PORT", help="replica: where writes go (named in refusals)"
    )
    g.add_argument(
        "--poll-every",
        type=float,
        metavar="SECONDS",
        dest="poll_s",
        help="replica: how often to look for a new generation (2)",
    )
    g.add_argument(
        "--max-lag",
        type=float,
        metavar="SECONDS",
        dest="max_lag_s",
        help="replica: answer NOT_SERVING on health while the data served were published "
        "longer ago than this, so that load balancers drop a stale replica (default: off)",
    )
    s.add_argument(
        "--ray-address",
        help="Ray cluster for `segments build --engine ray` (default: RAY_ADDRESS, else a "
        "local Ray started on first use)",
    )
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
        "restore",
        help="verify a backup (or a snapshot) and copy it into a new data dir, with the "
        "erasures made since",
    )
    s.add_argument(
        "source",
        type=Path,
        metavar="BACKUP",
        help="a backup (`audience backup`) or snapshot (`audience snapshot`) directory",
    )
    s.add_argument("--data-dir", type=Path, required=True, help="the new data dir (empty)")
    s.add_argument(
        "--erasures-from",
        type=Path,
        help="the data dir the copy came from, whose erasures since must reach the copy "
        "(default: the one named in the backup; for a snapshot, the one it lies in)",
    )
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser(
        "backup", help="write a consistent, checksummed copy of everything the server needs"
    )
    client_flags(s)
    s.add_argument(
        "--out",
        required=True,
        help="new or empty directory on the server's machine, outside its data dir (a "
        "relative path is taken from this command's working directory)",
    )
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser(
        "publish", help="publish a generation for read replicas (server: --publish-to)"
    )
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("ingest", help="load profiles from CSV/TSV/JSONL/Parquet files")
    client_flags(s)
    s.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders of files")
    s.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: the server embeds the texts; ray: Ray workers embed them with the "
        "server's encoder and the server only stores (see the README, 'Scaling out')",
    )
    s.add_argument(
        "--ray-address", help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray)"
    )
    s.add_argument("--workers", type=int, help="encoder actors on Ray (default: one per CPU)")
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

    def lookalike_flags(sp: argparse.ArgumentParser) -> None:
        client_flags(sp)
        sp.add_argument("--seed", action="append", help="seed user id; repeatable")
        sp.add_argument("--seed-text", action="append", help="seed free text; repeatable")
        sp.add_argument("-k", type=int, default=100, help="audience size (default 100)")
        sp.add_argument("--fraction", type=float, help="audience size as a share of eligible users")
        sp.add_argument(
            "--filter",
            action="append",
            help="e.g. 'gender=female', 'age>=30', 'industry in Arts,Education'; repeatable",
        )
        sp.add_argument("--negative", action="append", help="user id to steer away from")
        sp.add_argument("--exclude", action="append", help="user id never to return; repeatable")
        sp.add_argument("--segment", action="append", help="only members of this segment")
        sp.add_argument("--exclude-segment", action="append", help="never members of this segment")
        sp.add_argument("--include-seeds", action="store_true")
        sp.add_argument(
            "--search-effort",
            type=int,
            help="search depth of an HNSW / IVF-PQ index (efSearch / nprobe)",
        )
        sp.add_argument("--exact", action="store_true", help="exhaustive search on an ANN index")
        sp.add_argument("--min-score", type=float)
        sp.add_argument(
            "--strategy",
            choices=STRATEGY_NAMES,
            help="how the seeds become an audience (default centroid; README: Strategies)",
        )

    s = sub.add_parser("lookalike", help="find users like the seeds")
    lookalike_flags(s)
    s.add_argument(
        "--quality", action="store_true", help="also the held-out estimate of the audience"
    )
    s.add_argument(
        "--explain",
        action="store_true",
        help="also the seed diagnostics and each user's closest seed",
    )
    s.add_argument(
        "--show", metavar="ATTR,...", help="also print these attributes of each user: age,gender"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_lookalike)

    seeds = sub.add_parser("seeds", help="what a seed list is, before it is used")
    seedsub = seeds.add_subparsers(dest="seeds_command", required=True)
    s = seedsub.add_parser(
        "diagnose",
        help="cohesion, interests, outliers, warnings and the held-out estimate of the seeds",
    )
    lookalike_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_seeds_diagnose)

    export = sub.add_parser(
        "export", help="write an audience or a segment to a CSV or Parquet file, streamed"
    )
    exportsub = export.add_subparsers(dest="export_command", required=True)

    def export_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--out", type=Path, required=True, help="file to write: .csv, .csv.gz or .parquet"
        )
        sp.add_argument(
            "--attrs", metavar="ATTR,...", help="stored attributes to add as columns: age,gender"
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = exportsub.add_parser(
        "lookalike", help="an audience (the lookalike flags), streamed: user_id, score"
    )
    lookalike_flags(s)
    export_flags(s)
    s.set_defaults(func=cmd_export_lookalike, timeout=None)
    s = exportsub.add_parser("segment", help="a segment's members: user_id, strength")
    client_flags(s)
    s.add_argument("segment_id")
    export_flags(s)
    s.set_defaults(func=cmd_export_segment, timeout=None)

    add_predict_commands(sub, client_flags, job_flags)

    s = sub.add_parser("users", help="look at stored users")
    usersub = s.add_subparsers(dest="users_command", required=True)
    s = usersub.add_parser("show", help="one user: attributes, segment, texts")
    client_flags(s)
    s.add_argument("user_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_users_show)

    s = sub.add_parser("wait", help="wait until the server answers SERVING")
    client_flags(s)
    s.add_argument("--wait", type=float, default=180.0, help="seconds to wait at most")
    s.set_defaults(func=cmd_wait)

    s = sub.add_parser("stats", help="counts and settings of the running server")
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("rebuild-index", help="rebuild the vector index from the store")
    client_flags(s)
    s.add_argument(
        "--reembed", action="store_true", help="embed every text again (after a model change)"
    )
    job_flags(s)
    s.set_defaults(func=cmd_rebuild)

    seg = sub.add_parser("segments", help="build, list, show and report customer segments")
    segsub = seg.add_subparsers(dest="segments_command", required=True)
    s = segsub.add_parser("build", help="cluster the users into segments (HDBSCAN)")
    client_flags(s)
    s.add_argument(
        "--target-segments",
        type=int,
        default=0,
        help="exactly this many segments (found by --method); 0 = HDBSCAN decides how many",
    )
    s.add_argument(
        "--method",
        choices=SEGMENT_METHODS,
        help="with --target-segments: auto (default) runs each method and keeps the best by "
        "neighbour agreement; or kmeans, umap-kmeans, tree",
    )
    s.add_argument("--reducer", choices=SEGMENT_REDUCERS, help="space the clustering sees (umap)")
    s.add_argument("--min-cluster-size", type=int, help="smallest segment (1%% of the sample)")
    s.add_argument("--sample-size", type=int, help="users the clustering is fitted on (20000)")
    s.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where the users outside the sample are placed: in the server, or on Ray "
        "workers (the server's --ray-address)",
    )
    job_flags(s)
    s.set_defaults(func=cmd_segments_build)
    s = segsub.add_parser("list", help="the current segments")
    client_flags(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("--ids", action="store_true", help="only the segment ids, one per line")
    s.add_argument(
        "--tree", action="store_true", help="the groups above and parts below too, drawn as a tree"
    )
    s.set_defaults(func=cmd_segments_list)
    s = segsub.add_parser("show", help="one segment: size, keywords, attributes, exemplars")
    client_flags(s)
    s.add_argument("segment_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_segments_show)
    s = segsub.add_parser("report", help="HTML page + PNGs of the current segments")
    s.add_argument("--data-dir", default="./data", help="the server's data dir (read only)")
    s.add_argument("--out", required=True, help="folder to write index.html and PNGs into")
    s.set_defaults(func=cmd_segments_report)

    jobs = sub.add_parser("jobs", help="long jobs: list, show, watch (re-attach), cancel")
    jobsub = jobs.add_subparsers(dest="jobs_command", required=True)
    s = jobsub.add_parser("list", help="running jobs, then the last finished ones")
    client_flags(s)
    s.add_argument(  # _convert.JOB_KINDS, not imported here: it loads grpc (see serve)
        "--kind", choices=("rebuild-index", "build-segments", "fit-predictors", "backup", "publish")
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs_list)
    s = jobsub.add_parser("show", help="one job: state, stage, result or error")
    client_flags(s)
    s.add_argument("job_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs_show)
    s = jobsub.add_parser("watch", help="follow a job until it ends (Ctrl-C detaches)")
    client_flags(s)
    s.add_argument("job_id")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_jobs_watch)
    s = jobsub.add_parser("cancel", help="stop a running job; what it replaces stays served")
    client_flags(s)
    s.add_argument("job_id")
    s.add_argument("--wait", action="store_true", help="until it has stopped")
    s.set_defaults(func=cmd_jobs_cancel)

    s = sub.add_parser("snapshot", help="write a consistent copy of store and index")
    client_flags(s)
    s.set_defaults(func=cmd_snapshot)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand, with its usage (not the top level's)
        _subparser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The parser of the (sub)command that `args` ran."""
    commands = ("command", "segments_command", "users_command", "jobs_command", "export_command")
    for name in commands:
        chosen = getattr(args, name, None)
        if chosen is None:
            continue
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or chosen not in actions[0].choices:
            break
        parser = actions[0].choices[chosen]
    return parser


def _error_message(exc: Exception) -> str | None:
    """What to print for an error a command can end with; None for a bug (a traceback)."""
    from audience.client import AudienceError as ClientError
    from audience.index import AudienceError as EngineError

    if isinstance(exc, ClientError):
        return f"{exc.code}: {exc.details}"

    if isinstance(exc, (EngineError, ValueError, OSError)):
        return str(exc)
    return None
