"""The README's walk-through, run as written: its sections 'Walk-through: bloggers as users',
'Segments', 'Predicted attributes' and 'Operations', every ```sh block in order, on a slice
of the blogs data small enough for CI.

What the test changes, and nothing else: the server gets a data dir and ports of its own
(DATA_DIR and PORT for `make run`, its metrics port, AUDIENCE_TARGET for the CLI, the port in
the Python snippet, `--data-dir ./data` and `--out segments-report` of the report command),
the files the Operations section writes go to a temp dir, and the ingest reads 40 bloggers
(`--limit-users 40`, the README's own hint) without a progress bar.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOGS = ROOT.parent / "shared" / "data" / "blogs_dev.tsv.gz"
SECTIONS = (
    "## Walk-through: bloggers as users",
    "## Segments",
    "## Predicted attributes",
    "## Operations",
)


def readme_blocks() -> list[str]:
    """The ```sh blocks of SECTIONS, in order."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for title in SECTIONS:
        start = text.index(title + "\n")
        end = text.find("\n## ", start + len(title))
        section = text[start : end if end >= 0 else None]
        blocks += re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return blocks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(900)
@pytest.mark.skipif(not BLOGS.exists(), reason=f"{BLOGS} is not here")
def test_the_readme_walk_through_runs_as_written(tmp_path: Path) -> None:
    server_block, *blocks = readme_blocks()
    assert server_block.strip().startswith("make run SERVE_ARGS=")
    port, metrics, data = _free_port(), _free_port(), tmp_path / "data"
    server_block = server_block.replace("--metrics-port 9464", f"--metrics-port {metrics}")
    env = {
        **os.environ,
        "DATA_DIR": str(data),
        "PORT": str(port),
        "AUDIENCE_TARGET": f"127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "1",
    }
    script = "\n".join(blocks)
    script = script.replace("--max-texts-per-user 2", "--max-texts-per-user 2 --limit-users 40")
    script = script.replace(" \\\n    --id-col", " --no-progress \\\n    --id-col")
    script = script.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    script = script.replace("--data-dir ./data ", f"--data-dir {data} ")
    script = script.replace("--out segments-report", f"--out {tmp_path / 'segments-report'}")
    script = script.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
    for path in ("/tmp/audience-backup-1", "./data-from-backup", "audience.csv", "segment.parquet"):
        script = script.replace(path, str(tmp_path / path.rsplit("/", 1)[-1]))
    assert "--limit-users 40" in script and "--no-progress" in script

    server = subprocess.Popen(
        ["bash", "-c", server_block],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        done = subprocess.run(
            ["bash", "-eu", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
        )
        transcript = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        (tmp_path / "transcript.txt").write_text(transcript)
        assert done.returncode == 0, transcript[-6000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
    out = done.stdout
    assert "upserted 40 users" in out
    assert re.search(r"read [\d,]+ rows -> [\d,]+ users", done.stderr)  # the ingest summary
    assert "unparsed times:" in done.stderr and "Dates in other languages" in done.stderr
    assert re.search(r"\d+ of \d+ eligible users\nrank\s+score\s+user", out)
    assert re.search(r"rank\s+score\s+user\s+age\s+industry", out)  # --show age,industry
    assert "user:       1000866" in out and "segment:" in out  # users show
    assert "users:" in out and "lexical weight:" in out  # stats, for people
    assert re.search(r"segment\s+users\s+share\s+status\s+keywords\nseg-\d{4}", out)
    assert "keywords:" in out and "exemplars:" in out  # segments show
    assert "eligible users" in out and "ReachEstimate(" in out  # the Python snippet
    assert re.search(r"\d+ groups, \d+ segments, \d+ parts\n(level 6: .*\n)+", out)  # tree.level
    assert (tmp_path / "segments-report" / "index.html").exists()
    # Operations: jobs, metrics, backup and restore, export
    assert re.search(r"job\s+kind\s+state", out)
    assert re.search(r"job-\d+ (cancelled|had already ended)", out)  # 40 users: a quick build
    assert re.search(
        r'audience_grpc_server_handled_total\{grpc_code="OK",grpc_method="FindLookalikes"', out
    )
    assert "audience_users 40.0" in out
    assert "verified and restored" in out
    assert (tmp_path / "audience.csv").exists() and (tmp_path / "segment.parquet").exists()
