"""Fixtures for the broker tests: a JobStore and short-lease WorkQueues on the private Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from talkingface.broker.jobs import JobStore
from talkingface.broker.queue import WorkQueue

LEASE_MS = 200


@pytest.fixture
def jobs(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, ttl_s=3600)


@pytest.fixture
def make_queue(redis_client: redis.Redis) -> Callable[..., WorkQueue]:
    """WorkQueue factory with test-sized timings (200 ms lease, 20 ms retry base)."""

    def make(name: str = "render", **overrides: float) -> WorkQueue:
        options = {"lease_ms": LEASE_MS, "retry_base_s": 0.02, "retry_max_s": 0.2}
        options.update(overrides)
        return WorkQueue(redis_client, name, **options)

    return make


def assert_drained(queue: WorkQueue) -> None:
    """Nothing pending, undelivered or waiting out a backoff."""
    assert queue.pending() == 0
    assert queue.depth() == 0
