"""Seed strategies through the real server, each against a brute-force numpy version of it:
centroid, sum-scores, best-score, classifier, multi-interest, auto; with exclusions,
filters, fraction, streaming and an HNSW index. A crafted population where the answer is
known: three separated interests; a seed list of two of them must bring both. Seed
diagnostics find two interests in a two-interest list and one in a one-interest list."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from audience.client import AudienceClient, InvalidArgument, LookalikeQuery, Profile

INTERESTS = ("a", "b", "c")
PER_INTEREST = 90
RANDOM_USERS = 60


def _population(dim: int, seed: int = 3) -> tuple[list[Profile], dict[str, str]]:
    """Users around three random centres (cosine ~0.5 to their centre's other users), plus
    users in no interest; every other user female."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(INTERESTS), dim))
    profiles, interest_of = [], {}
    for j, name in enumerate(INTERESTS):
        for i in range(PER_INTEREST):
            profiles.append(_user(f"{name}-{i}", centres[j] + rng.normal(size=dim), i))
            interest_of[f"{name}-{i}"] = name
    for i in range(RANDOM_USERS):
        profiles.append(_user(f"r-{i}", rng.normal(size=dim), i))
        interest_of[f"r-{i}"] = "none"
    return profiles, interest_of


def _user(user_id: str, v: np.ndarray, i: int) -> Profile:
    v = (v / np.linalg.norm(v)).astype("<f4")
    gender = "female" if i % 2 else "male"
    return Profile(user_id, vector=v.tobytes(), attributes={"gender": gender, "age": 20 + i % 50})


@pytest.fixture
def crafted(start_server):
    server = start_server(lexical_dim=0)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60.0) as client:
        dim = client.stats().dimension
        profiles, interest_of = _population(dim)
        client.upsert_users(profiles, batch_size=100)
        ids = [p.user_id for p in profiles]  # upsert order = internal id order
        vectors = np.stack(
            [np.frombuffer(client.get_user(u, include_vector=True).vector, "<f4") for u in ids]
        )
        yield client, ids, vectors, interest_of


SEEDS_AB = [f"a-{i}" for i in range(6)] + [f"b-{i}" for i in range(6)]


# ---------------------------------------------------------------- brute force, in numpy


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _brute(strategy: str, ids, X, seeds, allowed, k):
    """(user ids, scores) of the strategy over the allowed users, best first."""
    from audience.index._background import Background
    from audience.index._interests import find_interests

    row = {u: i for i, u in enumerate(ids)}
    S = X[[row[s] for s in seeds]].astype(np.float64)
    if strategy == "centroid":
        q = S.mean(0) / np.linalg.norm(S.mean(0))
        scores = X @ q
    elif strategy == "sum-scores":
        scores = X @ S.sum(0)
    elif strategy == "best-score":
        scores = _sigmoid((X @ S.T).max(1))
    elif strategy == "classifier":
        from sklearn.linear_model import LogisticRegression

        rest = np.array([i for i, u in enumerate(ids) if u not in set(seeds)])[:1000]
        x = np.vstack([S, X[rest]])
        y = np.r_[np.ones(len(S)), np.zeros(len(rest))]
        w = np.r_[np.full(len(S), len(rest) / len(S)), np.ones(len(rest))]
        model = LogisticRegression(C=1.0, max_iter=100, tol=1e-3).fit(x, y, sample_weight=w)
        scores = _sigmoid(X @ model.coef_[0] + model.intercept_[0])
    else:  # multi-interest: interests found as the server does, then quotas, interleaved
        bg = Background(np.arange(len(ids)), X, X.mean(0))
        interests = find_interests(S, bg)
        # each interest's mean (less the average user), shrunk toward all seeds' mean by
        # tau^2 / (tau^2 + sigma^2 / n): empirical Bayes from the seeds' spread
        groups = [np.flatnonzero(interests.labels == j) for j in range(interests.count)]
        C = S - X.mean(0)
        every = C[np.concatenate(groups)]
        means = [C[g].mean(0) for g in groups]
        if len(groups) > 1:
            sigma2 = np.mean([((C[i] - m) ** 2).sum() for g, m in zip(groups, means) for i in g])
            tau2 = np.mean([
                max(((m - every.mean(0)) ** 2).sum() - sigma2 * (1 / len(g) - 1 / len(every)), 0)
                for g, m in zip(groups, means)
            ])  # fmt: skip
            assert tau2 > 0  # the crafted interests are far apart
            means = [every.mean(0) + tau2 / (tau2 + sigma2 / len(g)) * (m - every.mean(0))
                     for g, m in zip(groups, means)]  # fmt: skip
        queries = [m / np.linalg.norm(m) for m in means]
        shares = np.array([len(g) for g in groups]) / sum(len(g) for g in groups)
        raw = shares * k
        quota = np.floor(raw).astype(int)
        for j in sorted(range(len(raw)), key=lambda j: (-(raw[j] - quota[j]), j))[
            : k - quota.sum()
        ]:
            quota[j] += 1
        lists = []
        for q in queries:
            s = X @ q
            order = [i for i in np.argsort(-s, kind="stable") if ids[i] in allowed]
            lists.append([(ids[i], float(s[i])) for i in order])
        taken, out, seen = [0] * len(lists), [], set()
        keys = []  # (position key, list): the next pick is the smallest (taken + 1) / quota
        while len(out) < k:
            keys = [((taken[j] + 1) / max(quota[j], 1), j) for j in range(len(lists))
                    if taken[j] < quota[j] and any(u not in seen for u, _ in lists[j])]  # fmt: skip
            if not keys:
                break
            _, j = min(keys)
            u, s = next((u, s) for u, s in lists[j] if u not in seen)
            seen.add(u)
            out.append((u, s))
            taken[j] += 1
        return [u for u, _ in out], [s for _, s in out]
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] in allowed][:k]
    return [ids[i] for i in order], [float(scores[i]) for i in order]


