"""A rate limiter shared by every llm worker, in Redis.

Requests and tokens per minute for one model endpoint are each a GCRA (generic cell rate
algorithm) kept in one Redis key: the "theoretical arrival time" of the next request. A
caller *reserves* its slot atomically and learns how long to wait for it, so callers queue
in order without polling; a wait longer than the caller is willing to hold a thread for is
not reserved, and the caller hands its work back with that countdown instead.

A 429's Retry-After pauses the endpoint for everyone (`block`), and limits announced by the
provider's `x-ratelimit-limit-*` headers tighten the configured ones (`tighten`).
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

# KEYS[1] = state key; ARGV = interval_ms, burst, cost, max_wait_ms, reserve (1/0)
# Returns wait in ms (>= 0, reserved) or -(wait in ms) - 1 when not reserved.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
local wait = allow_at - now
if wait < 0 then wait = 0 end
if wait > max_wait then return -wait - 1 end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1000, new_tat - now + 1000))
return wait
"""

# KEYS[1] = state key; ARGV[1] = pause in ms. Pushes the arrival time to now + pause.
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < until_ms then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
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

    def limits(self) -> Limits:
        """The configured limits, tightened by what the provider announced."""
        announced = self._redis.hgetall(f"{self._key}:announced")
        rpm = _tighter(self._configured.requests_per_minute, announced.get(b"requests"))
        tpm = _tighter(self._configured.tokens_per_minute, announced.get(b"tokens"))
        return Limits(rpm, tpm)

    def acquire(self, *, tokens: int = 0, max_wait: float = 30.0) -> Decision:
        """Reserve a request (and `tokens`) slot, or say how long until one is free."""
        limits = self.limits()
        waits = []
        if limits.requests_per_minute:
            waits.append(self._run(":req", 60_000 / limits.requests_per_minute, 1, 1, max_wait))
        if limits.tokens_per_minute and tokens:
            # Burst of a whole minute's tokens: a big prompt must fit at all.
            tpm = limits.tokens_per_minute
            waits.append(self._run(":tok", 60_000 / tpm, tpm, min(tokens, tpm), max_wait))
        if not waits:
            return Decision(0.0, True)
        reserved = all(w >= 0 for w in waits)
        wait = max(w if w >= 0 else -w - 1 for w in waits) / 1000
        return Decision(wait, reserved)

    def block(self, seconds: float) -> None:
        """Pause every worker's requests to this endpoint (a 429's Retry-After)."""
        if seconds > 0:
            self._block(keys=[self._key + ":req"], args=[int(seconds * 1000)])

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

    def _run(self, suffix: str, interval_ms: float, burst: int, cost: int, max_wait: float) -> int:
        return int(self._gcra(keys=[self._key + suffix], args=[interval_ms, burst, cost, int(max_wait * 1000)]))


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
_lock = threading.Lock()


def limiter_for(redis_url: str, *, base_url: str, model: str, limits: Limits) -> RateLimiter:
    """One limiter (and Redis connection pool) per endpoint and process."""
    key = (redis_url, endpoint_key(base_url, model), limits)
    with _lock:
        limiter = _limiters.get(key)
        if limiter is None:
            client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
            limiter = RateLimiter(client, key[1], limits)
            _limiters[key] = limiter
        return limiter


def sleep(seconds: float) -> None:
    # A reserved slot is waited for in this thread: it is a timed sleep, not a poll.
    if seconds > 0:
        time.sleep(seconds)
