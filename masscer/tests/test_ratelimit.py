"""The shared rate limiter on real Redis."""
from __future__ import annotations

import os
import threading
import time

import pytest
import redis

from masscer.lib.ratelimit import REQUEST_HEADROOM, Limits, RateLimiter
from testing.processes import REDIS_HOST, REDIS_PORT, port_open

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


def test_retry_after_pauses_everyone_even_without_configured_limits(client) -> None:
    RateLimiter(client, "t12", Limits()).block(2.0)
    assert RateLimiter(client, "t12", Limits()).acquire().wait == pytest.approx(2.0, abs=0.1)


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


def test_request_slots_keep_the_headroom_below_the_provider_limit(client) -> None:
    limiter = RateLimiter(client, "t7", Limits(requests_per_minute=120))
    slots = [limiter.acquire().wait + time.monotonic() for _ in range(4)]
    spacing = 0.5 * (1 + REQUEST_HEADROOM)
    for previous, current in zip(slots, slots[1:], strict=False):
        assert current - previous == pytest.approx(spacing, abs=0.005)


def test_a_caller_holds_both_slots_or_neither(client) -> None:
    limiter = RateLimiter(client, "t8", Limits(requests_per_minute=60, tokens_per_minute=6000))
    assert limiter.acquire(tokens=6000).wait == 0
    # The request slot would come in a second, the tokens only in six: nothing is reserved ...
    refused = limiter.acquire(tokens=600, max_wait=2)
    assert not refused.reserved and refused.wait == pytest.approx(6.0, abs=0.1)
    # ... so the next request still gets the slot a second away, not the one after it.
    assert limiter.acquire(max_wait=5).wait == pytest.approx(1.0 * (1 + REQUEST_HEADROOM), abs=0.05)


def test_a_call_held_back_by_the_token_limit_does_not_bunch_up_with_the_next(client) -> None:
    limiter = RateLimiter(client, "t9", Limits(requests_per_minute=60, tokens_per_minute=6000))
    assert limiter.acquire(tokens=6000).wait == 0
    held = limiter.acquire(tokens=600, max_wait=10).wait  # tokens: 6 s, although its request slot was 1 s
    following = limiter.acquire(tokens=1, max_wait=10).wait
    assert held == pytest.approx(6.0, abs=0.1)
    assert following - held == pytest.approx(1.0 * (1 + REQUEST_HEADROOM), abs=0.05)


def test_a_pause_moves_callers_already_waiting_past_its_end_without_polling(client, monkeypatch) -> None:
    limiter = RateLimiter(client, "t10", Limits(requests_per_minute=600))  # a slot every ~0.1 s
    for _ in range(3):
        limiter.acquire()  # the next free slot is ~0.3 s away
    acquired: list[float] = []
    acquire = limiter.acquire

    def counted(**kwargs):
        decision = acquire(**kwargs)
        acquired.append(decision.wait)
        return decision

    monkeypatch.setattr(limiter, "acquire", counted)
    done: list[float] = []
    waiter = threading.Thread(target=lambda: done.append(limiter.take(max_wait=5).wait))
    waiter.start()
    time.sleep(0.1)
    paused_at = time.monotonic()
    limiter.block(1.0)  # a 429's Retry-After while the waiter sleeps for its slot
    waiter.join()
    assert time.monotonic() - paused_at >= 0.95  # it did not call inside the pause
    assert len(acquired) == 2  # woke once at its old slot, took one new slot: two timed sleeps
    assert done[0] == pytest.approx(sum(acquired), abs=0.01)


def test_a_slot_too_far_away_is_refused_at_once(client) -> None:
    limiter = RateLimiter(client, "t11", Limits(requests_per_minute=6))
    assert limiter.take(max_wait=1).reserved
    began = time.monotonic()
    refused = limiter.take(max_wait=1)
    assert not refused.reserved and refused.wait == pytest.approx(10 * (1 + REQUEST_HEADROOM), abs=0.1)
    assert time.monotonic() - began < 0.5
