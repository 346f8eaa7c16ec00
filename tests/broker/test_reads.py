"""CoalescedReads: the broker's event-loop reads, pipelined, against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio

from talkingface.broker.reads import CoalescedReads
from tests.fixtures.servers import start_redis


class CountingClient:
    """The real asyncio client, counting the pipelines sent through it."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pipelines = 0
        self.sizes: list[int] = []
        self.sent = asyncio.Event()

    def pipeline(self, **kwargs):
        self.pipelines += 1
        self.sent.set()
        pipe = self.client.pipeline(**kwargs)
        execute = pipe.execute

        async def counted_execute(*args, **kw):
            self.sizes.append(len(pipe.command_stack))
            return await execute(*args, **kw)

        pipe.execute = counted_execute
        return pipe


def _keys(redis_server, n: int) -> list[str]:
    prefix = f"test:reads:{uuid.uuid4().hex}"
    keys = [f"{prefix}:{i}" for i in range(n)]
    client = redis.Redis.from_url(redis_server.url)
    for i, key in enumerate(keys):
        client.hset(key, mapping={"n": str(i), "key": key})
    client.close()
    return keys


def test_reads_asked_for_together_share_one_round_trip(redis_server):
    keys = _keys(redis_server, 100)

    async def main():
        client = CountingClient(redis.asyncio.Redis.from_url(redis_server.url))
        reads = CoalescedReads(client)
        got = await asyncio.gather(*(reads.hgetall(k) for k in keys))
        missing = await reads.hgetall(f"{keys[0]}:missing")
        await client.client.aclose()
        return got, missing, client.sizes

    got, missing, sizes = asyncio.run(main())
    assert [g[b"key"].decode() for g in got] == keys  # each call gets its own record
    assert [int(g[b"n"]) for g in got] == list(range(100))
    assert missing == {}
    assert sizes == [100, 1]  # the 100 together, then the lone one


def test_reads_asked_for_during_a_round_trip_go_together_in_the_next(redis_server):
    keys = _keys(redis_server, 30)

    async def main():
        client = CountingClient(redis.asyncio.Redis.from_url(redis_server.url))
        reads = CoalescedReads(client, window_s=0.005)
        first = asyncio.ensure_future(reads.hgetall(keys[0]))
        await client.sent.wait()  # the first read is out; the rest arrive meanwhile
        later = await asyncio.gather(*(reads.hgetall(k) for k in keys[1:]))
        await first
        await client.client.aclose()
        return [first.result(), *later], client.sizes

    got, sizes = asyncio.run(main())
    assert [g[b"key"].decode() for g in got] == keys
    assert sizes == [1, 29]


def test_each_waiting_read_gets_the_error_when_redis_is_down(tmp_path):
    with start_redis(tmp_path / "redis") as server:
        url = server.url

    async def main():
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=1)
        reads = CoalescedReads(client)
        results = await asyncio.gather(*(reads.hgetall(f"k{i}") for i in range(5)),
                                       return_exceptions=True)  # fmt: skip
        await client.aclose()
        return results

    results = asyncio.run(main())
    assert len(results) == 5
    assert all(isinstance(r, redis.ConnectionError) for r in results), results


@pytest.mark.parametrize("window_s", [0.0, 0.002])
def test_a_lone_read_is_sent_at_once(redis_server, window_s):
    key = _keys(redis_server, 1)[0]

    async def main():
        client = redis.asyncio.Redis.from_url(redis_server.url)
        reads = CoalescedReads(client, window_s=window_s)
        await reads.hgetall(key)  # connect
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await reads.hgetall(key)
        took = loop.time() - started
        await client.aclose()
        return got, took

    got, took = asyncio.run(main())
    assert got[b"key"].decode() == key
    assert took < 0.5  # no window: it waits for no other read
