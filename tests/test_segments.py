"""Segments through the real server: build, describe, serve, filter, erase, stable ids."""

from __future__ import annotations

import random

import pytest

from audience.client import (
    AudienceClient,
    FailedPrecondition,
    NotFound,
    Profile,
)

POOLS = {
    "cook": "bread oven bake flour dough recipe garlic butter roast soup pasta sauce".split(),
    "code": "python compiler debug function variable class database query server api bug".split(),
    "ball": "football goal striker league match referee coach penalty season stadium team".split(),
}


def population(n_per_topic: int, seed: int = 0, prefix: str = "") -> list[Profile]:
    rng = random.Random(seed)
    out = []
    for topic, words in POOLS.items():
        for i in range(n_per_topic):
            texts = [" ".join(rng.choices(words, k=8)) for _ in range(2)]
            out.append(
                Profile(
                    f"{prefix}{topic}-{i}",
                    texts=texts,
                    attributes={
                        "age": 20 + (i % 40),
                        "gender": "female" if topic == "cook" else rng.choice(["female", "male"]),
                    },
                )
            )
    return out


def topic(uid: str) -> str:
    return uid.split("-")[0].removeprefix("new")


@pytest.fixture
def built(start_server):
    server = start_server(segment_min_group_size=0)
    client = AudienceClient(f"127.0.0.1:{server.port}", timeout=120)
    client.upsert_users(population(60))
    client.rebuild_index()  # fit the lexical channel on the corpus
    build = client.build_segments(reducer="pca", min_cluster_size=20)
    yield server, client, build
    client.close()


def test_failed_precondition_before_build(client: AudienceClient) -> None:
    client.upsert_users(population(3))
    calls = [
        client.list_segments,
        lambda: client.get_segment("seg-0001"),
        lambda: client.get_user_segments(["cook-0"]),
        lambda: client.assign_segments([Profile("x", texts=["bread oven"])]),
        lambda: list(client.stream_segment_members("seg-0001")),
        lambda: client.find_lookalikes(seed_ids=["cook-0"], segment_ids=["seg-0001"]),
    ]
    for call in calls:
        with pytest.raises(FailedPrecondition, match="segments build"):
            call()


def test_build_describe_and_serve(built) -> None:
    _, c, build = built
    assert build.segments == 3 and build.users == 180 and build.outlier_share <= 0.1
    segments = c.list_segments()
    assert len(segments) == 3
    by_topic = {}
    for s in segments:
        members = [u.user_id for u in c.stream_segment_members(s.segment_id)]
        assert len(members) == s.size
        topics = {topic(u) for u in members}
        assert len(topics) == 1, (s.segment_id, topics)
        by_topic[topics.pop()] = s
        assert set(s.keywords[:5]) <= set(POOLS[topic(members[0])]), s.keywords
        assert s.status == "new" and 0 < s.persistence <= 1 and s.cohesion > 0.5
        assert all(topic(u) == topic(members[0]) for u in s.exemplar_user_ids)
    cook = c.get_segment(by_topic["cook"].segment_id)
    gender = cook.attribute_profile["gender"]
    assert gender["values"][0]["value"] == "female" and gender["values"][0]["share"] == 1.0
    assert gender["values"][0]["lift"] > 1.0
    assert {"mean", "median", "q1", "q3"} <= set(cook.attribute_profile["age"])
    with pytest.raises(NotFound, match="segment"):
        c.get_segment("seg-9999")

    rows = c.get_user_segments(["code-1", "ball-2"])
    assert [r.segment_id for r in rows] == [
        by_topic["code"].segment_id,
        by_topic["ball"].segment_id,
    ]
    assert all(0 < r.strength <= 1 and not r.outlier for r in rows)

    # Segment filters in FindLookalikes and EstimateReach.
    only = c.find_lookalikes(seed_ids=["cook-0"], k=50, segment_ids=[by_topic["code"].segment_id])
    assert len(only.users) == 50 and {topic(u.user_id) for u in only.users} == {"code"}
    without = c.find_lookalikes(
        seed_ids=["cook-0"], k=200, exclude_segment_ids=[by_topic["cook"].segment_id]
    )
    assert {topic(u.user_id) for u in without.users} == {"code", "ball"}
    assert c.estimate_reach(segment_ids=[by_topic["ball"].segment_id]).reach == 60


def test_assign_agrees_with_build(built) -> None:
    _, c, _ = built
    profiles = population(60)
    built_labels = {
        r.user_id: r.segment_id for r in c.get_user_segments([p.user_id for p in profiles])
    }
    assigned = c.assign_segments(
        [Profile("q-" + p.user_id, texts=p.texts, attributes=p.attributes) for p in profiles]
    )
    agree = sum(a.segment_id == built_labels[p.user_id] for a, p in zip(assigned, profiles))
    assert agree / len(profiles) >= 0.95
    fresh = c.assign_segments([Profile("n1", texts=["football striker goal in the league"])])
    assert fresh[0].segment_id == built_labels["ball-0"]


def test_deleted_user_leaves_membership(built) -> None:
    _, c, _ = built
    sid = c.get_user_segments(["ball-3"])[0].segment_id
    c.delete_users(["ball-3"])
    assert "ball-3" not in {u.user_id for u in c.stream_segment_members(sid)}
    with pytest.raises(NotFound):
        c.get_user_segments(["ball-3"])
    assert c.estimate_reach(segment_ids=[sid]).reach == 59


def test_ids_stable_after_rebuild_and_restart(built, start_server) -> None:
    server, c, _ = built
    before = {s.segment_id: s.size for s in c.list_segments()}
    members_before = {sid: {u.user_id for u in c.stream_segment_members(sid)} for sid in before}
    c.upsert_users(population(3, seed=5, prefix="new"))  # 5% new users
    c.build_segments(reducer="pca", min_cluster_size=20)
    after = c.list_segments()
    assert {s.segment_id for s in after} == set(before)
    assert all(s.status == "kept" and s.parents == [s.segment_id] for s in after)
    for s in after:
        members = {u.user_id for u in c.stream_segment_members(s.segment_id)}
        assert members_before[s.segment_id] <= members
    # Users written after a build are assigned on demand.
    c.upsert_users([Profile("late", texts=["python debug compiler function"])])
    code_id = c.get_user_segments(["code-0"])[0].segment_id
    assert c.get_user_segments(["late"])[0].segment_id == code_id

    data_dir = server.config.engine.data_dir
    server.stop()
    again = start_server(data_dir=data_dir)
    with AudienceClient(f"127.0.0.1:{again.port}") as c2:
        assert [(s.segment_id, s.size) for s in c2.list_segments()] == [
            (s.segment_id, s.size) for s in after
        ]


def test_umap_and_target_segments(built) -> None:
    _, c, _ = built
    done = c.build_segments(target_segments=2, min_cluster_size=10)  # default reducer: UMAP
    assert done.segments == 2
    segments = c.list_segments()
    assert sum(s.size for s in segments) + round(done.outlier_share * done.users) == 180
