"""A rate limiter shared by every caller of one model endpoint, in Redis.

Requests and tokens per minute for one model endpoint are each a GCRA (generic cell rate
algorithm) kept in one Redis key: the "theoretical arrival time" of the next request. A
caller *reserves* its slot in both at once, atomically, and learns how long to wait for it,
so callers queue in order without polling; a wait longer than the caller is willing to hold
a thread for reserves nothing, and the caller hands its work back with that countdown instead.

The request limit has a burst of one (no initial burst: calls are spaced 60/RPM apart from
the first) and keeps REQUEST_HEADROOM below the configured rate, because a call reaches the
provider a little after its slot and by a varying amount: at exactly the provider's rate, a
call that arrives early and one that arrived late 60 s before would share the provider's
60 s window with RPM others, and the provider answers 429.

A 429's Retry-After pauses the endpoint for everyone (`block`), limits configured or not: no
new slot begins before the pause ends, and a caller already asleep for an earlier slot that falls inside the pause takes
a new one after it (`take`). Limits announced by the provider's `x-ratelimit-limit-*` headers
tighten the configured ones (`tighten`).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)

# The first request needs no wait; every later one waits for its slot (60/RPM after the last).
REQUEST_BURST = 1
# Request slots are spaced this fraction wider than the configured rate: 2 % of a minute is
# 1.2 s, more than the scatter of the moments calls reach the provider after their slots.
REQUEST_HEADROOM = 0.02
# A caller takes a new slot at most this many times when pauses begin while it waits.
_MAX_RETAKES = 3

# Both limits in one step, so that a caller holds both slots or neither.
# KEYS[1], KEYS[2] = requests and tokens state (the "theoretical arrival time", ms),
# KEYS[3] = the end of a pause (`block`; it holds even when no limit is configured);
# ARGV = req_interval_ms, req_burst, tok_interval_ms, tok_burst, tok_cost, max_wait_ms
# (an interval of 0 turns that limit off). The call is due when the pause is over and both
# limits allow it; each limit's arrival time then moves on from that moment (standard GCRA
# with the arrival at the call, not at the reservation: a call held back by one limit does
# not bunch up with later calls in the other).
# Returns the wait in ms (>= 0, reserved) or -(wait in ms) - 1 when nothing was reserved.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local max_wait = tonumber(ARGV[6])
local limits = {
  {KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1},
  {KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])},
}
local due = math.max(now, tonumber(redis.call('GET', KEYS[3]) or 0))
local tats = {}
for i, limit in ipairs(limits) do
  local interval, burst, cost = limit[2], limit[3], limit[4]
  if interval > 0 and cost > 0 then
    local tat = tonumber(redis.call('GET', limit[1]) or now)
    if tat < now then tat = now end
    tats[i] = tat
    local allow_at = tat + interval * (cost - burst)
    if allow_at > due then due = allow_at end
  end
end
local wait = due - now
if wait > max_wait then return -math.ceil(wait) - 1 end
for i, limit in ipairs(limits) do
  if tats[i] then
    local new_tat = math.max(tats[i], due) + limit[2] * limit[4]
    redis.call('SET', limit[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  end
end
return math.ceil(wait)
"""

# KEYS[1] = requests state, KEYS[2] = pause end; ARGV[1] = pause in ms. No request slot
# begins before now + pause; the pause's end is kept for callers already waiting.
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = now + tonumber(ARGV[1])
local px = math.ceil(tonumber(ARGV[1])) + 1000
if tonumber(redis.call('GET', KEYS[1]) or 0) < until_ms then
  redis.call('SET', KEYS[1], tostring(until_ms), 'PX', px)
end
if tonumber(redis.call('GET', KEYS[2]) or 0) < until_ms then
  redis.call('SET', KEYS[2], tostring(until_ms), 'PX', px)
end
return math.ceil(until_ms)
"""

# KEYS[1] = pause end. Returns the ms left of the pause (0 when there is none).
_PAUSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = tonumber(redis.call('GET', KEYS[1]) or 0)
if until_ms > now then return math.ceil(until_ms - now) end
return 0
"""


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0  # 0 = unlimited
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class Decision:
    """Wait this long, then call (reserved); or, if not reserved, come back after `wait`."""

    wait: float
    reserved: bool


def endpoint_key(base_url: str, model: str) -> str:
    digest = hashlib.sha256(f"{base_url}|{model}".encode()).hexdigest()[:16]
    return f"masscer:ratelimit:{digest}"


