"""Unit tests of the client library that need no server: conversions, filter parsing,
error mapping, retry policy, wire encoding of the health check."""

from __future__ import annotations

import asyncio
import math
import socket
import struct

import grpc
import pytest

import audience.client as ac
from audience.client import (
    AsyncAudienceClient,
    AudienceClient,
    AudienceError,
    Filter,
    InvalidArgument,
    LookalikeQuery,
    Profile,
    Seed,
    Text,
    UserRecord,
)
from audience.client import _convert as cv
from audience.client._options import DEFAULT, ClientOptions
from audience.client._policy import Attempts, ReadyWait
from audience.client._progress import Progress
from audience.client._proto import audience_pb2 as pb

# ---------------------------------------------------------------- filter expressions


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("region=EU", Filter("region", equals="EU")),
        ("region == EU", Filter("region", equals="EU")),
        ("region!=EU", Filter("region", equals="EU", negate=True)),
        ("age=31", Filter("age", equals=31.0)),
        ("age = -2.5e1", Filter("age", equals=-25.0)),
        ('age="31"', Filter("age", equals="31")),
        ("name=''", Filter("name", equals="")),
        ("flag=nan", Filter("flag", equals="nan")),
        ("age>=30", Filter("age", gte=30.0)),
        ("age > 30", Filter("age", gt=30.0)),
        ("age<=65", Filter("age", lte=65.0)),
        ("age<.5", Filter("age", lt=0.5)),
        ("age=18..65", Filter("age", gte=18.0, lte=65.0)),
        ("age=18..", Filter("age", gte=18.0)),
        ("age=..65", Filter("age", lte=65.0)),
        ("region in EU,US", Filter("region", any_of=("EU", "US"))),
        ("region in EU, US , 3", Filter("region", any_of=("EU", "US", 3.0))),
        ("region not in EU,US", Filter("region", any_of=("EU", "US"), negate=True)),
        ("region NOT IN x", Filter("region", any_of=("x",), negate=True)),
        ('city in "Paris, TX",Lyon', Filter("city", any_of=("Paris, TX", "Lyon"))),
        ("  spend   >=   100  ", Filter("spend", gte=100.0)),
    ],
)
def test_filter_parse(expr: str, expected: Filter) -> None:
    assert Filter.parse(expr) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "cannot parse"),
        ("age", "cannot parse"),
        (">=3", "cannot parse"),
        ("age>=x", "not a number"),
        ("age<", "not a number"),
        ("age=..", "at least one bound"),
        ("age=a..b", "not a number"),
        ("region in", "empty value list"),
        ("region in a,,b", "empty item"),
        ('region in "a', "unterminated quote"),
        ("region=", "missing value"),
    ],
)
def test_filter_parse_errors(expr: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        Filter.parse(expr)
    assert info.value.code == "INVALID_ARGUMENT"


def test_filter_parse_refuses_non_str() -> None:
    with pytest.raises(InvalidArgument, match="must be a str"):
        Filter.parse(5)  # type: ignore[arg-type]


def test_filter_constructors() -> None:
    assert Filter.eq("gender", "f") == Filter("gender", equals="f")
    assert Filter.one_of("region", ["EU", "US"]) == Filter("region", any_of=("EU", "US"))
    assert Filter.range("age", gte=18, lt=65) == Filter("age", gte=18, lt=65)
    assert Filter.eq("vip", True).negated() == Filter("vip", equals=True, negate=True)
    assert Filter.eq("vip", True).negated().negated() == Filter("vip", equals=True)
    hash(Filter.one_of("region", ["EU"]))  # frozen and hashable


def test_filter_refuses_two_conditions_and_bare_str_sets() -> None:
    with pytest.raises(InvalidArgument, match="one of"):
        Filter("age", equals=3, gte=1)
    with pytest.raises(InvalidArgument, match="not a single str"):
        Filter.one_of("region", "EU")


# ---------------------------------------------------------------- filters on the wire


def test_filter_to_pb_kinds() -> None:
    eq = cv.filter_to_pb(Filter.eq("vip", True))
    assert eq.WhichOneof("condition") == "equals"
    assert eq.equals.WhichOneof("kind") == "flag" and eq.equals.flag is True

    rng = cv.filter_to_pb("age=18..65")
    assert rng.WhichOneof("condition") == "range"
    assert rng.range.HasField("gte") and rng.range.HasField("lte")
    assert not rng.range.HasField("gt") and not rng.range.HasField("lt")
    assert (rng.range.gte, rng.range.lte) == (18.0, 65.0)

    neg = cv.filter_to_pb("region not in EU,3")
    assert neg.negate and neg.WhichOneof("condition") == "any_of"
    assert [v.WhichOneof("kind") for v in neg.any_of.values] == ["text", "number"]

    empty = cv.filter_to_pb(Filter("region", any_of=()))
    assert empty.WhichOneof("condition") == "any_of" and len(empty.any_of.values) == 0

    bare = cv.filter_to_pb(Filter("region"))  # no condition: the server decides
    assert bare.WhichOneof("condition") is None


def test_filter_to_pb_type_errors() -> None:
    with pytest.raises(InvalidArgument, match="'age' gte"):
        cv.filter_to_pb(Filter("age", gte="old"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="must be a Filter or a str"):
        cv.filter_to_pb(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- attributes and profiles


@pytest.mark.parametrize(
    ("value", "kind", "wire"),
    [
        (True, "flag", True),
        (False, "flag", False),
        (1, "number", 1.0),
        (0, "number", 0.0),
        (31.5, "number", 31.5),
        ("EU", "text", "EU"),
        ("", "text", ""),
    ],
)
def test_attribute_to_pb(value: object, kind: str, wire: object) -> None:
    msg = cv.attribute_to_pb("a", value)
    assert msg.WhichOneof("kind") == kind
    assert getattr(msg, kind) == wire
    assert type(getattr(msg, kind)) is type(wire)


def test_attribute_nan_is_kept() -> None:
    assert math.isnan(cv.attribute_to_pb("a", float("nan")).number)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, b"x", 10**400])
def test_attribute_to_pb_refuses(value: object) -> None:
    with pytest.raises(InvalidArgument, match="'spend'"):
        cv.attribute_to_pb("spend", value)


def test_profile_texts_and_dicts() -> None:
    p = Profile("u1", texts=["I bake", Text("sourdough", weight=2.0, timestamp=5)])
    assert p.texts == (Text("I bake"), Text("sourdough", weight=2.0, timestamp=5))
    d = cv.coerce_profile(
        {"user_id": "u1", "texts": ["I bake", {"text": "sourdough", "weight": 2.0, "timestamp": 5}]}
    )
    assert d == p
    with pytest.raises(InvalidArgument, match="bad profile fields"):
        cv.coerce_profile({"id": "u1"})
    with pytest.raises(InvalidArgument, match="not a single str"):
        Profile("u1", texts="I bake")
    with pytest.raises(InvalidArgument, match="Profile or a dict"):
        cv.coerce_profile("u1")


def test_profile_to_pb_and_back() -> None:
    vector = struct.pack("<2f", 0.5, -1.0)
    profile = Profile(
        "u1",
        texts=["I bake", Text("bread", weight=0.5, timestamp=1_700_000_000)],
        attributes={"age": 31, "vip": True, "region": "EU", "spend": 12.5},
        vector=vector,
    )
    msg = cv.profile_to_pb(profile)
    assert msg.user_id == "u1" and msg.vector == vector
    assert not msg.texts[0].HasField("weight")
    assert msg.texts[1].weight == 0.5 and msg.texts[1].timestamp == 1_700_000_000
    assert msg.attributes["vip"].WhichOneof("kind") == "flag"
    assert msg.attributes["age"].WhichOneof("kind") == "number"
    back = cv.profile_from_pb(pb.Profile.FromString(msg.SerializeToString()))
    assert back.attributes == {"age": 31.0, "vip": True, "region": "EU", "spend": 12.5}
    assert back.texts == profile.texts and back.vector == vector


def test_profile_to_pb_refuses() -> None:
    with pytest.raises(InvalidArgument, match="user_id"):
        cv.profile_to_pb(Profile(7))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="'when'"):
        cv.profile_to_pb(Profile("u1", attributes={"when": object()}))
    with pytest.raises(InvalidArgument, match="vector"):
        cv.profile_to_pb(Profile("u1", vector=[0.1]))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="u1"):
        cv.profile_to_pb(Profile("u1", texts=["bad \ud800 surrogate"]))
    with pytest.raises(InvalidArgument, match="wrap one in a list"):
        cv.profiles_to_pb(Profile("u1"))  # type: ignore[arg-type]


