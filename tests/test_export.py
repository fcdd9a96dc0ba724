"""audience export: a 10k audience and a segment streamed to CSV and Parquet, read back with
pyarrow / the csv module to the same ids and scores as the RPC."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from audience.client import AudienceClient, Profile
from audience.server._cli import main

N = 12_000


@pytest.fixture
def big(start_server, tmp_path: Path):
    server = start_server(data_dir=tmp_path / "data", lexical_dim=0)
    target = f"127.0.0.1:{server.port}"
    with AudienceClient(target, timeout=120) as client:
        dim = client.stats().dimension
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((4, dim)).astype(np.float32)  # four groups: segments
        x = centres[np.arange(N) % 4] + 0.05 * rng.standard_normal((N, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        client.upsert_users(
            Profile(
                f"u{i}",
                vector=x[i].tobytes(),
                attributes={"age": 20 + i % 50, "region": ["north", "south", "east"][i % 3]}
                | ({"gender": "female"} if i % 2 else {}),
            )
            for i in range(N)
        )
        yield target, client


def test_export_lookalike_csv_and_parquet_match_the_rpc(big, tmp_path: Path, capsys) -> None:
    target, client = big
    rpc = list(client.stream_lookalikes(seed_ids=["u1", "u3"], k=10_000))
    assert len(rpc) == 10_000
    ids, scores = [u.user_id for u in rpc], [u.score for u in rpc]
    base = ["export", "lookalike", "--target", target, "--seed", "u1", "--seed", "u3"]
    base += ["-k", "10000", "--no-progress", "--attrs", "age,region,gender"]

    assert main([*base, "--out", str(tmp_path / "a.parquet")]) == 0
    assert "wrote 10,000 users" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == ["user_id", "score", "age", "region", "gender"]
    assert table.column("user_id").to_pylist() == ids
    assert table.column("score").to_pylist() == scores  # float32 as served, exactly
    first = int(ids[0][1:])
    assert table.column("age")[0].as_py() == 20 + first % 50
    genders = table.column("gender").to_pylist()
    assert {g for g in genders} == {"female", None}  # a missing attribute is null

    for name in ("a.csv", "a.csv.gz"):
        assert main([*base, "--out", str(tmp_path / name)]) == 0
        opener = gzip.open if name.endswith(".gz") else open
        with opener(tmp_path / name, "rt", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["user_id"] for r in rows] == ids
        assert [float(r["score"]) for r in rows] == scores
        assert rows[0]["age"] == str(20 + first % 50)
    assert not list(tmp_path.glob("*.partial"))


def test_export_segment_and_errors(big, tmp_path: Path, capsys) -> None:
    target, client = big
    client.build_segments(reducer="pca", min_cluster_size=500, sample_size=3000)
    seg = client.list_segments()[0]
    members = list(client.stream_segment_members(seg.segment_id))
    out = tmp_path / "seg.parquet"
    cmd = ["export", "segment", seg.segment_id, "--target", target, "--out", str(out)]
    assert main([*cmd, "--no-progress"]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "strength"]
    assert table.column("user_id").to_pylist() == [m.user_id for m in members]
    assert table.num_rows == seg.size
    capsys.readouterr()

    bad = ["export", "segment", "seg-9999", "--target", target, "--out", str(tmp_path / "x.csv")]
    assert main(bad) == 2
    assert "NOT_FOUND" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    wrong = [*cmd[:-1], str(tmp_path / "x.xlsx")]
    assert main(wrong) == 2
    assert ".parquet" in capsys.readouterr().err
