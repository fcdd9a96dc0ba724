"""The asyncio client against a real server: every kind of call (unary, both streams, many
queries at once), its errors, and that it answers as the sync client does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from audience.client import (
    AsyncAudienceClient,
    AudienceClient,
    InvalidArgument,
    LookalikeQuery,
    NotFound,
    Profile,
)
from conftest import crafted_profiles

TOPICS = ("cook", "code", "ball")


def topic(uid: str) -> str:
    return uid.split("-")[0]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_async_client_end_to_end(server) -> None:  # type: ignore[no-untyped-def]
    target = f"127.0.0.1:{server.port}"

    async def profiles() -> AsyncIterator[Profile]:
        for profile in crafted_profiles()[9:]:
            yield profile

    async def main():  # type: ignore[no-untyped-def]
        async with AsyncAudienceClient(target, timeout=30.0) as client:
            await client.wait_ready(timeout=30)
            first = await client.upsert_users(crafted_profiles()[:9], batch_size=4)
            streamed = await client.stream_upsert_users(profiles(), batch_size=4)
            assert (first.upserted, streamed.upserted) == (9, 9)
            assert (await client.stats()).users == 18

            found = await client.find_lookalikes(seed_ids=["cook-0", "cook-1"], k=4)
            assert [topic(u.user_id) for u in found.users] == ["cook"] * 4
            assert found.eligible == 16
            stream = [u async for u in client.stream_lookalikes(seed_ids=["cook-0"], k=17)]
            unary = await client.find_lookalikes(seed_ids=["cook-0"], k=17)
            assert [u.user_id for u in stream] == [u.user_id for u in unary.users]

            queries = [LookalikeQuery(seed_ids=[f"{t}-{i}"], k=3) for t in TOPICS for i in (0, 1)]
            queries.append(LookalikeQuery(seed_ids=["ghost"], k=3))
            many = await client.find_lookalikes_many(queries, concurrency=3, return_exceptions=True)
            for query, result in zip(queries[:-1], many[:-1]):
                assert {topic(u.user_id) for u in result.users} == {topic(query.seed_ids[0])}
            assert isinstance(many[-1], NotFound)
            with pytest.raises(NotFound, match="seeds"):
                await client.find_lookalikes_many(queries, concurrency=2)

            reach = await client.estimate_reach(["gender=female"])
            assert (reach.reach, reach.total) == (9, 18)
            record = await client.get_user("ball-2", include_vector=True)
            assert record.profile.user_id == "ball-2" and record.vector
            done = await client.delete_users(["ball-2", "nobody"])
            assert done.deleted == 1 and done.not_found == ["nobody"]
            with pytest.raises(NotFound):
                await client.get_user("ball-2")
            with pytest.raises(InvalidArgument, match="k"):
                await client.find_lookalikes(seed_ids=["cook-0"], k=10**9)
            return unary

    unary = run(main())
    # The same question through the sync client gets the same answer.
    with AudienceClient(target, timeout=30.0) as sync:
        again = sync.find_lookalikes(seed_ids=["cook-0"], k=17)
    assert [u.user_id for u in again.users] == [
        u.user_id for u in unary.users if u.user_id != "ball-2"
    ]
