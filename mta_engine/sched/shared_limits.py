"""Fleet-wide rate limits: shared token buckets in Redis, leased in batches.

Contract: the I/O adapter behind ``sched.lease.LeasedTokens``, used by the manager only (the
single place that dispatches). Several engine instances that send to the same site (from the same
source, when sources are configured) take its ``shared`` message rate from one token bucket in
Redis, key ``<key_prefix>rate:<site>[:<source>]``. One atomic Lua script (``RATE_SCRIPT``) refills
the bucket by the Redis server's clock (so the instances' clocks do not matter), grants up to the
number of tokens asked, and says when the next token is due. All the leases a round asks for go in
one pipelined round trip, in a background task: the manager's loop never waits for Redis, and a
round trip is made per batch of messages, not per message.

Failure: a round trip that errs or takes longer than ``timeout_s`` marks the store down; the lanes
fall back to their local buckets (``SiteState.set_shared_up``: ``1 / fleet_size`` of the rate) and
``shared_limits_unavailable`` is logged once. Every ``retry_s`` a lane with work probes again;
the first answer restores the shared rates (``shared_limits_restored``). Mail never waits on
Redis for longer than one ``timeout_s``, and nothing is lost: a failed lease grants nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from .lease import LeasedTokens

__all__ = ["RATE_SCRIPT", "RateStore", "RedisRateStore", "SharedLimits"]

log = structlog.get_logger("manager")

RATE_SCRIPT = """
-- A token bucket per key. KEYS[1]: the bucket. ARGV: rate (tokens/s), burst (bucket size),
-- tokens wanted. Returns {tokens granted (integer), seconds until the next token (string)}.
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
tokens = math.min(tokens, burst)
local grant = math.floor(math.min(want, tokens) + 1e-9)
if grant < 0 then grant = 0 end
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 60) * 1000))
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
return {grant, tostring(wait)}
"""

Request = tuple[str, float, float, int]
"""(key without prefix, rate per second, burst, tokens wanted)."""


class RateStore(Protocol):
    """Where the shared buckets live (Redis; a fake in unit tests)."""

    async def take(self, requests: Sequence[Request]) -> list[tuple[int, float]]:
        """For each request, (tokens granted, seconds until the next token), in one round trip."""
        ...

    async def close(self) -> None: ...


class RedisRateStore:
    """``RATE_SCRIPT`` over redis.asyncio: one pipelined round trip of EVALSHA per batch."""

    def __init__(self, url: str, *, key_prefix: str = "mta-engine:", timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import NoScriptError

        self.key_prefix = key_prefix
        # No retries inside the client: SharedLimits bounds each round trip and falls back.
        self.client: Any = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                   retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._sha: str | None = None
        self._no_script: type[Exception] = NoScriptError

    def __repr__(self) -> str:
        return f"<RedisRateStore prefix={self.key_prefix!r} loaded={self._sha is not None}>"

    async def take(self, requests: Sequence[Request]) -> list[tuple[int, float]]:
        for attempt in (0, 1):
            if self._sha is None:
                self._sha = str(await self.client.script_load(RATE_SCRIPT))
            async with self.client.pipeline(transaction=False) as pipe:
                for key, rate, burst, want in requests:
                    pipe.evalsha(self._sha, 1, self.key_prefix + key, repr(float(rate)), repr(float(burst)),
                                 int(want))
                try:
                    replies = await pipe.execute()
                except self._no_script:
                    if attempt:
                        raise
                    self._sha = None  # the server lost its script cache (a restart): load it again
                    continue
            return [(int(g), float(w)) for g, w in replies]
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self.client.aclose()


class SharedLimits:
    """Batches the leases lanes ask for into background round trips; tracks whether the store is up."""

    def __init__(self, store: RateStore, *, timeout_s: float, retry_s: float, clock: Callable[[], float],
                 on_change: Callable[[bool], None], wake: Callable[[], None]) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.clock = clock
        self.on_change = on_change
        self.wake = wake
        self.up = True
        self.round_trips = 0
        self.failures = 0
        self._retry_at = 0.0
        self._batch: list[LeasedTokens] = []
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "up" if self.up else f"down (retry at {self._retry_at:.3f})"
        return (f"<SharedLimits {state} round_trips={self.round_trips} failures={self.failures}"
                f" queued={len(self._batch)} in_flight={self._task is not None}>")

    def request(self, lease: LeasedTokens, now: float) -> None:
        """Ask for a top-up of ``lease`` if it runs low (sent by the next ``flush``)."""
        if not self.up and now < self._retry_at:
            return
        n = lease.need(now)
        if n:
            lease.on_asked(n)
            self._batch.append(lease)

    def flush(self) -> None:
        """Send what was asked, unless a round trip is already out (its end sends the rest)."""
        if self._batch and self._task is None:
            batch, self._batch = self._batch, []
            self._task = asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[LeasedTokens]) -> None:
        reqs = [(lease.key, lease.rate_per_s, lease.burst, lease.asked) for lease in batch]
        try:
            self.round_trips += 1
            replies = await asyncio.wait_for(self.store.take(reqs), self.timeout_s)
            if len(replies) != len(batch):
                raise ValueError(f"{len(replies)} replies to {len(batch)} requests")
        except Exception as exc:  # any failure of the store: fall back, never lose or stall mail
            now = self.clock()
            for lease in batch:
                lease.on_error(now)
            self._down(now, exc)
        else:
            now = self.clock()
            for lease, (granted, wait_s) in zip(batch, replies):
                lease.on_grant(now, granted, wait_s)
            if not self.up:
                self.up = True
                log.info("shared_limits_restored")
                self.on_change(True)
        finally:
            self._task = None
            self.wake()

    def _down(self, now: float, exc: Exception) -> None:
        self.failures += 1
        self._retry_at = now + self.retry_s
        if self.up:
            self.up = False
            log.warning("shared_limits_unavailable", error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                        retry_s=self.retry_s, fallback="local limits")
            self.on_change(False)

    async def close(self) -> None:
        """Wait for a round trip still out (bounded by its timeout), then close the store."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=self.timeout_s + 1)
        await self.store.close()
