"""The vector index kinds on their own: recall against exact search, removal (tombstones),
replacement, filters inside the search, the exact path for narrow filters, and a file round
trip. Clustered synthetic vectors, like real embeddings (uniform random ones are the hardest
case for any ANN index and unlike user vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audience.index._vectors import IndexOptions, build_index, read_index

DIM = 48
N = 12_000


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """Clusters with a low intrinsic dimension (12 latent factors), like text embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((12, DIM))
    centres = np.random.default_rng(98).standard_normal((60, 12)) * 2
    z = centres[rng.integers(0, 60, n)] + rng.standard_normal((n, 12))
    x = z @ basis + 0.1 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = _clustered(N)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # sparse ids, like store iids after deletes
    q = _clustered(40, seed=1)
    return ids, x, q


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want)]))


def _exact(ids, x, q, k):
    flat = build_index(IndexOptions("flat"), DIM, ids, x)
    return flat.search(q, k)[1]


# (kind, recall@50 it must reach at the default search effort)
KINDS = [("hnsw", 0.97), ("hnsw-f32", 0.97), ("hnsw-sq8", 0.93), ("ivf-pq", 0.6)]


@pytest.mark.parametrize(("kind", "floor"), KINDS)
def test_recall_remove_replace_filter_roundtrip(kind, floor, data, tmp_path: Path):
    ids, x, q = data
    index = build_index(IndexOptions(kind), DIM, ids, x)
    assert index.kind == kind and len(index) == N
    assert _recall(index.search(q, 50)[1], _exact(ids, x, q, 50)) >= floor
    # More effort finds more of the true neighbours; exact=True is exhaustive.
    deeper = index.search(q, 50, effort=512)[1]
    assert (
        _recall(deeper, _exact(ids, x, q, 50))
        >= _recall(index.search(q, 50)[1], _exact(ids, x, q, 50)) - 0.01
    )
    if kind in ("hnsw", "hnsw-f32"):  # exhaustive over fp16 / float32 vectors
        assert _recall(index.search(q, 50, exact=True)[1], _exact(ids, x, q, 50)) >= 0.99

    # Remove a third: never returned again, and the rest is still found.
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # removing twice is a no-op
    assert len(index) == N - len(gone)
    keep = np.setdiff1d(np.arange(N), np.arange(N)[::3])
    got = index.search(q, 50)[1]
    assert not set(got.ravel().tolist()) & set(gone.tolist())
    assert _recall(got, _exact(ids[keep], x[keep], q, 50)) >= floor - 0.05
    assert set(index.ids().tolist()) == set(ids[keep].tolist())

    # Replace a vector: the id is found by its new vector, once.
    target = int(ids[1])
    index.add(np.array([target]), q[:1])
    assert len(index) == N - len(gone)
    found = index.search(q[:1], 5)[1][0].tolist()
    assert found.count(target) == 1
    assert float(index.vector(target) @ q[0]) > 0.95

    # Filters inside the search: a broad one (graph) and a narrow one (exact path).
    for share in (0.5, 0.01):
        allowed = np.zeros(int(ids.max()) + 1, bool)
        chosen = ids[keep][: int(len(keep) * share)]
        allowed[chosen] = True
        got = index.search(q, 20, allowed)[1]
        assert set(got.ravel().tolist()) - {-1} <= set(chosen.tolist())
        assert (got >= 0).all()  # k results even when most users are filtered out

    # Written and read back: the same answers.
    path = tmp_path / "i.faiss"
    index.write(path)
    again = read_index(kind, path, DIM, IndexOptions(kind))
    assert len(again) == len(index)
    assert set(again.ids().tolist()) == set(index.ids().tolist())
    np.testing.assert_array_equal(again.search(q, 30)[1], index.search(q, 30)[1])
    all_ids, vecs = again.all_vectors()
    assert len(all_ids) == len(index) and vecs.shape == (len(index), DIM)
    if kind != "ivf-pq":  # the graph kinds give back the values added (to their precision)
        rows = keep[1:51]  # keep[0] is the replaced one
        tol = {"hnsw": 1e-3, "hnsw-f32": 0.0, "hnsw-sq8": 2e-2}[kind]
        for got_index in (index, again):
            np.testing.assert_allclose(got_index.vectors(ids[rows]), x[rows], atol=tol)
            np.testing.assert_allclose(got_index.vector(int(ids[rows[7]])), x[rows[7]], atol=tol)


def test_hnsw_tombstones_call_for_compaction(data):
    ids, x, _ = data
    index = build_index(IndexOptions("hnsw"), DIM, ids[:2000], x[:2000])
    assert not index.needs_compaction()
    index.remove(ids[:400])
    assert not index.needs_compaction()  # 20% < 25%
    index.remove(ids[400:800])
    assert index.needs_compaction()


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_a_filter_searched_in_the_index_keeps_its_recall(kind, data, monkeypatch):
    """A filter leaving 10% of the users, searched in the index (not exactly: the thresholds
    are lowered so that this small index takes the path a large one takes): the effort is
    raised for the filter's share, so recall stays near the unfiltered one."""
    from audience.index._vectors import _ann

    ids, x, q = data
    index = build_index(IndexOptions(kind), DIM, ids, x)
    monkeypatch.setattr(_ann, "EXACT_BELOW_USERS", 0)
    monkeypatch.setattr(_ann, "EXACT_BELOW_SHARE", 0.0)
    monkeypatch.setattr(_ann.HnswIndex, "SCAN_USERS_PER_EFFORT", 0)
    unfiltered = _recall(index.search(q, 50, effort=16)[1], _exact(ids, x, q, 50))
    rows = np.random.default_rng(3).random(N) < 0.1
    allowed = np.zeros(int(ids.max()) + 1, bool)
    allowed[ids[rows]] = True
    got = index.search(q, 50, allowed, effort=16)[1]
    assert set(got.ravel().tolist()) - {-1} <= set(ids[rows].tolist())
    assert _recall(got, _exact(ids[rows], x[rows], q, 50)) >= unfiltered - 0.05


def test_hnsw_scans_exactly_when_that_is_cheaper(data):
    """A filter leaving few users is answered by a scan of their stored vectors: exact."""
    ids, x, q = data
    index = build_index(IndexOptions("hnsw"), DIM, ids, x)
    rows = np.random.default_rng(4).random(N) < 0.3
    allowed = np.zeros(int(ids.max()) + 1, bool)
    allowed[ids[rows]] = True
    effort = index._filtered_effort(256, 50, rows.mean())  # the graph's, for 3,600 of 12,000
    assert index._scan_is_cheaper(int(rows.sum()), effort)
    got = index.search(q, 50, allowed)[1]
    assert _recall(got, _exact(ids[rows], x[rows], q, 50)) >= 0.99


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_a_filter_nobody_passes_returns_nobody(kind, data):
    ids, x, q = data
    index = build_index(IndexOptions(kind), DIM, ids, x)
    scores, got = index.search(q[:2], 10, np.zeros(int(ids.max()) + 1, bool))
    assert (got == -1).all() and np.isneginf(scores).all()
