"""LeasedTokens: a lane's batch of fleet-wide tokens, spent locally, topped up at half a batch,
lapsing after ttl; and a model fleet sharing one bucket keeps the shared rate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_engine.sched.lease import LeasedTokens
from mta_engine.sched.throttle import TokenBucket

T0 = 1000.0


def test_asks_for_a_batch_and_not_again_until_half_spent() -> None:
    """10/s with 1 s batches: ask 10, then nothing until fewer than 5 are held."""
    lease = LeasedTokens("rate:mx.a", 10.0, batch_s=1.0)
    assert lease.need(T0) == 10
    lease.on_asked(10)
    assert lease.need(T0) == 0  # one request at a time
    lease.on_grant(T0, 10, 0.0)
    assert lease.available(T0) == 10 and lease.need(T0) == 0
    lease.spend(T0, 5)
    assert lease.need(T0) == 0
    lease.spend(T0, 1)
    assert lease.need(T0) == 6  # tops up to one batch
    assert repr(lease) == "<LeasedTokens rate:mx.a rate=10/s burst=10 held=4.00 grants=1>"


def test_unused_tokens_lapse_after_ttl() -> None:
    """A grant not spent within batch_s is gone: no lane hoards tokens."""
    lease = LeasedTokens("k", 4.0, batch_s=0.5)
    lease.on_asked(2)
    lease.on_grant(T0, 2, 0.0)
    assert lease.available(T0 + 0.49) == 2
    assert lease.available(T0 + 0.5) == 0


def test_spending_past_the_grant_is_debt_paid_by_the_next_grant() -> None:
    """A job that charges more messages than held leaves debt; the next grant pays it first."""
    lease = LeasedTokens("k", 10.0)
    lease.on_asked(10)
    lease.on_grant(T0, 3, 0.1)
    lease.spend(T0, 5)
    assert lease.available(T0) == -2
    assert lease.need(T0 + 1) == 12
    lease.on_asked(12)
    lease.on_grant(T0 + 1, 5, 0.0)
    assert lease.available(T0 + 1) == 3


def test_short_grant_waits_before_asking_again() -> None:
    """An empty shared bucket is not asked again at once: at least a quarter batch later."""
    lease = LeasedTokens("k", 2.0, batch_s=1.0)
    lease.on_asked(2)
    lease.on_grant(T0, 0, 0.1)
    assert lease.need(T0 + 0.2) == 0
    assert lease.wait_s(T0 + 0.2) == pytest.approx(0.05)
    assert lease.need(T0 + 0.25) == 2


def test_wait_is_infinite_only_while_a_request_is_out() -> None:
    """The manager sleeps until the grant wakes it, not on a guess."""
    lease = LeasedTokens("k", 1.0)
    assert lease.wait_s(T0) == 0.0  # may ask now
    lease.on_asked(1)
    assert lease.wait_s(T0) == math.inf
    lease.on_error(T0)
    assert not lease.pending and lease.wait_s(T0) == 0.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LeasedTokens("k", 0.0)
    with pytest.raises(ValueError):
        LeasedTokens("k", 1.0, batch_s=0)


@settings(max_examples=60, deadline=None)
@given(rate=st.sampled_from([0.5, 2.0, 7.0, 50.0]), lanes=st.integers(1, 4),
       steps=st.lists(st.tuples(st.integers(0, 3), st.floats(0.001, 0.4)), min_size=20, max_size=300))
def test_a_fleet_of_leases_keeps_the_shared_rate(rate: float, lanes: int, steps: list[tuple[int, float]]) -> None:
    """Lanes that each spend all they hold, as often as they like, send at most rate * (W + ttl) +
    burst over any window W: the shared bucket (the Lua script's arithmetic) is the only source."""
    shared = TokenBucket(rate, max(1.0, rate), T0)
    leases = [LeasedTokens("k", rate, batch_s=1.0) for _ in range(lanes)]
    now = T0
    sent: list[float] = []
    for who, dt in steps:
        now += dt
        lease = leases[who % lanes]
        n = lease.need(now)
        if n:
            lease.on_asked(n)
            avail = shared.available(now)
            grant = int(min(n, math.floor(avail + 1e-9))) if avail > 0 else 0
            shared.spend(now, grant)
            lease.on_grant(now, grant, 0.0 if grant == n else 1 / rate)
        k = math.floor(lease.available(now) + 1e-9)
        if k > 0:
            lease.spend(now, k)
            sent.extend([now] * k)
    burst, ttl = max(1.0, rate), 1.0
    for i in range(len(sent)):
        for j in range(i, len(sent)):
            w = sent[j] - sent[i]
            assert j - i + 1 <= rate * (w + ttl) + burst + 1e-6


def test_module_is_pure() -> None:
    """lease.py imports nothing that does I/O (the layering rule of STYLE.md)."""
    from tests.unit.test_layering import IO_MODULES, PKG, imported

    assert not imported(Path(PKG) / "sched" / "lease.py") & IO_MODULES
