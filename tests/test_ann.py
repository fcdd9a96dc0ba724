"""Approximate indexes through the real server: the index turns from exact to HNSW when the
users pass the threshold, answers agree with exact search, per-query effort and `exact`,
deletes and replaced vectors, filters, and a restart that loads the HNSW generation."""

from __future__ import annotations

import numpy as np

from audience.client import AudienceClient, Profile

N = 1500


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clusters with a low intrinsic dimension, like text embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((12, dim))
    centres = np.random.default_rng(98).standard_normal((30, 12)) * 2
    z = centres[rng.integers(0, 30, n)] + rng.standard_normal((n, 12))
    x = z @ basis + 0.1 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("<f4")


def _overlap(a, b) -> float:
    return len({u.user_id for u in a.users} & {u.user_id for u in b.users}) / max(len(b.users), 1)


def _hnsw_server(start_server, data_dir):
    return start_server(
        data_dir=data_dir,
        index_kind="hnsw",
        ann_threshold=500,
        save_every_changes=400,
        lexical_dim=0,
    )


def test_hnsw_lookalikes_agree_with_exact_and_survive_restart(start_server, tmp_path):
    server = _hnsw_server(start_server, tmp_path / "data")
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        assert c.stats().index_type == "flat"  # below the threshold nothing is approximate
        dim = c.stats().dimension
        x = _vectors(N, dim)
        regions = ["eu", "us", "asia"]
        c.upsert_users(
            [
                Profile(f"u{i}", vector=x[i].tobytes(), attributes={"region": regions[i % 3]})
                for i in range(N)
            ],
            batch_size=250,
        )
        stats = c.stats()
        assert stats.index_type == "hnsw" and stats.indexed == N

        seeds = [[f"u{i}", f"u{i + 1}"] for i in range(0, 40, 2)]
        approx = [c.find_lookalikes(s, k=50) for s in seeds]
        exact = [c.find_lookalikes(s, k=50, exact=True) for s in seeds]
        assert np.mean([_overlap(a, e) for a, e in zip(approx, exact)]) >= 0.95
        deep = [c.find_lookalikes(s, k=50, search_effort=400) for s in seeds]
        assert np.mean([_overlap(d, e) for d, e in zip(deep, exact)]) >= 0.98
        # exact scores are the true cosine similarities
        q = x[0].astype(np.float64) + x[1]
        q /= np.linalg.norm(q)
        top = exact[0].users[0]
        assert abs(top.score - float(x[int(top.user_id[1:])] @ q)) < 1e-4

        # A filter (in the graph) and a narrow one (exact over the few users that pass).
        eu = c.find_lookalikes(["u0"], k=30, filters=["region = eu"])
        assert len(eu.users) == 30 and all(int(u.user_id[1:]) % 3 == 0 for u in eu.users)
        few = c.find_lookalikes(["u0"], k=5, exclude_ids=[f"u{i}" for i in range(3, N)])
        assert {u.user_id for u in few.users} == {"u1", "u2"}

        # Deleted users are never returned; a replaced vector is found where it now is.
        top_ids = [u.user_id for u in approx[0].users[:10]]
        c.delete_users(top_ids)
        again = c.find_lookalikes(seeds[0], k=50)
        assert not {u.user_id for u in again.users} & set(top_ids)
        c.upsert_users([Profile("u999", vector=x[1000].tobytes(), attributes={"region": "eu"})])
        moved = c.find_lookalikes(["u1000"], k=3)
        assert "u999" in {u.user_id for u in moved.users}
        before = [c.find_lookalikes(s, k=50) for s in seeds[1:]]
    server.stop()

    server = _hnsw_server(start_server, tmp_path / "data")
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        stats = c.stats()
        assert stats.index_type == "hnsw" and stats.indexed == N - 10
        after = [c.find_lookalikes(s, k=50) for s in seeds[1:]]
        assert [[u.user_id for u in r.users] for r in after] == [
            [u.user_id for u in r.users] for r in before
        ]


def test_flat_when_configured_or_small(start_server, tmp_path):
    server = start_server(index_kind="flat", ann_threshold=10, lexical_dim=0)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        dim = c.stats().dimension
        x = _vectors(200, dim)
        c.upsert_users([Profile(f"u{i}", vector=x[i].tobytes()) for i in range(200)])
        c.snapshot()
        assert c.stats().index_type == "flat"


def test_ivf_pq_reranks_with_exact_stored_vectors(start_server, tmp_path):
    """The compressed index keeps lossy codes; lookalikes are re-ranked with the stored exact
    vectors, so scores are true cosines and the top agrees with exact search."""
    n = 12_000  # ivf-pq trains once there are 10,000 users
    server = start_server(
        data_dir=tmp_path / "data",
        index_kind="ivf-pq",
        ann_threshold=10_000,
        save_every_changes=20_000,
        lexical_dim=0,
    )
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        dim = c.stats().dimension
        x = _vectors(n, dim, seed=3)
        c.upsert_users([Profile(f"u{i}", vector=x[i].tobytes()) for i in range(n)], batch_size=1000)
        c.snapshot()
        assert c.stats().index_type == "ivf-pq"

        seeds = [(i, i + 1) for i in range(0, 40, 2)]
        approx = [c.find_lookalikes([f"u{a}", f"u{b}"], k=50) for a, b in seeds]
        overlaps = []
        for (a, b), res in zip(seeds, approx):
            q = x[a].astype(np.float64) + x[b]
            q /= np.linalg.norm(q)
            cosine = x.astype(np.float64) @ q
            got = [int(u.user_id[1:]) for u in res.users]
            assert np.allclose([u.score for u in res.users], cosine[got], atol=1e-5)
            assert np.all(np.diff(cosine[got]) <= 1e-6)  # best first
            cosine[[a, b]] = -np.inf  # seeds are not returned
            overlaps.append(len(set(got) & set(np.argsort(-cosine)[:50].tolist())) / 50)
        assert np.mean(overlaps) >= 0.9

        gone = [u.user_id for u in approx[0].users[:5]]
        c.delete_users(gone)
        again = c.find_lookalikes(["u0", "u1"], k=50)
        assert not {u.user_id for u in again.users} & set(gone)
