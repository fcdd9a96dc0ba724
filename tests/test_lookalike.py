"""Lookalikes, filters, deletion and bad input, through a real server and the real client."""

from __future__ import annotations

import math

import pytest

from audience.client import (
    AudienceClient,
    Filter,
    InvalidArgument,
    LookalikeQuery,
    NotFound,
    Profile,
    ResourceExhausted,
    Seed,
)


def topic(uid: str) -> str:
    return uid.split("-")[0]


def test_lookalikes_find_same_topic(loaded: AudienceClient) -> None:
    for t in ("cook", "code", "ball"):
        result = loaded.find_lookalikes(seed_ids=[f"{t}-0", f"{t}-1"], k=4)
        assert [topic(u.user_id) for u in result.users] == [t] * 4, result
        assert all(u.user_id not in (f"{t}-0", f"{t}-1") for u in result.users)  # seeds left out
        scores = [u.score for u in result.users]
        assert scores == sorted(scores, reverse=True)
        assert result.eligible == 16


def test_free_text_seed_and_weights(loaded: AudienceClient) -> None:
    result = loaded.find_lookalikes(seed_texts=["baking cakes and cookies in the oven"], k=3)
    assert {topic(u.user_id) for u in result.users} == {"cook"}
    # A heavier text seed wins over a lighter id seed.
    mixed = loaded.find_lookalikes(
        seeds=[Seed(user_id="code-0", weight=0.1), Seed(text="football match goal", weight=5.0)],
        k=3,
    )
    assert {topic(u.user_id) for u in mixed.users} == {"ball"}


def test_include_seeds_exclusions_and_negatives(loaded: AudienceClient) -> None:
    with_seeds = loaded.find_lookalikes(seed_ids=["cook-0"], k=1, include_seeds=True)
    assert with_seeds.users[0].user_id == "cook-0"
    assert with_seeds.users[0].score == pytest.approx(1.0, abs=1e-4)
    excluded = loaded.find_lookalikes(seed_ids=["cook-0"], k=10, exclude_ids=["cook-1", "cook-2"])
    ids = {u.user_id for u in excluded.users}
    assert not ids & {"cook-0", "cook-1", "cook-2"}
    # A negative user lowers the score of users like it and is never returned.
    plain = loaded.find_lookalikes(seed_ids=["cook-0", "code-0"], k=16)
    pushed = loaded.find_lookalikes(seed_ids=["cook-0", "code-0"], negative_ids=["code-1"], k=16)
    rank = lambda r: [u.user_id for u in r.users]  # noqa: E731
    assert "code-1" not in rank(pushed)
    code_plain = sum(rank(plain).index(u) for u in rank(plain) if topic(u) == "code")
    code_pushed = sum(rank(pushed).index(u) for u in rank(pushed) if topic(u) == "code")
    assert code_pushed > code_plain


def test_filters_hold(loaded: AudienceClient) -> None:
    cases = [
        (Filter.eq("gender", "female"), lambda a: a["gender"] == "female"),
        (Filter.range("age", gte=30, lt=50), lambda a: 30 <= a["age"] < 50),
        (Filter.one_of("region", ["north", "east"]), lambda a: a["region"] in ("north", "east")),
        (Filter.eq("region", "south").negated(), lambda a: a["region"] != "south"),
        (Filter.eq("premium", True), lambda a: a["premium"] is True),
        (Filter.parse("age<=30"), lambda a: a["age"] <= 30),
    ]
    from conftest import crafted_profiles

    attrs = {p.user_id: dict(p.attributes) for p in crafted_profiles()}
    for flt, ok in cases:
        result = loaded.find_lookalikes(seed_texts=["anything at all"], k=18, filters=[flt])
        expected = {u for u, a in attrs.items() if ok(a)}
        assert {u.user_id for u in result.users} == expected, flt
        assert result.eligible == len(expected)
        assert loaded.estimate_reach([flt]).reach == len(expected)
    both = loaded.find_lookalikes(seed_ids=["ball-0"], k=18, filters=["gender=male", "age>=40"])
    assert {u.user_id for u in both.users} == {
        u for u, a in attrs.items() if a["gender"] == "male" and a["age"] >= 40 and u != "ball-0"
    }


def test_fraction_and_min_score(loaded: AudienceClient) -> None:
    half = loaded.find_lookalikes(seed_ids=["code-0"], fraction=0.5)
    assert half.eligible == 17 and len(half.users) == math.ceil(0.5 * 17)
    strict = loaded.find_lookalikes(seed_ids=["code-0"], k=17, min_score=0.3)
    assert strict.users and all(u.score >= 0.3 for u in strict.users)
    assert len(strict.users) < 17


def test_stream_lookalikes_matches_unary(loaded: AudienceClient) -> None:
    unary = loaded.find_lookalikes(seed_ids=["cook-3"], k=17)
    streamed = list(loaded.stream_lookalikes(seed_ids=["cook-3"], k=17))
    assert [u.user_id for u in streamed] == [u.user_id for u in unary.users]


