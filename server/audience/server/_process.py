"""Process-wide settings of `audience serve`, applied once when it starts (never on import)
and logged in one line. Each one measured on the 2-core machine at 1M users:

huge pages      glibc's malloc backs large allocations with transparent huge pages (2 MiB)
                when the process starts with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which
                takes effect only at process start, so `audience serve` re-executes itself
                once with it set (same PID, same arguments). An HNSW search hops across more
                than a gigabyte of graph and vectors; with 4 KiB pages nearly every hop also
                misses the TLB. FindLookalikes p50 through gRPC 2.3-3.3 ms (median 2.9) with
                huge pages vs 2.5-4.7 ms (median 3.2) without, 12 alternating restarts; same
                RSS. Nothing happens where the kernel has them off or glibc is older than 2.35.
grpc socket I/O GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener before grpc
                loads: grpc then polls the socket on the thread that waits for the call
                instead of waking one of its EventEngine threads first (one thread wake-up
                fewer per call on each side): echo of 4 KB between two processes, 0.45-0.56 ms
                per call vs 0.64-0.79 ms. A value the operator set is kept (even empty).
GIL switch      0.5 ms instead of 5 ms: each call hands the GIL between grpc's polling thread
                and a handler thread; single-client QPS 430 vs 396, p99 3.3 vs 3.9 ms.
quiet threads   OMP_WAIT_POLICY=PASSIVE before faiss loads its OpenMP runtime, and BLAS
                (numpy, scipy) in the calling thread (OPENBLAS_NUM_THREADS=1, and through
                threadpoolctl for a BLAS already loaded). Idle OpenMP and OpenBLAS workers
                otherwise spin on the cores after each call, and on 2 cores a query that mixes
                a faiss search with numpy (strategy=auto: ~100 small products) ran against
                them: in-process at 1M users, centroid / auto p50 2.13 / 15.8-17.0 ms by
                default, 1.54-1.83 / 7.0-9.4 ms quiet. A query is one thread's work either way;
                what loses the second BLAS thread is a large product in a background job
                (segment build, predictor fit), which then leaves that core to the queries.

Off with `huge_pages = false` / `--no-huge-pages`, `grpc_poll_io = false` /
`--no-grpc-poll-io` and `quiet_threads = false` / `--no-quiet-threads` ([server] in the TOML).
Values the operator set in the environment are kept.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("audience.server")

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
GRPC_EXPERIMENTS = "GRPC_EXPERIMENTS"
POLL_IO = "-event_engine_client,-event_engine_listener"
GIL_SWITCH_INTERVAL_S = 0.0005
QUIET_THREADS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class ProcessSettings:
    huge_pages: bool = True
    grpc_poll_io: bool = True
    switch_interval_s: float = GIL_SWITCH_INTERVAL_S
    quiet_threads: bool = True


def huge_pages_active() -> bool:
    return HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def huge_pages_available() -> bool:
    """Linux with transparent huge pages (always or madvise) and glibc >= 2.35."""
    if not sys.platform.startswith("linux"):
        return False
    libc, version = platform.libc_ver()
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
        mode = _THP_MODE.read_text()
    except (ValueError, OSError):
        return False
    return libc == "glibc" and (major, minor) >= (2, 35) and "[never]" not in mode


def apply(settings: ProcessSettings) -> str:
    """Apply `settings` to this process; returns (and logs) what is in effect. Must run
    before grpc is imported. May replace the process (huge pages): it then starts again
    with the same arguments and returns from the second call."""
    if settings.grpc_poll_io and GRPC_EXPERIMENTS not in os.environ:
        if "grpc" in sys.modules:
            log.warning("Server - grpc is already loaded; its socket I/O stays the default")
        else:
            os.environ[GRPC_EXPERIMENTS] = POLL_IO
    if settings.quiet_threads:
        quiet_thread_pools()
    if settings.huge_pages:
        reexec_with_huge_pages()
    sys.setswitchinterval(settings.switch_interval_s)
    summary = (
        f"transparent huge pages {'on' if huge_pages_active() else 'off'}, "
        f"{GRPC_EXPERIMENTS}={os.environ.get(GRPC_EXPERIMENTS, '(unset)')}, "
        f"GIL switch interval {1000 * sys.getswitchinterval():g} ms, "
        + ", ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in QUIET_THREADS)
    )
    log.info("Server - process settings: %s", summary)
    return summary


def quiet_thread_pools() -> None:
    """Idle OpenMP workers sleep and BLAS runs in the calling thread (module docstring). Must
    run before faiss is imported for OpenMP; a BLAS already loaded is limited in place."""
    for name, value in QUIET_THREADS.items():
        if name not in os.environ:
            os.environ[name] = value
    if "faiss" in sys.modules and os.environ["OMP_WAIT_POLICY"] == "PASSIVE":
        log.warning("Server - faiss is already loaded; its OpenMP threads keep spinning")
    from threadpoolctl import threadpool_limits

    try:
        blas = max(1, int(os.environ["OPENBLAS_NUM_THREADS"]))
    except ValueError:
        return  # the operator's own value, not a number: left to OpenBLAS
    threadpool_limits(limits=blas, user_api="blas")  # kept for the life of the process


def reexec_with_huge_pages() -> None:
    """Replace this process with the same command line under the tunable; returns at once
    when it is already set or not available (or when the exec fails)."""
    if huge_pages_active() or not huge_pages_available():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), HUGE_PAGES_TUNABLE)))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # carry on with ordinary pages
        log.warning("Server - cannot restart with transparent huge pages: %s", exc)