@pytest.mark.parametrize(
    "strategy", ["centroid", "sum-scores", "best-score", "classifier", "multi-interest"]
)
def test_each_strategy_equals_its_brute_force_version(crafted, strategy: str) -> None:
    client, ids, X, interest_of = crafted
    excluded = {"a-10", "b-11", "c-12"}
    females = {u for u in ids if int(u.split("-")[1]) % 2}
    for filters, allowed in (((), set(ids)), (("gender=female",), females)):
        allowed = allowed - excluded - set(SEEDS_AB)
        query = LookalikeQuery(
            seed_ids=SEEDS_AB, k=40, strategy=strategy, exclude_ids=sorted(excluded),
            filters=filters,
        )  # fmt: skip
        got = client.find_lookalikes(query)
        want_ids, want_scores = _brute(strategy, ids, X, SEEDS_AB, allowed, 40)
        assert got.strategy == strategy
        assert [u.user_id for u in got.users] == want_ids
        assert np.allclose([u.score for u in got.users], want_scores, atol=2e-4)
        # fraction and streaming give the same audience
        streamed = list(client.stream_lookalikes(query))
        assert [u.user_id for u in streamed] == want_ids
        share = LookalikeQuery(
            seed_ids=SEEDS_AB, fraction=40 / len(allowed), strategy=strategy,
            exclude_ids=sorted(excluded), filters=filters,
        )  # fmt: skip
        assert [u.user_id for u in client.find_lookalikes(share).users] == want_ids


def test_two_separated_interests_in_the_seeds_both_appear(crafted) -> None:
    client, ids, X, interest_of = crafted
    for strategy in ("multi-interest", "auto"):
        got = client.find_lookalikes(LookalikeQuery(seed_ids=SEEDS_AB, k=60, strategy=strategy))
        found = [interest_of[u.user_id] for u in got.users]
        assert found.count("a") >= 25 and found.count("b") >= 25, (strategy, found)
        assert got.strategy == "multi-interest"
    centroid = client.find_lookalikes(LookalikeQuery(seed_ids=SEEDS_AB, k=60))
    assert centroid.strategy == "centroid"
    # one interest: auto is the centroid
    one = LookalikeQuery(seed_ids=[f"c-{i}" for i in range(12)], k=30, strategy="auto")
    got = client.find_lookalikes(one)
    assert got.strategy == "centroid"
    assert all(interest_of[u.user_id] == "c" for u in got.users)