def test_batcher_is_lazy_and_sized() -> None:
    pulled = []

    def profiles():
        for i in range(5):
            pulled.append(i)
            yield {"user_id": f"u{i}"}

    batches = cv.Batcher(2).batches(profiles())
    assert [p.user_id for p in next(batches)] == ["u0", "u1"]
    assert pulled == [0, 1]
    assert [len(b) for b in batches] == [2, 1]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidArgument, match="batch_size"):
            cv.Batcher(bad)  # type: ignore[arg-type]


def test_progress_callback_gets_cumulative_totals() -> None:
    seen: list[int] = []
    progress = Progress(seen.append)
    totals = cv.UpsertTotals()
    for n, seq in ((256, 10), (256, 11), (3, 12)):
        progress.update(totals.add(pb.UpsertUsersResponse(upserted=n, sequence=seq)))
    progress.close()
    assert seen == [256, 512, 515]
    assert totals.result() == ac.UpsertResult(upserted=515, sequence=12, batches=3)
    with pytest.raises(InvalidArgument, match="progress"):
        Progress("yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- lookalike queries


def test_query_seeds_in_order() -> None:
    query = LookalikeQuery(
        seed_ids=["u1"], seed_texts=["sourdough"], seeds=[Seed(user_id="u2", weight=2)]
    )
    msg = cv.lookalike_request(query)
    assert [s.WhichOneof("kind") for s in msg.seeds] == ["user_id", "text", "user_id"]
    assert [s.HasField("weight") for s in msg.seeds] == [False, False, True]
    assert msg.seeds[2].weight == 2.0


def test_query_size_oneof() -> None:
    assert cv.lookalike_request(LookalikeQuery(seed_ids=["u"])).WhichOneof("size") is None
    zero = cv.lookalike_request(LookalikeQuery(seed_ids=["u"], k=0))
    assert zero.WhichOneof("size") == "k" and zero.k == 0  # k=0 reaches the server
    neg = cv.lookalike_request(LookalikeQuery(seed_ids=["u"], k=-5))
    assert neg.WhichOneof("size") == "k" and neg.k == -5
    frac = cv.lookalike_request(LookalikeQuery(seed_ids=["u"], fraction=0.25))
    assert frac.WhichOneof("size") == "fraction" and frac.fraction == 0.25
    nan = cv.lookalike_request(LookalikeQuery(seed_ids=["u"], fraction=float("nan")))
    assert nan.WhichOneof("size") == "fraction" and math.isnan(nan.fraction)
    with pytest.raises(InvalidArgument, match="not both"):
        LookalikeQuery(seed_ids=["u"], k=10, fraction=0.1)


def test_query_optional_fields() -> None:
    msg = cv.lookalike_request(
        LookalikeQuery(
            seed_ids=["u1"],
            filters=["age>=30", Filter.eq("region", "EU")],
            negative_ids=["u9"],
            negative_weight=float("inf"),
            exclude_ids=["u7", "u8"],
            include_seeds=True,
            min_score=0.25,
        )
    )
    assert [f.attribute for f in msg.filters] == ["age", "region"]
    assert list(msg.negative_user_ids) == ["u9"] and math.isinf(msg.negative_weight)
    assert list(msg.exclude_user_ids) == ["u7", "u8"] and msg.include_seeds
    assert msg.min_score == 0.25
    plain = cv.lookalike_request(LookalikeQuery(seed_ids=["u1"]))
    assert not plain.HasField("negative_weight") and not plain.HasField("min_score")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed_ids": "u1"}, "seed_ids must be a sequence"),
        ({"k": True}, "k must be an int"),
        ({"k": 2.0}, "k must be an int"),
        ({"k": 2**40}, "k: Value out of range"),
        ({"fraction": "half"}, "fraction must be a number"),
        ({"min_score": None, "negative_weight": "x"}, "negative_weight must be a number"),
        ({"seed_ids": [3]}, "must be a str"),
        ({"filters": ["age>=x"]}, "not a number"),
    ],
)
def test_query_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        cv.lookalike_request(LookalikeQuery(**kwargs))


