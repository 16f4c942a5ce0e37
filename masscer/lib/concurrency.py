"""At most N model calls in flight at once, across every worker process (Redis).

Providers limit concurrent requests as well as requests per minute: a server that can take
16 calls at once answers the 17th with 429. Workers with more threads than that would make
every wave of calls a storm of 429s. `CallSlots` hands out N slots per endpoint and model:

- a slot is a member of a sorted set scored by its lease's end, so a worker killed during a
  call gives its slot back when the lease runs out (the call timeout plus a margin);
- taking a slot is one Lua script (expired leases dropped, then a slot added if fewer than N
  are held), timed by the Redis server's clock so that workers on several machines agree;
- a thread that finds no slot free waits in BLPOP on a wake-up list that every release
  pushes to, so it sleeps in the Redis server rather than polling, and gives up after
  `max_wait` (the caller then hands its work back instead of holding a thread).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from .ratelimit import client_for, endpoint_key

_TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000) + 60000)
  return 1
end
return 0
"""

_GIVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return 1
"""

# Longest single BLPOP; a lost wake-up (a slot freed by an expired lease) costs at most this.
_WAKE_POLL_SECONDS = 0.5


class NoSlot(Exception):
    """No call slot came free within the wait allowed; `waited` seconds were spent."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"all model call slots busy for {waited:.1f} s")
        self.waited = waited


@dataclass
class CallSlots:
    client: redis.Redis
    key: str
    limit: int
    lease_seconds: float

    @property
    def _wake_key(self) -> str:
        return self.key + ":wake"

    def try_take(self) -> str | None:
        """A slot's token if one is free now, else None."""
        token = uuid.uuid4().hex
        taken = self.client.eval(_TAKE, 1, self.key, self.limit, self.lease_seconds, token)
        return token if taken == 1 else None

    def take(self, max_wait: float) -> str:
        """Wait (at most `max_wait` seconds) for a slot; raises NoSlot."""
        started = time.monotonic()
        while True:
            token = self.try_take()
            if token is not None:
                return token
            left = max_wait - (time.monotonic() - started)
            if left <= 0:
                raise NoSlot(time.monotonic() - started)
            # BLPOP's timeout has a resolution of milliseconds (Redis 6+ accepts decimals).
            self.client.blpop([self._wake_key], timeout=max(0.01, min(left, _WAKE_POLL_SECONDS)))

    def give(self, token: str) -> None:
        self.client.eval(_GIVE, 2, self.key, self._wake_key, token, self.limit)

    def held(self) -> int:
        """Slots held now (expired leases included until the next take)."""
        return int(self.client.zcard(self.key))

    @contextmanager
    def slot(self, max_wait: float) -> Iterator[None]:
        token = self.take(max_wait)
        try:
            yield
        finally:
            self.give(token)


def slots_for(url: str, *, base_url: str, model: str, limit: int, lease_seconds: float) -> CallSlots:
    """The shared call slots of one endpoint and model (next to its rate limit, same client)."""
    return CallSlots(client_for(url), endpoint_key(base_url, model) + ":slots", limit, lease_seconds)