def test_hnsw_index_answers_every_strategy_exactly_when_asked(start_server) -> None:
    server = start_server(lexical_dim=0, index_kind="hnsw", ann_threshold=100)
    with AudienceClient(f"127.0.0.1:{server.port}", timeout=60.0) as client:
        profiles, _ = _population(client.stats().dimension, seed=5)
        client.upsert_users(profiles, batch_size=100)
        client.rebuild_index()
        assert client.stats().index_type.startswith("hnsw")
        ids = [p.user_id for p in profiles]
        X = np.stack(
            [np.frombuffer(client.get_user(u, include_vector=True).vector, "<f4") for u in ids]
        )
        for strategy in ("best-score", "multi-interest", "sum-scores"):
            query = LookalikeQuery(seed_ids=SEEDS_AB, k=30, strategy=strategy, exact=True)
            got = client.find_lookalikes(query)
            want, scores = _brute(strategy, ids, X, SEEDS_AB, set(ids) - set(SEEDS_AB), 30)
            brute = dict(zip(want, scores))
            assert {u.user_id for u in got.users} == set(want), strategy
            # the same order, but for users whose scores tie within fp16's rounding
            for u, w in zip(got.users, want):
                assert u.user_id == w or abs(brute[u.user_id] - brute[w]) < 1e-3, (strategy, u, w)


def test_diagnostics_quality_and_explain(crafted) -> None:
    client, ids, X, interest_of = crafted
    two = client.diagnose_seeds(LookalikeQuery(seed_ids=SEEDS_AB, k=50))
    assert len(two.interests) == 2
    groups = sorted({interest_of[s] for s in i.seeds} for i in two.interests)
    assert groups == [{"a"}, {"b"}]
    assert two.suggested_strategy == "multi-interest"
    assert any("2 interests" in w for w in two.warnings)
    assert two.cohesion > two.background_cohesion
    one = client.diagnose_seeds(LookalikeQuery(seed_ids=[f"a-{i}" for i in range(12)], k=50))
    assert len(one.interests) == 1 and one.suggested_strategy == "centroid"
    # a list of one interest is found sooner than a list of random users
    noise = client.diagnose_seeds(LookalikeQuery(seed_ids=[f"r-{i}" for i in range(12)], k=50))
    assert one.quality is not None and noise.quality is not None
    assert one.quality.lift_at_5 + one.quality.lift_at_10 > 2 * (
        noise.quality.lift_at_5 + noise.quality.lift_at_10
    )
    assert any("hardly more alike than random users" in w for w in noise.warnings)
    # an off-topic seed is an outlier
    odd = client.diagnose_seeds(
        LookalikeQuery(seed_ids=[f"a-{i}" for i in range(12)] + ["r-3"], k=50)
    )
    assert odd.outliers == ("r-3",)
    # with the audience: quality, diagnostics and each user's closest seed
    got = client.find_lookalikes(
        LookalikeQuery(seed_ids=SEEDS_AB, k=20, strategy="multi-interest", explain=True)
    )
    assert got.quality is not None and got.diagnostics is not None
    assert 0 <= got.quality.heldout_recall <= 1 and got.quality.heldout_seeds == 12
    for user in got.users:
        assert user.closest_seed in SEEDS_AB
        assert interest_of[user.closest_seed] == interest_of[user.user_id]
    # few seeds: no estimate, and a warning
    few = client.diagnose_seeds(LookalikeQuery(seed_ids=["a-1", "a-2"], k=10))
    assert few.quality is None and any("only 2 seeds" in w for w in few.warnings)


def _mean_pair_cosine(X: np.ndarray) -> float:
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    G = U @ U.T
    return float((G.sum() - np.trace(G)) / (len(U) * (len(U) - 1)))


