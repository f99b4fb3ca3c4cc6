"""Batcher: the next batch takes everything that queued while the engine was busy."""

import asyncio

import pytest

from fspo_ray.serving.batching import Batcher


def run(coro):
    return asyncio.run(coro)


def test_requests_arriving_during_a_batch_form_the_next_one():
    calls = []

    async def engine(items):
        calls.append(list(items))
        await asyncio.sleep(0.05)
        return [x * 10 for x in items]

    async def main():
        b = Batcher(engine, max_batch_size=4, wait_s=0.001)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)  # the first batch is running now
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 7)]
        return await asyncio.gather(first, *rest), b.sizes

    results, sizes = run(main())
    assert results == [0, 10, 20, 30, 40, 50, 60]
    assert calls == [[0], [1, 2, 3, 4], [5, 6]]  # not six batches of one
    assert sizes == {1: 1, 4: 1, 2: 1}


def test_an_engine_error_reaches_every_caller_of_that_batch_only():
    async def engine(items):
        await asyncio.sleep(0.01)
        if "bad" in items:
            raise RuntimeError("engine failed")
        return items

    async def main():
        b = Batcher(engine, max_batch_size=8, wait_s=0.005)
        got = await asyncio.gather(b.submit("a"), b.submit("bad"), return_exceptions=True)
        return got, await b.submit("c")

    got, later = run(main())
    assert [type(g).__name__ for g in got] == ["RuntimeError", "RuntimeError"] and later == "c"


def test_cancelled_callers_are_dropped_before_their_batch_runs():
    seen = []

    async def engine(items):
        seen.extend(items)
        await asyncio.sleep(0.03)
        return items

    async def main():
        b = Batcher(engine, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(b.submit("gone"))
        kept = asyncio.ensure_future(b.submit("kept"))
        await asyncio.sleep(0.005)
        gone.cancel()
        assert await kept == "kept" and await first == "first"
        with pytest.raises(asyncio.CancelledError):
            await gone

    run(main())
    assert seen == ["first", "kept"]
