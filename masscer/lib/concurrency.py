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

When the operator does not know the provider's limit, N can be learned (`Learning`, issue #17):
additive increase, multiplicative decrease, as TCP does with its window. The learned limit
is a float in Redis, shared by every worker, between a floor and a ceiling; a slot is taken
while fewer than floor(limit) are held. Each call hands its outcome back with its slot:

- a success while every slot was in use adds 1/limit (about +1 per limit's worth of calls);
  one while slots stood idle adds nothing, or a quiet spell would climb to the ceiling and
  the next burst would meet a storm of 429s;
- a 429 halves it (not below the floor), once per wave.

Only a call that began after the last cut moves the limit: the calls in flight at a cut were
sent under the old limit, and their outcomes (a wave of 429s, or successes that would undo
the cut) say nothing about the new one. A call's start is its lease's end less the lease.
"""
from __future__ import annotations

import enum
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from .ratelimit import client_for, endpoint_key

logger = logging.getLogger(__name__)

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

# The learned limit's versions of _TAKE and _GIVE (with `Learning`); the fixed limit keeps those.
# KEYS[1] = slots, KEYS[2] = learned state (hash: limit, cut_at);
# ARGV = lease, token, floor, ceiling, start.
_TAKE_LEARNED = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit') or ARGV[5])
limit = math.floor(math.min(tonumber(ARGV[4]), math.max(tonumber(ARGV[3]), limit)))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000) + 60000)
  return 1
end
return 0
"""

# KEYS[1] = slots, KEYS[2] = wake-up list, KEYS[3] = learned state, KEYS[4] = every model's
# learned limit (the metrics gauge); ARGV = token, outcome ('ok', 'overloaded' or ''), lease,
# floor, ceiling, start, model, state ttl (ms), decrease factor.
# Returns {1 if this call lowered the limit else 0, the limit after it}.
_GIVE_LEARNED = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local floor, ceiling = tonumber(ARGV[4]), tonumber(ARGV[5])
local limit = tonumber(redis.call('HGET', KEYS[3], 'limit') or ARGV[6])
limit = math.min(ceiling, math.max(floor, limit))
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local cut = 0
local fresh = false
if score then
  local started = tonumber(score) - tonumber(ARGV[3])
  fresh = started >= tonumber(redis.call('HGET', KEYS[3], 'cut_at') or 0)
end
if fresh and ARGV[2] == 'ok' then
  if redis.call('ZCARD', KEYS[1]) >= math.floor(limit) then
    limit = math.min(ceiling, limit + 1 / limit)
  end
elseif fresh and ARGV[2] == 'overloaded' then
  local halved = math.max(floor, limit * tonumber(ARGV[9]))
  if halved < limit then cut = 1 end
  limit = halved
  redis.call('HSET', KEYS[3], 'cut_at', string.format('%.6f', t))
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, ceiling - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], 'limit', tostring(limit))
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[8]))
  redis.call('HSET', KEYS[4], ARGV[7], tostring(limit))
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]))
end
return {cut, tostring(limit)}
"""

# Longest single BLPOP; a lost wake-up (a slot freed by an expired lease) costs at most this.
_WAKE_POLL_SECONDS = 0.5


class NoSlot(Exception):
    """No call slot came free within the wait allowed; `waited` seconds were spent."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"all model call slots busy for {waited:.1f} s")
        self.waited = waited


class Outcome(enum.Enum):
    """What a finished call tells a learned limit."""

    OK = "ok"  # the provider took the call
    OVERLOADED = "overloaded"  # a 429: too many calls at once, or too fast
    NEUTRAL = ""  # nothing about the provider's limit (no call made, another error)


@dataclass(frozen=True)
class Learning:
    """How a limit is learned: where it starts, its floor, how hard a 429 cuts it, and
    where every model's learned limit is kept for the metrics (`learned_limits`)."""

    index_key: str
    start: float = 8.0
    floor: float = 1.0
    decrease: float = 0.5
    # A learned limit unused for a day starts again from `start`: the provider may have changed.
    ttl_seconds: float = 86400.0


@dataclass
class CallSlots:
    client: redis.Redis
    key: str
    # The fixed number of slots, or, with `learning`, the ceiling of the learned one.
    limit: int
    lease_seconds: float
    learning: Learning | None = None
    name: str = ""  # the model, for logs and the metrics

    @property
    def _wake_key(self) -> str:
        return self.key + ":wake"

    @property
    def _learned_key(self) -> str:
        return self.key + ":learned"

    def try_take(self) -> str | None:
        """A slot's token if one is free now, else None."""
        token = uuid.uuid4().hex
        if self.learning is None:
            taken = self.client.eval(_TAKE, 1, self.key, self.limit, self.lease_seconds, token)
        else:
            learning = self.learning
            taken = self.client.eval(
                _TAKE_LEARNED, 2, self.key, self._learned_key,
                self.lease_seconds, token, learning.floor, self.limit, learning.start,
            )
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

    def give(self, token: str, outcome: Outcome = Outcome.NEUTRAL) -> None:
        """Give the slot back; with a learned limit, `outcome` moves it (see the module's doc)."""
        if self.learning is None:
            self.client.eval(_GIVE, 2, self.key, self._wake_key, token, self.limit)
            return
        learning = self.learning
        cut, limit = self.client.eval(
            _GIVE_LEARNED, 4, self.key, self._wake_key, self._learned_key, learning.index_key,
            token, outcome.value, self.lease_seconds, learning.floor, self.limit, learning.start,
            self.name, int(learning.ttl_seconds * 1000), learning.decrease,
        )
        if cut:
            logger.warning(
                "model %s answered 429: its call limit is halved to %.1f calls in flight", self.name, float(limit)
            )

    def learned(self) -> float:
        """The learned limit now (a float; slots are floor() of it), or the fixed limit."""
        if self.learning is None:
            return float(self.limit)
        raw = self.client.hget(self._learned_key, "limit")
        value = float(raw) if raw is not None else self.learning.start
        return min(float(self.limit), max(self.learning.floor, value))

    def current_limit(self) -> int:
        """How many calls may be in flight now."""
        return math.floor(self.learned())

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


def slots_for(
    url: str, *, base_url: str, model: str, limit: int, lease_seconds: float, start: float | None = None
) -> CallSlots:
    """The shared call slots of one endpoint and model (next to its rate limit, same client).

    With `start`, the limit is learned from there, `limit` its ceiling (`Learning`).
    """
    learning = None
    if start is not None:
        learning = Learning(index_key=learned_index_key(base_url), start=min(float(limit), start))
    return CallSlots(
        client_for(url), endpoint_key(base_url, model) + ":slots", limit, lease_seconds, learning, model
    )


def learned_index_key(base_url: str) -> str:
    """The hash of every model's learned limit at one endpoint."""
    return endpoint_key(base_url, "") + ":learned-limits"


def learned_limits(url: str, *, base_url: str) -> dict[str, float]:
    """Each model's learned limit at the endpoint (those used in the last day)."""
    raw = client_for(url).hgetall(learned_index_key(base_url))
    return {model.decode(): float(value) for model, value in raw.items()}
