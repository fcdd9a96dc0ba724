"""Damaged files in the data dir are detected at start; the server falls back and says so."""

from __future__ import annotations

from pathlib import Path

from test_segments import population

from audience.client import AudienceClient, Profile
from conftest import crafted_profiles


def answers(c: AudienceClient) -> list[str]:
    return [u.user_id for u in c.find_lookalikes(seed_ids=["cook-0"], k=10).users]


def test_corrupt_index_generations_fall_back(start_server, tmp_path: Path) -> None:
    data = tmp_path / "rec"
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        c.upsert_users(crafted_profiles())
        c.snapshot()  # generation 1
        c.upsert_users([Profile("late", texts=["baking bread with sourdough starter"])])
        before = answers(c)
    server.stop()  # generation 2
    gens = sorted((data / "index").glob("gen-*.faiss"))
    assert len(gens) == 2
    blob = bytearray(gens[-1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    gens[-1].write_bytes(bytes(blob))

    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}") as c:
        s = c.stats()
        assert any("index generation 2" in w for w in s.warnings), s.warnings
        assert s.users == s.indexed == 19
        assert answers(c) == before  # generation 1 + the store's later writes
    again.stop()

    for g in (data / "index").glob("gen-*.faiss"):
        g.write_bytes(g.read_bytes()[:100])  # truncated: nothing usable left
    third = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{third.port}") as c:
        s = c.stats()
        assert len(s.warnings) >= 1 and s.users == s.indexed == 19
        assert answers(c) == before  # rebuilt from the store


def test_corrupt_segment_model_falls_back(start_server, tmp_path: Path) -> None:
    data = tmp_path / "seg"
    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        c.upsert_users(population(30))
        c.build_segments(reducer="pca", min_cluster_size=10)
        first = [(s.segment_id, s.size) for s in c.list_segments()]
        c.build_segments(reducer="pca", min_cluster_size=10)
    server.stop()
    current = (data / "segments" / "CURRENT").read_text().strip()
    arrays = data / "segments" / current / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:-10])

    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}") as c:
        assert any("segment model" in w for w in c.stats().warnings)
        assert [(s.segment_id, s.size) for s in c.list_segments()] == first
