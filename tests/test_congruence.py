"""Congruence: FindLookalikes over gRPC equals brute-force numpy over the stored vectors."""

from __future__ import annotations

import random

import numpy as np

from audience.client import AudienceClient, Filter, Profile, Seed

WORDS = (
    "bread pasta oven recipe garlic python rust compiler bug query football goal striker "
    "league coach travel beach hotel flight museum guitar concert album piano jazz garden "
    "tomato roses soil budget stocks savings mortgage bank"
).split()


def random_population(rng: random.Random, n: int) -> list[Profile]:
    profiles = []
    for i in range(n):
        texts = [
            " ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(rng.randint(1, 3))
        ]
        profiles.append(
            Profile(
                f"user-{i}",
                texts=texts,
                attributes={
                    "age": rng.randint(15, 80),
                    "gender": rng.choice(["female", "male"]),
                    "region": rng.choice(["north", "south", "east", "west"]),
                },
            )
        )
    return profiles


def test_lookalikes_equal_brute_force(client: AudienceClient) -> None:
    rng = random.Random(7)
    population = random_population(rng, 150)
    client.upsert_users(population, batch_size=40)
    client.delete_users([f"user-{i}" for i in range(0, 150, 10)])  # holes in the id space
    ids = [p.user_id for p in population if int(p.user_id.split("-")[1]) % 10]
    attrs = {p.user_id: p.attributes for p in population}
    check_against_numpy(client, rng, ids, attrs)
    client.rebuild_index()  # fits the lexical channel: other vectors, same agreement
    assert client.stats().lexical_model != "none"
    check_against_numpy(client, rng, ids, attrs)


def check_against_numpy(
    client: AudienceClient, rng: random.Random, ids: list[str], attrs: dict[str, dict]
) -> None:
    vectors = {}
    for uid in ids:
        record = client.get_user(uid, include_vector=True)
        vectors[uid] = np.frombuffer(record.vector, dtype="<f4")
        assert record.dimension == len(vectors[uid])
    matrix = np.stack([vectors[u] for u in ids])
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)

    for trial in range(25):
        seeds = rng.sample(ids, rng.randint(1, 5))
        weights = [rng.uniform(0.2, 3.0) for _ in seeds]
        k = rng.randint(1, 40)
        flt = rng.choice(
            [
                None,
                Filter.range("age", gte=30, lte=60),
                Filter.eq("gender", "female"),
                Filter.one_of("region", ["north", "west"]),
            ]
        )
        result = client.find_lookalikes(
            seeds=[Seed(user_id=s, weight=w) for s, w in zip(seeds, weights)],
            k=k,
            filters=[flt] if flt else [],
        )
        w = np.array(weights)[:, None]
        q = (w * np.stack([vectors[s] for s in seeds]).astype(np.float64)).sum(0) / w.sum()
        q /= np.linalg.norm(q)
        scores = matrix @ q
        eligible = [
            j
            for j, u in enumerate(ids)
            if u not in seeds and (flt is None or _passes(flt, attrs[u]))
        ]
        order = sorted(eligible, key=lambda j: -scores[j])[:k]
        assert result.eligible == len(eligible), trial
        got = [(u.user_id, u.score) for u in result.users]
        want = [(ids[j], float(scores[j])) for j in order]
        assert len(got) == len(want), trial
        for (gu, gs), (wu, ws) in zip(got, want):
            assert abs(gs - ws) < 1e-4, (trial, gu, wu)
            # ids agree except where two users tie within float error
            assert gu == wu or abs(scores[ids.index(gu)] - ws) < 1e-4, (trial, gu, wu)


def _passes(flt: Filter, a: dict) -> bool:
    if flt.equals is not None:
        return a.get(flt.attribute) == flt.equals
    if flt.any_of is not None:
        return a.get(flt.attribute) in flt.any_of
    return (flt.gte is None or a[flt.attribute] >= flt.gte) and (
        flt.lte is None or a[flt.attribute] <= flt.lte
    )