def test_seed_is_one_kind() -> None:
    with pytest.raises(InvalidArgument, match="not both"):
        Seed(user_id="u1", text="sourdough")


def test_build_query_accepts_one_query_alone() -> None:
    query = LookalikeQuery(seed_ids=["u1"], k=5)
    assert cv.build_query(query, (), seeds=[], k=None, include_seeds=False) is query
    with pytest.raises(InvalidArgument, match="not both"):
        cv.build_query(query, k=3)
    built = cv.build_query(["u1"], ["bread"], k=3, filters=["age>1"])
    assert built == LookalikeQuery(
        seed_ids=("u1",), seed_texts=("bread",), k=3, filters=(Filter("age", gt=1.0),)
    )


# ---------------------------------------------------------------- responses


def test_user_record_vector_values() -> None:
    values = [0.5, -1.25, 3.0]
    record = UserRecord(Profile("u1"), vector=struct.pack("<3f", *values), dimension=3)
    assert record.vector_values() == values
    assert UserRecord(Profile("u1"), vector=b"", dimension=0).vector_values() == []
    with pytest.raises(ValueError):
        UserRecord(Profile("u1"), vector=b"\x00" * 5, dimension=1).vector_values()


def test_response_parsers() -> None:
    result = cv.lookalike_result(
        pb.LookalikeResponse(users=[pb.ScoredUser(user_id="a", score=0.5)], eligible=7)
    )
    assert list(result) == [ac.ScoredUser("a", 0.5)] and len(result) == 1
    assert result.eligible == 7
    seg = cv.segment(
        pb.Segment(segment_id="s1", size=3, keywords=["bread"], attribute_profile_json='{"a": 1}')
    )
    assert seg.attribute_profile == {"a": 1} and seg.keywords == ["bread"]
    assert cv.segment(pb.Segment(segment_id="s2")).attribute_profile == {}
    with pytest.raises(ac.ServerError):
        cv.segment(pb.Segment(segment_id="s3", attribute_profile_json="{"))
    stats = cv.stats(pb.GetStatsResponse(users=2, attributes=["age", "region"]))
    assert stats.attributes == ("age", "region") and stats.users == 2
    memberships = cv.user_segments(
        pb.GetUserSegmentsResponse(
            memberships=[pb.UserSegment(user_id="u", segment_id="s", strength=1, outlier=True)]
        )
    )
    assert memberships == [ac.UserSegment("u", "s", strength=1.0, outlier=True)]
    deleted = cv.delete_result(pb.DeleteUsersResponse(deleted=1, not_found=["x"]))
    assert deleted == ac.DeleteResult(deleted=1, not_found=["x"])


