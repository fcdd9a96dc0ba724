"""`pip install ./client` in a fresh venv pulls in no engine, and that client queries a server."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from conftest import ROOT

HEAVY = {
    "torch",
    "faiss-cpu",
    "faiss",
    "hdbscan",
    "fast-hdbscan",
    "sentence-transformers",
    "numpy",
    "transformers",
    "audience-index",
    "audience-server",
}


@pytest.mark.timeout(600)
def test_client_installs_alone_and_queries(tmp_path: Path, server, loaded) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt", ROOT / "client"],
        check=True,
    )
    frozen = subprocess.run(
        [py, "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines() if line}
    assert names & HEAVY == set(), names
    assert {"grpcio", "protobuf", "audience-client"} <= names

    port = server.port
    script = (
        "from audience.client import AudienceClient\n"
        f"with AudienceClient('127.0.0.1:{port}') as c:\n"
        "    r = c.find_lookalikes(seed_ids=['cook-0'], k=3)\n"
        "    print(','.join(u.user_id.split('-')[0] for u in r.users))\n"
    )
    out = subprocess.run(
        [py, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout
    assert out.strip() == "cook,cook,cook"
