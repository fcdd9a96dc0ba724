"""Damaged files in the data dir are detected at start; the server falls back and says so."""

from __future__ import annotations

from pathlib import Path

from test_segments import population

from audience.client import AudienceClient, InvalidArgument, Profile
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


def test_a_start_reads_attributes_saved_with_the_generation_and_the_writes_since(
    start_server, tmp_path: Path
) -> None:
    """Each generation saves the attribute columns; a start reads them, then the users written
    after that generation (changed values, a new attribute, a deletion), and falls back to the
    store's own attributes when the saved ones are damaged. Filters answer alike every time."""
    data = tmp_path / "attrs"
    filters = [
        "gender=female",
        "region=north",
        "age>=40",
        "premium=1",
        "tier=gold",
        "region=west",
        "gender=female and age<40",
    ]

    def reach(c: AudienceClient) -> dict[str, tuple[int, int] | str]:
        out: dict[str, tuple[int, int] | str] = {}
        for f in filters:
            try:
                r = c.estimate_reach([f])
                out[f] = (r.reach, r.total)
            except InvalidArgument as exc:  # an attribute no user has (yet)
                out[f] = exc.details
        return out

    server = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        c.upsert_users(crafted_profiles())
        c.snapshot()  # generation 1, with the attributes of these 18 users
        first = reach(c)
        c.upsert_users(
            [
                Profile("cook-1", texts=["Cooking rice"], attributes={"region": "west", "age": 70}),
                Profile("late", texts=["Baking bread"], attributes={"tier": "gold", "age": 45}),
            ]
        )
        c.delete_users(["code-3", "ball-4"])
        later = reach(c)
    server.stop()  # generation 2
    assert later != first and later["tier=gold"] == (1, 17) and later["region=west"] == (1, 17)
    index = data / "index"
    assert (index / "gen-00000001.attributes.npz").exists()
    for f in index.glob("gen-00000002.*"):  # as if the server had died before writing it
        f.unlink()

    again = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{again.port}") as c:
        assert reach(c) == later  # generation 1's columns + the writes since
        assert c.stats().warnings == ()
    again.stop()  # generation 2 again
    saved = index / "gen-00000002.attributes.npz"
    blob = bytearray(saved.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    saved.write_bytes(bytes(blob))

    third = start_server(data_dir=data)
    with AudienceClient(f"127.0.0.1:{third.port}") as c:
        s = c.stats()
        assert any("generation 2's attributes" in w for w in s.warnings), s.warnings
        assert reach(c) == later  # generation 1's (the newest intact) + the writes since