# ---------------------------------------------------------------- errors


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode | None, details: str | None = "boom") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details


EXPECTED_CLASS = {
    "OK": ac.ServerError,
    "CANCELLED": ac.Cancelled,
    "UNKNOWN": ac.ServerError,
    "INVALID_ARGUMENT": ac.InvalidArgument,
    "DEADLINE_EXCEEDED": ac.DeadlineExceeded,
    "NOT_FOUND": ac.NotFound,
    "ALREADY_EXISTS": ac.ServerError,
    "PERMISSION_DENIED": ac.PermissionDenied,
    "RESOURCE_EXHAUSTED": ac.ResourceExhausted,
    "FAILED_PRECONDITION": ac.FailedPrecondition,
    "ABORTED": ac.ServerError,
    "OUT_OF_RANGE": ac.ServerError,
    "UNIMPLEMENTED": ac.Unimplemented,
    "INTERNAL": ac.ServerError,
    "UNAVAILABLE": ac.Unavailable,
    "DATA_LOSS": ac.ServerError,
    "UNAUTHENTICATED": ac.Unauthenticated,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_maps(code: grpc.StatusCode) -> None:
    error = ac.map_rpc_error(FakeRpcError(code, "why"))
    assert type(error) is EXPECTED_CLASS[code.name]
    assert isinstance(error, AudienceError)
    assert (error.code, error.details) == (code.name, "why")
    assert str(error) == f"{code.name}: why"


def test_map_rpc_error_without_status() -> None:
    error = ac.map_rpc_error(grpc.RpcError("odd"))
    assert type(error) is ac.ServerError and error.code == "UNKNOWN"
    assert ac.map_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, None)).details == ""


