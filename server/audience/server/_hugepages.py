"""Transparent huge pages for the in-memory index.

An HNSW search over a million users hops across more than a gigabyte of graph and vectors; with
4 KiB pages nearly every hop also misses the TLB. glibc's malloc backs its large allocations
with transparent huge pages (2 MiB) when the process starts with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which takes effect only at process start, so
`audience serve` re-executes itself once with it set (same PID, same arguments). Measured at
1M users on the 2-core machine over 12 alternating restarts: FindLookalikes p50 through gRPC
2.3-3.3 ms (median 2.9) with huge pages vs 2.5-4.7 ms (median 3.2) without; same RSS.

Off with `huge_pages = false` ([server] in the TOML) or `--no-huge-pages`; nothing happens
where the kernel has transparent huge pages off or the C library is not glibc 2.35+.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger("audience.server")

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def active() -> bool:
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def available() -> bool:
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


def reexec_with_huge_pages() -> None:
    """Replace this process with the same command line under the tunable (returns only when
    it is already set or not available)."""
    if active() or not available():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLE)))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # carry on with ordinary pages
        log.warning("Server - cannot restart with transparent huge pages: %s", exc)
