"""The engine's parts used on their own: the encode path with no store (in another process),
a seed strategy and segment stages plugged in from outside, the vocabulary only changed by
committed writes. Real model, real files in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audience.index import (
    AttributeSpec,
    Engine,
    EngineConfig,
    Filter,
    HdbscanClusterer,
    InvalidQuery,
    KMeansClusterer,
    LookalikeQuery,
    PcaReducer,
    Population,
    Profile,
    Search,
    Seed,
    SeedSet,
    SegmentBuilder,
    SegmentParams,
    TextItem,
    UmapReducer,
)
from audience.index._segments import ClusterResult, default_stages
from conftest import ATTRIBUTES, crafted_profiles

SPECS = tuple(AttributeSpec.parse(a) for a in ATTRIBUTES)


def engine_profiles() -> list[Profile]:
    """The crafted population as engine profiles."""
    return [
        Profile(
            p.user_id,
            texts=tuple(TextItem(t.text, t.weight or 1.0, t.timestamp) for t in p.texts),
            attributes=dict(p.attributes),
        )
        for p in crafted_profiles()
    ]


@pytest.fixture
def engine(tmp_path: Path, embedder):
    e = Engine.open(EngineConfig(data_dir=tmp_path / "data", attributes=SPECS), embedder=embedder)
    yield e
    e.close()


# ---------------------------------------------------------------- the encode path

_ENCODE_IN_A_WORKER = """
import json, sys
import numpy as np
from audience.index import AttributeSpec, EngineConfig, Profile, ProfileEncoder, TextItem
job = json.loads(sys.stdin.read())
config = EngineConfig(
    data_dir=job["data_dir"],
    attributes=tuple(AttributeSpec.parse(a) for a in job["attributes"]),
    encoder_backend=job["backend"],
)
encoder = ProfileEncoder.open(config, vocabulary=[tuple(v) for v in job["vocabulary"]])
profiles = [
    Profile(p["id"], tuple(TextItem(*t) for t in p["texts"]), p["attributes"])
    for p in job["profiles"]
]
done = encoder.encode(profiles)
print(json.dumps({"vectors": done.vectors.tolist(), "fingerprint": encoder.fingerprint}))
"""


def test_encode_path_runs_with_no_store_in_another_process(engine, embedder) -> None:
    """A batch worker (a fresh interpreter, no store, no server) encodes profiles to the
    very vectors the engine stored for them."""
    profiles = engine_profiles()
    engine.upsert(profiles)
    job = {
        # where the session's model export lives (the embedder's data dir)
        "data_dir": str(Path(embedder.directory).parent.parent),
        "backend": engine.config.encoder_backend,
        "attributes": list(ATTRIBUTES),
        "vocabulary": engine.encoder.vocabulary.entries(),
        "profiles": [
            {
                "id": p.user_id,
                "texts": [[t.text, t.weight, t.timestamp] for t in p.texts],
                "attributes": p.attributes,
            }
            for p in profiles
        ],
    }
    done = subprocess.run(
        [sys.executable, "-c", _ENCODE_IN_A_WORKER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["fingerprint"] == engine.encoder.fingerprint
    worker = np.array(out["vectors"], np.float32)
    stored = np.stack(
        [
            np.frombuffer(engine.get_user(p.user_id, include_vector=True).vector, "<f4")
            for p in profiles
        ]
    )
    assert worker.shape == stored.shape
    assert np.min(np.sum(worker * stored, axis=1)) > 0.9999


def test_vocabulary_changes_only_with_committed_writes(engine) -> None:
    extra = [Profile(f"extra-{i}", (TextItem("baking bread in a hot oven"),)) for i in range(4)]
    engine.upsert(engine_profiles() + extra)  # 22 users: enough for segments
    before = engine.encoder.vocabulary.entries()
    # a write that fails (the second profile has nothing to encode) takes no slot
    with pytest.raises(InvalidQuery, match=r"profiles\[1\]"):
        engine.upsert(
            [
                Profile("new-1", (TextItem("bread"),), {"region": "atlantis"}),
                Profile("new-2", (), {"undeclared": 1.0}),
            ]
        )
    # nor does placing a profile that is not stored
    engine.build_segments(SegmentParams(reducer="pca", min_cluster_size=4))
    engine.assign_segments([Profile("x", (TextItem("bread oven"),), {"region": "lemuria"})])
    assert engine.encoder.vocabulary.entries() == before
    engine.upsert([Profile("new-3", (TextItem("bread"),), {"region": "atlantis"})])
    assert ("region", "atlantis", len([e for e in before if e[0] == "region"])) in (
        engine.encoder.vocabulary.entries()
    )


# ---------------------------------------------------------------- a seed strategy from outside


class FirstSeedOnly:
    """A strategy of its own: only the first seed counts."""

    name = "first-seed"

    def prepare(self, seeds: SeedSet, background: object) -> np.ndarray:
        v = seeds.vectors[0]
        return (v / np.linalg.norm(v)).astype(np.float32)

    def rank(self, prepared: np.ndarray, search: Search, k: int):
        return search.top(prepared, k)


def test_a_new_seed_strategy_plugs_in_without_touching_the_rest(tmp_path: Path, embedder) -> None:
    config = EngineConfig(data_dir=tmp_path / "data", attributes=SPECS)
    engine = Engine.open(config, embedder=embedder, strategy=FirstSeedOnly())
    try:
        engine.upsert(engine_profiles())
        ids = [p.user_id for p in engine_profiles()]
        vec = {u: np.frombuffer(engine.get_user(u, include_vector=True).vector, "<f4") for u in ids}
        women = {u for u in ids if int(u.split("-")[1]) % 2}  # the crafted genders
        for filters, allowed in (((), set(ids)), ((Filter("gender", equals="female"),), women)):
            query = LookalikeQuery(
                seeds=(Seed(user_id="cook-1"), Seed(user_id="code-2")), k=5, filters=filters
            )
            got = engine.find_lookalikes(query)
            pool = sorted(allowed - {"cook-1", "code-2"})
            scores = {u: float(vec[u] @ vec["cook-1"]) for u in pool}
            want = sorted(pool, key=lambda u: -scores[u])[:5]
            assert got.users.user_ids == want
            assert np.allclose(got.users.scores, [scores[u] for u in want], atol=1e-5)
            assert got.eligible == len(pool)
    finally:
        engine.close()


# ---------------------------------------------------------------- segment stages


def blobs(n_per: int = 60, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated groups of unit vectors, and which group each is in."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3] * 4
    x = np.concatenate([c + rng.normal(0, 0.3, (n_per, dim)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(3), n_per)


class TruthClusterer:
    """A clusterer that knows the answer: shows a stage can come from anywhere."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.seen = 0

    def cluster(self, space: np.ndarray) -> ClusterResult:
        self.seen = len(space)
        labels = self.truth[: len(space)].astype(np.int32)
        return ClusterResult(labels, np.ones(len(space), np.float32), {0: 1.0, 1: 1.0, 2: 1.0})

    def __repr__(self) -> str:
        return "truth"