def test_client_side_errors_carry_their_code() -> None:
    assert InvalidArgument("bad").code == "INVALID_ARGUMENT"
    assert ac.Unavailable().code == "UNAVAILABLE" and str(ac.Unavailable()) == "UNAVAILABLE"
    assert repr(ac.NotFound("u1")) == "NotFound(code='NOT_FOUND', details='u1')"


# ---------------------------------------------------------------- retries and options


def test_attempts_retry_unavailable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("random.uniform", lambda a, b: 1.0)
    attempts = Attempts(None, retries=3, backoff=0.2)
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    assert [attempts.backoff(unavailable) for _ in range(3)] == pytest.approx([0.2, 0.4, 0.8])
    with pytest.raises(ac.Unavailable) as info:
        attempts.backoff(unavailable)
    assert info.value.__cause__ is unavailable
    with pytest.raises(ac.InvalidArgument):
        Attempts(None, 3, 0.2).backoff(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT))


def test_attempts_jitter_and_deadline() -> None:
    attempts = Attempts(None, retries=1, backoff=1.0)
    assert 0.5 <= attempts.backoff(FakeRpcError(grpc.StatusCode.UNAVAILABLE)) <= 1.5
    short = Attempts(0.1, retries=5, backoff=1.0)  # a pause would pass the deadline
    assert 0 < short.timeout() <= 0.1
    with pytest.raises(ac.Unavailable):
        short.backoff(FakeRpcError(grpc.StatusCode.UNAVAILABLE))