def test_quality_carries_the_audience_cohesion(crafted) -> None:
    """The audience's cohesion (what follows its precision) is the mean cosine between two of
    its users, beside two random eligible users'; a pure audience is tighter than a mixed one."""
    client, ids, X, interest_of = crafted
    row = {u: i for i, u in enumerate(ids)}
    seeds = [f"a-{i}" for i in range(12)]
    pure = client.find_lookalikes(LookalikeQuery(seed_ids=seeds, k=40, estimate_quality=True))
    assert {interest_of[u.user_id] for u in pure.users} == {"a"}
    assert pure.quality is not None
    got = X[[row[u.user_id] for u in pure.users]]
    assert pure.quality.cohesion == pytest.approx(_mean_pair_cosine(got), abs=1e-4)
    eligible = X[[row[u] for u in ids if u not in seeds]]  # the whole population is the sample
    assert pure.quality.background_cohesion == pytest.approx(_mean_pair_cosine(eligible), abs=1e-4)
    mixed = client.find_lookalikes(LookalikeQuery(seed_ids=SEEDS_AB, k=120, estimate_quality=True))
    assert {"a", "b"} <= {interest_of[u.user_id] for u in mixed.users}
    assert mixed.quality is not None
    assert pure.quality.cohesion > mixed.quality.cohesion + 0.1
    assert mixed.quality.cohesion > pure.quality.background_cohesion