class WordDescriber:
    def describe(self, labels, docs, attributes, *, groups=None, embed=None):
        from audience.index._segments import SegmentDescription

        keys = [lab for lab in set(labels.tolist()) if lab >= 0] + list(groups or {})
        return {k: SegmentDescription(k, 0, 0.0, [f"group{k}"], {}) for k in keys}

    def __repr__(self) -> str:
        return "words"


def _population(x: np.ndarray) -> Population:
    iids = np.arange(len(x), dtype=np.int64)
    return Population(
        iids,
        x,
        {int(i): f"u{i}" for i in iids},
        lambda wanted: {int(i): ([["text", 1.0, 0]], {}) for i in wanted},
    )


def test_segment_stages_are_objects_given_to_the_builder() -> None:
    x, truth = blobs()
    clusterer = TruthClusterer(truth)
    builder = SegmentBuilder(
        SegmentParams(sample_size=len(x)),
        reducer=PcaReducer(),
        clusterer=clusterer,
        describer=WordDescriber(),
    )
    model = builder.build(_population(x))
    assert clusterer.seen == len(x)
    assert model.stats["stages"] == {"reducer": "pca", "clusterer": "truth", "describer": "words"}
    assert sorted(s.keywords[0] for s in model.segments) == ["group0", "group1", "group2"]
    assert np.array_equal(model.member_labels, truth)
    labels, _ = model.assign(x[:5])  # placed like the build did
    assert labels.tolist() == truth[:5].tolist()


def test_default_stages_say_what_runs() -> None:
    free = default_stages(SegmentParams())
    assert isinstance(free.clusterer, HdbscanClusterer)
    assert isinstance(free.reducer, UmapReducer) and free.reducer.on == "pca"
    exact = default_stages(SegmentParams(target_segments=3))
    assert isinstance(exact.clusterer, KMeansClusterer) and exact.clusterer.k == 3
    assert isinstance(exact.reducer, UmapReducer) and exact.reducer.on == "vectors"
    assert isinstance(default_stages(SegmentParams(reducer="pca")).reducer, PcaReducer)
    x, truth = blobs()
    model = SegmentBuilder(SegmentParams(reducer="pca", target_segments=3)).build(_population(x))
    assert len(model.segments) == 3  # exactly K, by the k-means clusterer
    assert model.stats["stages"]["clusterer"] == "kmeans(k=3)"