def test_timeout_sentinel_and_metadata() -> None:
    options = ClientOptions(timeout=10.0, token="s3cret")
    assert options.resolve_timeout(DEFAULT) == 10.0
    assert options.resolve_timeout(None) is None
    assert options.resolve_timeout(2.5) == 2.5
    assert options.metadata == (("authorization", "Bearer s3cret"),)
    assert ClientOptions().metadata is None
    assert "s3cret" not in repr(options)
    assert dict(options.channel_options)["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    with pytest.raises(InvalidArgument, match="root_certificates"):
        ClientOptions(private_key=b"key")
    with pytest.raises(InvalidArgument, match="retries"):
        ClientOptions(retries=-1)


# ---------------------------------------------------------------- health check stubs


def test_health_stubs_match_grpc_health_and_load_beside_it() -> None:
    """The client's generated grpc.health.v1 stubs (a private descriptor pool) load in the
    same process as grpcio-health-checking's (what the server uses) and speak its wire."""
    from audience.client._proto import health_pb2 as ours

    theirs = pytest.importorskip("grpc_health.v1.health_pb2")
    assert ours.HealthCheckRequest is not theirs.HealthCheckRequest
    for service in ("", "x", "audience.v1.Lookalike" * 10):
        wire = ours.HealthCheckRequest(service=service).SerializeToString()
        assert wire == theirs.HealthCheckRequest(service=service).SerializeToString()
    for status in range(4):
        wire = theirs.HealthCheckResponse(status=status).SerializeToString()
        assert ours.HealthCheckResponse.FromString(wire).status == status
    assert ours.HealthCheckResponse.SERVING == theirs.HealthCheckResponse.SERVING == 1


# ---------------------------------------------------------------- clients without a server


def _dead_target() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_sync_client_checks_input_before_the_network() -> None:
    with AudienceClient(_dead_target(), retries=0, timeout=2) as client:
        with pytest.raises(InvalidArgument, match="batch_size"):
            client.upsert_users([Profile("u1")], batch_size=0)
        assert client.upsert_users([]) == ac.UpsertResult(0, 0, 0)
        with pytest.raises(InvalidArgument, match="not a number"):
            client.find_lookalikes(seed_ids=["u1"], filters=["age>=x"])
        with pytest.raises(InvalidArgument, match="not a number"):
            client.stream_lookalikes(seed_ids=["u1"], filters=["age>=x"])
        with pytest.raises(InvalidArgument, match="concurrency"):
            client.find_lookalikes_many([LookalikeQuery(seed_ids=["u"])], concurrency=0)
        assert client.find_lookalikes_many([]) == []
    with pytest.raises(RuntimeError, match="closed"):
        client.stats()


def test_sync_client_never_leaks_rpc_errors() -> None:
    with AudienceClient(_dead_target(), retries=1, retry_backoff=0.01, timeout=2) as client:
        with pytest.raises(ac.Unavailable):
            client.stats()
        with pytest.raises(ac.Unavailable):
            list(client.stream_lookalikes(seed_ids=["u1"]))
        with pytest.raises(ac.Unavailable):
            client.stream_upsert_users([Profile("u1")])
        results = client.find_lookalikes_many(
            [LookalikeQuery(seed_ids=["u1"])] * 3, return_exceptions=True
        )
        assert [type(r) for r in results] == [ac.Unavailable] * 3
        with pytest.raises(ac.Unavailable):
            client.find_lookalikes_many([LookalikeQuery(seed_ids=["u1"])] * 3)
        with pytest.raises(ac.Unavailable, match="not SERVING"):
            client.wait_ready(timeout=0.3)


def test_async_client_never_leaks_rpc_errors() -> None:
    async def main() -> None:
        async with AsyncAudienceClient(_dead_target(), retries=0, timeout=2) as client:
            with pytest.raises(InvalidArgument, match="batch_size"):
                await client.upsert_users([Profile("u1")], batch_size=0)
            with pytest.raises(ac.Unavailable):
                await client.stats()
            with pytest.raises(ac.Unavailable):
                async for _ in client.stream_lookalikes(seed_ids=["u1"]):
                    pass

            async def profiles():
                yield Profile("u1")

            with pytest.raises(ac.Unavailable):
                await client.upsert_users(profiles())
            with pytest.raises(ac.Unavailable):
                await client.stream_upsert_users(profiles())
            results = await client.find_lookalikes_many(
                [LookalikeQuery(seed_ids=["u1"])] * 3, concurrency=2, return_exceptions=True
            )
            assert [type(r) for r in results] == [ac.Unavailable] * 3
            with pytest.raises(ac.Unavailable, match="not SERVING"):
                await client.wait_ready(timeout=0.3)
        with pytest.raises(RuntimeError, match="closed"):
            await client.stats()

    asyncio.run(main())


def test_public_names() -> None:
    for name in ac.__all__:
        value = getattr(ac, name)
        if name.isupper():  # a constant
            assert isinstance(value, tuple) and value
            continue
        assert value.__module__ in ("audience.client",)
    assert set(ac.__all__) >= {"AudienceClient", "AsyncAudienceClient", "Filter", "Profile"}


def test_ready_wait_policy() -> None:
    waiter = ReadyWait(0.2, "host:1")
    assert not waiter.serving(2) and waiter.serving(1)
    waiter.failed(FakeRpcError(grpc.StatusCode.UNAVAILABLE))  # waited out
    waiter.failed(FakeRpcError(grpc.StatusCode.NOT_FOUND))  # health status not set yet
    assert 0 < waiter.pause() <= 0.2
    with pytest.raises(ac.Unimplemented):
        waiter.failed(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED))
    with pytest.raises(ac.Unauthenticated):
        waiter.failed(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED))
    expired = ReadyWait(0.0, "host:1")
    expired.serving(2)
    with pytest.raises(ac.Unavailable, match=r"host:1 not SERVING after 0 s \(last: NOT_SERVING\)"):
        expired.pause()


def test_errors_pickle_with_their_code() -> None:
    import pickle

    error = ac.map_rpc_error(FakeRpcError(grpc.StatusCode.DATA_LOSS, "lost"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ac.ServerError and (again.code, again.details) == ("DATA_LOSS", "lost")
