"""The two parts of the clients that are not the same code in both flavours: running many
calls at once (threads for the blocking client, tasks for asyncio) and reading profiles
(the asyncio client also takes async iterables). `_async.py` calls the `async_` names;
`_sync.py`, generated from it, calls the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from . import _convert as cv
from ._errors import AudienceError
from ._proto import audience_pb2 as pb

R = TypeVar("R")
Q = TypeVar("Q")
Profiles = Iterable[cv.ProfileLike]
AsyncProfiles = Iterable[cv.ProfileLike] | AsyncIterable[cv.ProfileLike]


def run_many(
    call: Callable[[Q], R], requests: list[Q], *, concurrency: int, return_exceptions: bool
) -> list[R | AudienceError]:
    """`call` on each request, up to `concurrency` at once in threads; results in order.
    With return_exceptions a failure's AudienceError takes its place; otherwise the first
    failure is raised and the calls not yet started are dropped."""
    if not requests:
        return []
    pool = ThreadPoolExecutor(min(concurrency, len(requests)), "audience-many")
    try:
        futures = [pool.submit(call, r) for r in requests]
        if not return_exceptions:
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
        results: list[R | AudienceError] = []
        for future in futures:
            try:
                results.append(future.result())
            except AudienceError as exc:
                if not return_exceptions:
                    raise
                results.append(exc)
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def async_run_many(
    call: Callable[[Q], Awaitable[R]],
    requests: list[Q],
    *,
    concurrency: int,
    return_exceptions: bool,
) -> list[R | AudienceError]:
    """`call` on each request, at most `concurrency` at once as tasks; results in order.
    With return_exceptions a failure's AudienceError takes its place; otherwise the first
    failure is raised and the other calls are cancelled."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(request: Q) -> R | AudienceError:
        async with semaphore:
            try:
                return await call(request)
            except AudienceError as exc:
                if return_exceptions:
                    return exc
                raise

    tasks = [asyncio.ensure_future(one(r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def batches(batcher: cv.Batcher, profiles: Profiles) -> Iterator[list[pb.Profile]]:
    return batcher.batches(profiles)


async def async_batches(
    batcher: cv.Batcher, profiles: AsyncProfiles
) -> AsyncIterator[list[pb.Profile]]:
    """Batches from an iterable or an async iterable of profiles."""
    if not cv.is_async_iterable(profiles):
        for batch in batcher.batches(profiles):  # type: ignore[arg-type]
            yield batch
        return
    async for profile in profiles:  # type: ignore[union-attr]
        batch = batcher.add(profile)
        if batch:
            yield batch
    last = batcher.flush()
    if last:
        yield last