@pytest.mark.parametrize(
    ("field", "params"),
    [
        ("reducer", {"reducer": "tsne"}),
        ("min_cluster_size", {"min_cluster_size": 1}),
        ("sample_size", {"sample_size": 10}),
        ("target_segments", {"target_segments": -1}),
    ],
)
def test_segment_params_are_request_errors(field: str, params: dict) -> None:
    with pytest.raises(InvalidQuery, match=f"^{field}: "):
        SegmentParams(**params)


def test_exactly_k_chooses_its_method_by_neighbour_agreement() -> None:
    """Another method replaces k-means only when its segments keep users with their nearest
    neighbours clearly (0.05) better; the build reports the choice and the candidates."""
    from audience.index._segments._choose import choose

    x, truth = blobs()
    shuffled = np.random.default_rng(1).permutation(truth)

    def result(labels):
        return lambda: ClusterResult(labels.astype(np.int32), np.ones(len(labels)), {})

    better = choose({"kmeans": result(shuffled), "umap-kmeans": result(truth)}, x)
    assert better.method == "umap-kmeans" and "best neighbour agreement 1.000" in better.reason
    tie = choose({"kmeans": result(truth), "umap-kmeans": result(truth)}, x)
    assert tie.method == "kmeans"
    mostly = truth.copy()
    mostly[:2] = (mostly[:2] + 1) % 3  # two users moved: barely worse than the truth
    close = choose({"kmeans": result(mostly), "umap-kmeans": result(truth)}, x)
    assert close.method == "kmeans" and "is not 0.05 better" in close.reason
    # Asked for 3: a method that found 2 is not chosen, however well its users agree.
    two = np.where(truth == 2, 1, truth)
    asked = choose({"kmeans": result(shuffled), "tree": result(two)}, x, k=3)
    assert asked.method == "kmeans" and "tree found 2 of 3" in asked.reason

    chosen = SegmentBuilder(SegmentParams(target_segments=3)).build(_population(x))
    summary = chosen.stats["choice"]
    assert [c["method"] for c in summary["candidates"]] == ["kmeans", "umap-kmeans", "tree"]
    assert summary["method"] in ("kmeans", "umap-kmeans", "tree") and summary["reason"]
    assert len(chosen.segments) == 3 and len(chosen.groups) == 1


def test_umap_neighbours_are_found_exactly_with_each_row_first() -> None:
    from audience.index._segments._stages import cosine_neighbours

    x = np.random.default_rng(0).standard_normal((600, 12)).astype(np.float32)
    x[1] = x[0] * 3  # a duplicate direction: row 1 must still come first in its own list
    indices, distances = cosine_neighbours(x, 8)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    assert indices.shape == (600, 8) and (indices[:, 0] == np.arange(600)).all()
    assert indices[0, 1] == 1 and indices[1, 1] == 0
    expected = np.argsort(-sims, axis=1, kind="stable")[2:, 1:8]
    assert (indices[2:, 1:] == expected).mean() > 0.99  # rounding may swap near-ties
    got = np.take_along_axis(sims, indices.astype(np.int64), axis=1)
    assert (
        np.allclose(distances, np.maximum(1 - got, 0), atol=1e-5) and (distances[:, 0] == 0).all()
    )


def test_umap_over_a_large_sample_does_not_go_through_pynndescent(monkeypatch) -> None:
    """From UMAP_EXACT_BELOW rows on, UMAP would find the neighbours with pynndescent (a
    numba compile of ~1 min in every process); the reducer hands it exact ones instead."""
    import warnings

    import umap.umap_

    from audience.index._segments._stages import UMAP_EXACT_BELOW, FitSample

    class NoPynndescent:
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("UMAP searched the neighbours itself")

    monkeypatch.setattr(umap.umap_, "NNDescent", NoPynndescent)
    rng = np.random.default_rng(0)
    n = UMAP_EXACT_BELOW + 104
    truth = np.arange(n) % 3
    centres = rng.standard_normal((3, 20)) * 4
    x = (centres[truth] + rng.standard_normal((n, 20))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="precomputed_knn")  # ignored: a failure
        space = UmapReducer(on="pca").reduce(FitSample(x, x))
    labels = HdbscanClusterer(min_cluster_size=200).cluster(space).labels
    assert labels.max() + 1 == 3 and (labels >= 0).mean() > 0.95
    for j in range(3):  # each segment is one blob
        assert len(set(truth[labels == j])) == 1
