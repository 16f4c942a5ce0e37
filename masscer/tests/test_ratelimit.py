"""The shared rate limiter on real Redis."""
from __future__ import annotations

import os
import threading
import time

import pytest
import redis

from masscer.lib.ratelimit import Limits, RateLimiter
from masscer.testing.processes import REDIS_HOST, REDIS_PORT, port_open

URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/13"


@pytest.fixture
def client() -> redis.Redis:
    if not port_open(REDIS_HOST, REDIS_PORT):
        if os.environ.get("CI"):
            pytest.fail("Redis is required when CI is set")
        pytest.skip("Redis is not reachable")
    connection = redis.Redis.from_url(URL)
    connection.flushdb()
    return connection


def test_reservations_are_spaced_by_the_request_rate(client) -> None:
    limiter = RateLimiter(client, "t1", Limits(requests_per_minute=120))
    waits = [limiter.acquire().wait for _ in range(5)]
    assert waits[0] == 0
    for previous, current in zip(waits, waits[1:], strict=False):
        assert current - previous == pytest.approx(0.5, abs=0.05)


def test_a_wait_longer_than_the_caller_accepts_is_not_reserved(client) -> None:
    limiter = RateLimiter(client, "t2", Limits(requests_per_minute=60))
    assert limiter.acquire(max_wait=0.5).reserved
    refused = limiter.acquire(max_wait=0.5)
    assert not refused.reserved and refused.wait == pytest.approx(1.0, abs=0.05)
    # Nothing was reserved by the refusal: the next caller gets the same slot.
    assert limiter.acquire(max_wait=5).wait == pytest.approx(1.0, abs=0.05)


def test_token_budget_limits_large_prompts(client) -> None:
    limiter = RateLimiter(client, "t3", Limits(tokens_per_minute=6000))
    assert limiter.acquire(tokens=6000).wait == 0  # a whole minute's burst
    assert limiter.acquire(tokens=600).wait == pytest.approx(6.0, abs=0.1)


def test_retry_after_pauses_everyone(client) -> None:
    limiter = RateLimiter(client, "t4", Limits(requests_per_minute=6000))
    limiter.block(2.0)
    other = RateLimiter(client, "t4", Limits(requests_per_minute=6000))
    assert other.acquire().wait == pytest.approx(2.0, abs=0.1)


def test_provider_headers_tighten_the_configured_limit(client) -> None:
    limiter = RateLimiter(client, "t5", Limits(requests_per_minute=600))
    limiter.tighten({"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "1000"})
    assert limiter.limits() == Limits(requests_per_minute=60, tokens_per_minute=1000)


def test_many_threads_together_stay_under_the_limit(client) -> None:
    limiter = RateLimiter(client, "t6", Limits(requests_per_minute=1200))  # 20 per second
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            decision = limiter.acquire(max_wait=10)
            time.sleep(decision.wait)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    # 40 calls at 20/s: the first is free, so about 39 / 20 seconds from first to last.
    span = stamps[-1] - stamps[0]
    assert span >= 39 / 20 * 0.95
    assert span <= 39 / 20 * 1.3
