"""The shared limit on model calls in flight (masscer.lib.concurrency) on real Redis."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from masscer.lib.concurrency import CallSlots, NoSlot

from .test_ratelimit import URL, client  # noqa: F401  (the Redis fixture)


def slots(connection: redis.Redis, limit: int, lease: float = 30.0) -> CallSlots:
    # A key of its own per test, so runs that share this Redis database do not meet.
    return CallSlots(connection, f"test-slots:{uuid.uuid4().hex}", limit, lease)


def test_never_more_calls_in_flight_than_slots_across_threads(client) -> None:  # noqa: F811
    shared = slots(client, 3)
    in_flight = peak = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal in_flight, peak
        with shared.slot(max_wait=10):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.05)
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 3  # the limit holds, and it is used fully
    assert shared.held() == 0  # every slot came back


def test_a_waiting_caller_sleeps_in_redis_and_wakes_when_a_slot_is_freed(client) -> None:  # noqa: F811
    shared = slots(client, 1)
    held = shared.take(max_wait=1)
    scripts = 0
    original = client.eval

    def counting_eval(*args, **kwargs):
        nonlocal scripts
        scripts += 1
        return original(*args, **kwargs)

    client.eval = counting_eval  # type: ignore[method-assign]
    got: list[float] = []
    waiter = threading.Thread(target=lambda: (shared.take(max_wait=5), got.append(time.monotonic())))
    waiter.start()
    time.sleep(1.0)
    released = time.monotonic()
    shared.give(held)
    waiter.join(5)
    assert got and got[0] - released < 0.3  # woken by the release, not by a poll interval
    # One attempt per wake-up or 0.5 s BLPOP timeout, plus the release: no busy loop.
    assert scripts <= 5


def test_a_killed_holders_slot_returns_when_its_lease_ends(client) -> None:  # noqa: F811
    shared = slots(client, 1, lease=0.5)
    assert shared.try_take() is not None  # never given back, as if the worker died
    assert shared.try_take() is None
    time.sleep(0.6)
    assert shared.try_take() is not None


def test_no_slot_within_the_wait_allowed_raises(client) -> None:  # noqa: F811
    shared = slots(client, 1)
    shared.take(max_wait=1)
    started = time.monotonic()
    with pytest.raises(NoSlot) as caught:
        shared.take(max_wait=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    assert caught.value.waited >= 0.25
