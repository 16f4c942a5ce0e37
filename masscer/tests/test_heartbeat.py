"""The lease heartbeat renews what is held, drops what was taken over, and retries soon after a failure."""
from __future__ import annotations

import time

from masscer.lib.heartbeat import Heartbeat


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_held_lease_is_renewed_until_the_block_ends() -> None:
    beat = Heartbeat(interval=0.05)
    renewals: list[float] = []
    with beat.hold("item 1", lambda: renewals.append(time.monotonic()) is None):
        assert wait_for(lambda: len(renewals) >= 3)
    count = len(renewals)
    time.sleep(0.2)
    assert len(renewals) <= count + 1  # at most a tick already under way
    assert beat.held() == []


def test_a_lease_someone_took_over_is_dropped() -> None:
    beat = Heartbeat(interval=0.05)
    calls = []
    with beat.hold("item 2", lambda: calls.append(1) and False):
        assert wait_for(lambda: calls and beat.held() == [])
        time.sleep(0.2)
        assert len(calls) == 1


def test_a_failed_renewal_is_tried_again_soon_and_the_holder_told() -> None:
    ticks: list[tuple[float, bool]] = []
    beat = Heartbeat(interval=0.5, retry=0.05, on_tick_end=lambda healthy: ticks.append((time.monotonic(), healthy)))
    outcomes = iter([RuntimeError("database away")])

    def renew() -> bool:
        outcome = next(outcomes, True)
        if isinstance(outcome, Exception):
            raise outcome
        return True

    with beat.hold("item 3", renew):
        assert wait_for(lambda: len(ticks) >= 3)
    (failed_at, first), (retried_at, second), (next_at, third) = ticks[:3]
    assert (first, second, third) == (False, True, True)
    assert retried_at - failed_at < 0.3  # the retry, not the whole interval
    assert next_at - retried_at > 0.35  # healthy again: back to the interval