def test_delete_removes_from_results_and_store(loaded: AudienceClient) -> None:
    before = loaded.find_lookalikes(seed_ids=["cook-0"], k=3)
    victim = before.users[0].user_id
    done = loaded.delete_users([victim, "nobody"])
    assert done.deleted == 1 and done.not_found == ["nobody"]
    after = loaded.find_lookalikes(seed_ids=["cook-0"], k=17)
    assert victim not in {u.user_id for u in after.users}
    assert after.eligible == 16
    with pytest.raises(NotFound):
        loaded.get_user(victim)
    with pytest.raises(NotFound):
        loaded.find_lookalikes(seed_ids=[victim])
    assert loaded.stats().users == 17


def test_upsert_replaces(loaded: AudienceClient) -> None:
    loaded.upsert_users(
        [
            Profile(
                "cook-5",
                texts=["goal! the striker scores in the football final"],
                attributes={"gender": "male"},
            )
        ]
    )
    user = loaded.get_user("cook-5")
    assert [t.text for t in user.profile.texts] == [
        "goal! the striker scores in the football final"
    ]
    assert dict(user.profile.attributes) == {"gender": "male"}
    near = loaded.find_lookalikes(seed_ids=["ball-0", "ball-1"], k=5)
    assert "cook-5" in {u.user_id for u in near.users}
    assert loaded.stats().users == 18


def test_unknown_seed_is_not_found(loaded: AudienceClient) -> None:
    with pytest.raises(NotFound, match="seeds"):
        loaded.find_lookalikes(seed_ids=["cook-0", "ghost"])
    with pytest.raises(NotFound, match="negative_user_ids"):
        loaded.find_lookalikes(seed_ids=["cook-0"], negative_ids=["ghost"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (LookalikeQuery(), "seeds"),
        (LookalikeQuery(seed_ids=["cook-0"], k=0), "k"),
        (LookalikeQuery(seed_ids=["cook-0"], k=-3), "k"),
        (LookalikeQuery(seed_ids=["cook-0"], k=10_001), "k"),
        (LookalikeQuery(seed_ids=["cook-0"], fraction=0.0), "fraction"),
        (LookalikeQuery(seed_ids=["cook-0"], fraction=1.5), "fraction"),
        (LookalikeQuery(seed_ids=["cook-0"], fraction=float("nan")), "fraction"),
        (LookalikeQuery(seeds=[Seed(user_id="cook-0", weight=float("nan"))]), "seeds[0].weight"),
        (LookalikeQuery(seeds=[Seed(user_id="cook-0", weight=-1.0)]), "seeds[0].weight"),
        (LookalikeQuery(seed_texts=["   "]), "seeds[0].text"),
        (LookalikeQuery(seed_ids=["cook-0"], min_score=float("inf")), "min_score"),
        (LookalikeQuery(seed_ids=["cook-0"], negative_weight=float("nan")), "negative_weight"),
        (
            LookalikeQuery(seed_ids=["cook-0"], filters=[Filter.eq("no_such_attr", 1)]),
            "filters[0].attribute",
        ),
        (
            LookalikeQuery(seed_ids=["cook-0"], filters=[Filter.range("age", gte=float("nan"))]),
            "filters[0].range.gte",
        ),
    ],
)
def test_bad_queries_name_the_field(
    loaded: AudienceClient, query: LookalikeQuery, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        loaded.find_lookalikes(query)
    assert field in err.value.details


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        (Profile("", texts=["x"]), "profiles[0].user_id"),
        (Profile("u", texts=[]), "profiles[0]"),
        (Profile("u", texts=["ok", ""]), "profiles[0].texts[1].text"),
        (Profile("u", texts=["ok"], attributes={"age": float("nan")}), "profiles[0].attributes"),
        (Profile("u", texts=["ok"], vector=b"\x00\x00"), "profiles[0].vector"),
    ],
)
def test_bad_profiles_name_the_field(client: AudienceClient, profile: Profile, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.upsert_users([profile])
    assert field in err.value.details
    assert client.stats().users == 0


def test_limits(start_server, tmp_path) -> None:
    from audience.index import Limits

    server = start_server(limits=Limits(max_k=5, max_batch_users=10, max_seeds=2))
    with AudienceClient(f"127.0.0.1:{server.port}") as c:
        from conftest import crafted_profiles

        with pytest.raises(ResourceExhausted, match="profiles"):
            c.upsert_users(crafted_profiles(), batch_size=11)
        c.upsert_users(crafted_profiles(), batch_size=10)
        with pytest.raises(ResourceExhausted, match="fraction"):
            c.find_lookalikes(seed_ids=["cook-0"], fraction=1.0)
        with pytest.raises(InvalidArgument, match="k"):
            c.find_lookalikes(seed_ids=["cook-0"], k=6)
        with pytest.raises(ResourceExhausted, match="seeds"):
            c.find_lookalikes(seed_ids=["cook-0", "cook-1", "cook-2"], k=1)
        assert len(c.find_lookalikes(seed_ids=["cook-0"], fraction=0.25).users) == 5
        # The streaming variant is not bound by the unary limit.
        assert len(list(c.stream_lookalikes(seed_ids=["cook-0"], fraction=1.0))) == 17


def test_invalid_utf8_is_invalid_argument(server, loaded: AudienceClient) -> None:
    import grpc

    from audience.client._proto import audience_pb2 as pb

    raw = pb.GetUserRequest(user_id="PLACEHOLDER").SerializeToString()
    raw = raw.replace(b"PLACEHOLDER", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary("/audience.v1.Profiles/GetUser", lambda b: b, lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in err.value.details()
    assert loaded.stats().users == 18