def test_quality_carries_the_audience_interest_fit(crafted) -> None:
    """Interest fit: the mean over the audience of the best centred cosine to where the
    population of a seed interest stands (the mean of the background users nearest the
    interest's seeds, less the average user); beside the same for random eligible users."""
    from audience.index._background import Background
    from audience.index._interests import find_interests

    client, ids, X, interest_of = crafted
    row = {u: i for i, u in enumerate(ids)}
    query = LookalikeQuery(seed_ids=SEEDS_AB, k=60, strategy="multi-interest")
    got = client.find_lookalikes(replace(query, estimate_quality=True))
    assert got.quality is not None
    S = X[[row[s] for s in SEEDS_AB]]
    mu = X.mean(0)  # the sample is the whole population; its mean keeps the seeds
    rest = X[[row[u] for u in ids if u not in set(SEEDS_AB)]]
    interests = find_interests(S, Background(np.arange(len(rest)), rest, mu))
    assert interests.count == 2
    m = max(2, min(50, len(rest) // 20))
    directions = []
    for j in range(interests.count):
        c = S[interests.labels == j].sum(0)
        nearest = np.argsort(-(rest @ (c / np.linalg.norm(c)) - rest @ mu), kind="stable")[:m]
        d = rest[nearest].mean(0) - mu
        directions.append(d / np.linalg.norm(d))

    def fit(vectors):
        centred = vectors - mu
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        return float((centred @ np.array(directions).T).max(1).mean())

    audience = X[[row[u.user_id] for u in got.users]]
    assert got.quality.interest_fit == pytest.approx(fit(audience), abs=1e-3)
    assert got.quality.background_interest_fit == pytest.approx(fit(rest), abs=1e-3)
    # the audience drawn from both interests sits where they do; random users do not
    assert got.quality.interest_fit > got.quality.background_interest_fit + 0.2
    # an audience of the third interest (everyone else excluded) fits the seeds' interests
    # no better than random users do
    others = [u for u in ids if interest_of[u] != "c"]
    off = client.find_lookalikes(replace(query, exclude_ids=others, estimate_quality=True))
    assert {interest_of[u.user_id] for u in off.users} == {"c"}
    assert off.quality is not None
    assert off.quality.interest_fit < got.quality.background_interest_fit + 0.05


def test_quality_carries_the_audience_interest_share(crafted) -> None:
    """Interest share estimates precision: an audience drawn from the seeds' two interests is
    all in them, random eligible users are in them about as often as they really are (168 of
    the 318 non-seeds), and an audience of the third interest is not in them at all."""
    client, ids, _, interest_of = crafted
    query = LookalikeQuery(seed_ids=SEEDS_AB, k=60, strategy="multi-interest")
    got = client.find_lookalikes(replace(query, estimate_quality=True))
    assert got.quality is not None
    assert {interest_of[u.user_id] for u in got.users} == {"a", "b"}
    assert got.quality.interest_share == pytest.approx(1.0)
    truth = np.mean([interest_of[u] in "ab" for u in ids if u not in set(SEEDS_AB)])
    assert got.quality.background_interest_share == pytest.approx(truth, abs=0.1)
    others = [u for u in ids if interest_of[u] != "c"]
    off = client.find_lookalikes(replace(query, exclude_ids=others, estimate_quality=True))
    assert off.quality is not None
    assert off.quality.interest_share <= 0.05


def test_interest_share_counts_users_nearer_an_interest_than_any_rival_region() -> None:
    """The share against given regions: a region whose nearest (an interest or another
    region) is an interest, or a region already the interest's, is the interest's own and
    does not compete; the others are rivals; the share is the mean over partitions."""
    from audience.index._seedquality import interest_share

    e = np.eye(4, dtype=np.float32)

    def unit(v):
        return v / np.linalg.norm(v)

    interest = e[[0]]
    near = unit(e[0] + 0.5 * e[1])  # 0.89 to the interest: its own
    chained = unit(e[1] + 0.3 * e[0])  # nearest is `near` (0.69): its own too
    rival_a, rival_b = e[2], unit(e[2] + e[3])  # each other's nearest (0.71): rivals
    regions = np.stack([near, chained, rival_a, rival_b])
    users = np.stack([e[0], chained, e[2], e[3]])  # in, in (0.29 to the interest), out, out
    zero = np.zeros(4, np.float32)
    assert interest_share(users, interest, zero, [regions]) == pytest.approx(0.5)
    # a partition with no rival counts everyone in; two partitions average
    both = [regions, np.stack([near, e[1]])]
    assert interest_share(users, interest, zero, both) == pytest.approx(0.75)
    assert interest_share(users[:0], interest, zero, [regions]) == 0.0


def test_background_regions_find_separated_groups() -> None:
    """Spherical k-means of the centred sample: three separated groups come back as three
    regions in every partition, made once per k."""
    from audience.index._background import PARTITIONS, Background

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    X = np.vstack([c + 0.3 * rng.normal(size=(40, 32)) for c in centres]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    bg = Background(np.arange(len(X)), X, X.mean(0))
    parts = bg.regions(3)
    assert len(parts) == PARTITIONS and bg.regions(3) is parts
    truth = np.repeat(np.arange(3), 40)
    centred = X - X.mean(0)
    for regions in parts:
        assert regions.shape == (3, 32)
        assert np.allclose(np.linalg.norm(regions, axis=1), 1.0, atol=1e-5)
        found = (centred @ regions.T).argmax(1)
        assert len({(t, f) for t, f in zip(truth, found)}) == 3  # one region per group
    small = Background(np.arange(5), X[:5], X[:5].mean(0))  # fewer users than regions asked
    assert small.regions(40) is small.regions(40) and small.regions(40)[0].shape == (5, 32)


def test_bad_strategy_names_are_invalid_argument(crafted) -> None:
    client = crafted[0]
    for name in ("centroids", "best_score", "AUTO"):
        with pytest.raises(InvalidArgument, match="strategy: unknown strategy"):
            client.find_lookalikes(LookalikeQuery(seed_ids=["a-1"], k=5, strategy=name))
        with pytest.raises(InvalidArgument, match="strategy"):
            client.diagnose_seeds(LookalikeQuery(seed_ids=["a-1"], k=5, strategy=name))


def test_cli_strategy_explain_and_seeds_diagnose(crafted, capsys) -> None:
    from audience.server._cli import main

    client = crafted[0]
    target = client.target
    seeds = [arg for s in SEEDS_AB for arg in ("--seed", s)]
    assert main(["seeds", "diagnose", "--target", target, *seeds]) == 0
    out = capsys.readouterr().out
    assert "12 seeds, cohesion" in out and "interests: 2" in out
    assert "auto would use: multi-interest" in out
    assert main(["seeds", "diagnose", "--target", target, *seeds, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["interests"]) == 2 and doc["suggested_strategy"] == "multi-interest"
    args = ["lookalike", "--target", target, *seeds, "-k", "8", "--strategy", "auto"]
    assert main([*args, "--explain"]) == 0
    out = capsys.readouterr().out
    assert "8 of" in out and "(multi-interest)" in out and "closest seed" in out
    assert "held-out seeds expected within this audience" in out and "lift over random" in out
    assert "audience cohesion" in out
    assert "users in the seeds' interests (estimated precision): 100%" in out
    assert main([*args, "--quality", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["strategy"] == "multi-interest" and doc["quality"]["heldout_seeds"] == 12
    assert doc["quality"]["interest_share"] == 1.0
    with pytest.raises(SystemExit) as exit_:  # argparse: not a choice
        main([*args[:-2], "--strategy", "nearest"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nearest'" in capsys.readouterr().err
