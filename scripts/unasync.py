#!/usr/bin/env python
"""Generate the blocking client from the asyncio one (httpcore's scripts/unasync.py, as a
plan for one file):

    (in client/audience/client/, the hand-written file -> the generated one)
    _async.py          ->  _sync.py
    _async_jobs.py     ->  _sync_jobs.py
    _async_predict.py  ->  _sync_predict.py

Token replacements (`async def` -> `def`, `await ` -> nothing, `grpc.aio` -> `grpc`, ...),
then a few phrases of the docstrings; a line marked `# unasync: remove` is left out.

    python scripts/unasync.py           write the generated files
    python scripts/unasync.py --check   exit 1 if a generated file is not what this would write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client" / "audience" / "client"
# (hand-written, generated): the client and its job calls (a mixin in a file of its own)
PLAN = [
    (CLIENT / "_async.py", CLIENT / "_sync.py"),
    (CLIENT / "_async_jobs.py", CLIENT / "_sync_jobs.py"),
    (CLIENT / "_async_predict.py", CLIENT / "_sync_predict.py"),
]

HEADER = "# Generated from {} by scripts/unasync.py: edit {}, then run it again.\n"

# Whole words (or exact tokens), applied in order.
TOKENS = [
    (r"\basync def ", "def "),
    (r"\basync for ", "for "),
    (r"\basync with ", "with "),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\bAsyncAudienceClient\b", "AudienceClient"),
    (r"\bAsyncJobCalls\b", "JobCalls"),
    (r"\b_async_jobs\b", "_sync_jobs"),
    (r"\bAsyncPredictCalls\b", "PredictCalls"),
    (r"\b_async_predict\b", "_sync_predict"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncProfiles\b", "Profiles"),
    (r"\basync_run_many\b", "run_many"),
    (r"\basync_batches\b", "batches"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"^import asyncio$", "import time"),
    (r"\bgrpc\.aio\b", "grpc"),
]

# Phrases of the docstrings that say which flavour this is.
PHRASES = [
    (
        '"""The asyncio client, :class:`AsyncAudienceClient`: the one hand-written client.\n'
        "\n"
        "`_sync.py` (:class:`AudienceClient`) is generated from this file",
        '"""The blocking client, :class:`AudienceClient`, generated from `_async.py`\n'
        "(:class:`AsyncAudienceClient`, the one hand-written client)",
    ),
    (
        "for asyncio: methods are coroutines, streams are async\n"
        "    iterators. One client per event loop; the channel opens on first use.",
        "that blocks: safe to share between threads; the channel\n    opens on first use.",
    ),
]


def unasync(text: str, name: str) -> str:
    for old, new in PHRASES if name == "_async.py" else []:
        if old not in text:
            raise SystemExit(f"unasync: phrase not found in {name}: {old[:60]!r}")
        text = text.replace(old, new)
    lines = []
    for line in text.splitlines():
        if line.rstrip().endswith("# unasync: remove"):
            continue
        for pattern, repl in TOKENS:
            line = re.sub(pattern, repl, line)
        lines.append(line)
    return HEADER.format(name, name) + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    stale = 0
    for source, target in PLAN:
        wanted = unasync(source.read_text(), source.name)
        if "--check" in argv:
            if not target.exists() or target.read_text() != wanted:
                print(
                    f"{target.relative_to(ROOT)} is stale: run `python scripts/unasync.py`",
                    file=sys.stderr,
                )
                stale = 1
            continue
        target.write_text(wanted)
        print(f"wrote {target.relative_to(ROOT)}")
    return stale


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