class RateLimiter:
    """Requests- and tokens-per-minute limits for one endpoint, shared through Redis."""

    def __init__(self, client: redis.Redis, key: str, limits: Limits) -> None:
        self._redis = client
        self._key = key
        self._configured = limits
        self._gcra = client.register_script(_GCRA)
        self._block = client.register_script(_BLOCK)
        self._paused = client.register_script(_PAUSED)

    def limits(self) -> Limits:
        """The configured limits, tightened by what the provider announced."""
        announced = self._redis.hgetall(f"{self._key}:announced")
        rpm = _tighter(self._configured.requests_per_minute, announced.get(b"requests"))
        tpm = _tighter(self._configured.tokens_per_minute, announced.get(b"tokens"))
        return Limits(rpm, tpm)

    def acquire(self, *, tokens: int = 0, max_wait: float = 30.0) -> Decision:
        """Reserve a request (and `tokens`) slot, or say how long until one is free."""
        limits = self.limits()
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        req_interval = 60_000 / rpm * (1 + REQUEST_HEADROOM) if rpm else 0
        # Burst of a whole minute's tokens: a big prompt must fit at all.
        tok_interval = 60_000 / tpm if tpm and tokens else 0
        cost = min(tokens, tpm) if tpm else 0
        result = int(
            self._gcra(
                keys=[self._key + ":req", self._key + ":tok", self._key + ":paused"],
                args=[req_interval, REQUEST_BURST, tok_interval, tpm, cost, int(max_wait * 1000)],
            )
        )
        if result >= 0:
            return Decision(result / 1000, True)
        return Decision((-result - 1) / 1000, False)

    def take(self, *, tokens: int = 0, max_wait: float = 30.0) -> Decision:
        """Reserve a slot and wait for it in this thread (a timed sleep, not a poll).

        Returns once the slot has come (reserved; `wait` is the time waited), or at once when
        the slot is further away than `max_wait` (not reserved; nothing is held). If a pause
        (`block`) began while this caller slept and is still on when its slot comes, the slot
        is given up and a new one, after the pause, is taken.
        """
        waited = 0.0
        for _ in range(_MAX_RETAKES):
            decision = self.acquire(tokens=tokens, max_wait=max_wait)
            if not decision.reserved:
                return decision
            if decision.wait <= 0:
                return Decision(waited, True)
            sleep(decision.wait)
            waited += decision.wait
            if not self.paused_for():
                return Decision(waited, True)
        return Decision(waited, True)

    def paused_for(self) -> float:
        """Seconds left of a pause set by `block` (0 when there is none)."""
        return int(self._paused(keys=[self._key + ":paused"])) / 1000

    def block(self, seconds: float) -> None:
        """Pause every caller's requests to this endpoint (a 429's Retry-After)."""
        if seconds > 0:
            self._block(keys=[self._key + ":req", self._key + ":paused"], args=[int(seconds * 1000)])

    def tighten(self, headers: Mapping[str, str]) -> None:
        """Remember the provider's own limits from `x-ratelimit-limit-*` response headers."""
        announced = {}
        for name, field in (("x-ratelimit-limit-requests", "requests"), ("x-ratelimit-limit-tokens", "tokens")):
            value = _int_header(headers, name)
            if value:
                announced[field] = value
        if announced:
            self._redis.hset(f"{self._key}:announced", mapping=announced)
            self._redis.expire(f"{self._key}:announced", 3600)


def _tighter(configured: int, announced: bytes | None) -> int:
    if not announced:
        return configured
    value = int(announced)
    return min(configured, value) if configured else value


def _int_header(headers: Mapping[str, str], name: str) -> int:
    raw = headers.get(name) or headers.get(name.title())
    try:
        return int(float(raw)) if raw else 0
    except ValueError:
        return 0


_limiters: dict[tuple[str, str, Limits], RateLimiter] = {}
_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def client_for(redis_url: str) -> redis.Redis:
    """One Redis client (and connection pool) per URL and process, shared by the limits."""
    with _lock:
        client = _clients.get(redis_url)
        if client is None:
            client = _clients[redis_url] = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        return client


def limiter_for(redis_url: str, *, base_url: str, model: str, limits: Limits) -> RateLimiter:
    """One limiter per endpoint and process."""
    key = (redis_url, endpoint_key(base_url, model), limits)
    client = client_for(redis_url)
    with _lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = _limiters[key] = RateLimiter(client, key[1], limits)
        return limiter


def sleep(seconds: float) -> None:
    # A reserved slot is waited for in this thread: it is a timed sleep, not a poll.
    if seconds > 0:
        time.sleep(seconds)
