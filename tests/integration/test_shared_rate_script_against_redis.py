"""The fleet-wide rate's Lua script on a real redis-server: two clients hammering one bucket get
no more than rate * elapsed + burst between them; a server that lost its scripts is served again;
an unreachable server marks the shared limits down instead of raising into the manager."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import pytest

from mta_engine.sched.lease import LeasedTokens
from mta_engine.sched.shared_limits import RedisRateStore, SharedLimits
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

HOST = "127.0.0.151"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", host=HOST).start()
    try:
        yield server
    finally:
        server.stop()


def test_two_clients_share_one_bucket(redis_server: RedisServer) -> None:
    """20/s with a burst of 20: whatever two clients ask, the grants stay within the bucket."""
    rate, burst = 20.0, 20.0

    async def hammer(store: RedisRateStore, deadline: float) -> int:
        got = 0
        for _ in range(2000):  # bounded in count and in time
            if time.monotonic() >= deadline:
                break
            (granted, wait_s), = await store.take([("rate:mx.shared.test", rate, burst, 3)])
            assert granted >= 0 and wait_s >= 0
            got += granted
        return got

    async def go() -> tuple[int, int, float]:
        a = RedisRateStore(redis_server.url, key_prefix="t1:", timeout_s=1.0)
        b = RedisRateStore(redis_server.url, key_prefix="t1:", timeout_s=1.0)
        started = time.monotonic()
        got_a, got_b = await asyncio.gather(hammer(a, started + 1.5), hammer(b, started + 1.5))
        elapsed = time.monotonic() - started
        await a.close()
        await b.close()
        return got_a, got_b, elapsed

    got_a, got_b, elapsed = asyncio.run(go())
    assert got_a + got_b <= rate * elapsed + burst
    assert got_a + got_b >= burst  # the bucket starts full
    assert got_a > 0 and got_b > 0


def test_script_cache_lost_is_reloaded(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH (as after a server restart) the next batch loads the script again."""

    async def go() -> list[tuple[int, float]]:
        store = RedisRateStore(redis_server.url, timeout_s=1.0)
        first = await store.take([("k", 1.0, 2.0, 5)])
        await store.client.script_flush()
        again = await store.take([("k", 1.0, 2.0, 5), ("other", 5.0, 5.0, 5)])
        await store.close()
        return first + again

    first, again, other = asyncio.run(go())
    assert first[0] == 2 and again[0] == 0 and other[0] == 5


def test_unreachable_redis_marks_shared_limits_down(tmp_path: Path) -> None:
    """Nothing listens: the round trip fails within timeout_s and the lanes are told to fall back."""
    changes: list[bool] = []

    async def go() -> SharedLimits:
        store = RedisRateStore(f"redis://{HOST}:{free_port(HOST)}/0", timeout_s=0.5)
        shared = SharedLimits(store, timeout_s=0.5, retry_s=5.0, clock=time.monotonic, on_change=changes.append,
                              wake=lambda: None)
        lease = LeasedTokens("rate:mx.x.test", 10.0)
        shared.request(lease, time.monotonic())
        shared.flush()
        task = shared._task
        assert task is not None
        await asyncio.wait_for(task, 10)
        assert not lease.pending and lease.available(time.monotonic()) == 0
        await shared.close()
        return shared

    shared = asyncio.run(go())
    assert changes == [False] and not shared.up and shared.failures == 1
