"""Token buckets: smooth rates, unlimited when 0, and the rate*W + burst bound over any window."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.sched.throttle import TokenBucket, default_burst, per_hour, per_minute


def test_per_minute_rate_is_smooth_not_bursty() -> None:
    """120/min with a one-second burst gives two messages per second, never 120 at once."""
    b = TokenBucket(per_minute(120), default_burst(per_minute(120)), now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, False, False]
    assert b.wait_s(0.0) == pytest.approx(0.5)
    assert b.take(0.5) and not b.take(0.5)
    granted = sum(b.take(t / 10) for t in range(5, 605))  # 60 s of polling every 0.1 s
    assert granted == pytest.approx(120, abs=2)


def test_per_hour_helper_and_wait() -> None:
    """60/h is one token a minute; wait_s says how long until the next."""
    b = TokenBucket(per_hour(60), 1.0, now=100.0)
    assert b.take(100.0) and not b.take(130.0)
    assert b.wait_s(130.0) == pytest.approx(30.0)
    assert b.available(160.0) == pytest.approx(1.0)


def test_zero_rate_is_unlimited() -> None:
    """rate 0 grants everything and never asks to wait."""
    b = TokenBucket(0, 1, now=0.0)
    assert all(b.take(0.0) for _ in range(10_000))
    assert b.available(0.0) == math.inf and b.wait_s(0.0) == 0.0
    assert repr(b) == "<TokenBucket unlimited>"


def test_set_rate_keeps_earned_tokens_and_clamps_to_burst() -> None:
    """Lowering the rate keeps what was earned so far; raising it from unlimited starts full."""
    b = TokenBucket(1.0, 2.0, now=0.0)
    b.take(0.0, 2.0)
    b.set_rate(0.5, now=1.0)  # earned 1 token at the old rate
    assert b.available(1.0) == pytest.approx(1.0)
    assert b.available(3.0) == pytest.approx(2.0)
    u = TokenBucket(0, 1, now=0.0)
    u.set_rate(2.0, now=5.0, burst=2.0)
    assert u.available(5.0) == 2.0
    assert repr(u) == "<TokenBucket rate=2/s burst=2 tokens=2.00>"


def test_spend_goes_into_debt() -> None:
    """Use recorded after the fact can overdraw; the bucket refills from below zero."""
    b = TokenBucket(1.0, 1.0, now=0.0)
    b.spend(0.0, 3.0)
    assert b.available(0.0) == pytest.approx(-2.0)
    assert b.wait_s(0.0) == pytest.approx(3.0)


def test_time_going_backwards_earns_nothing() -> None:
    """An older `now` than the last seen adds no tokens."""
    b = TokenBucket(1.0, 1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)
    assert b.take(11.0)


def test_bad_parameters() -> None:
    """Negative rates and sub-token bursts are refused."""
    with pytest.raises(ValueError):
        TokenBucket(-1, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.5, 0.0)


@given(
    rate=st.floats(0.01, 100.0),
    burst_extra=st.floats(0.0, 5.0),
    steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.1, 1.0)), min_size=1, max_size=200),
    window=st.floats(0.0, 50.0),
)
def test_any_window_grants_at_most_rate_times_w_plus_burst(rate: float, burst_extra: float,
                                                           steps: list[tuple[float, float]], window: float) -> None:
    """Over every window of W seconds the tokens taken sum to at most rate*W + burst."""
    burst = 1.0 + burst_extra
    b = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    grants: list[tuple[float, float]] = []
    for dt, frac in steps:
        now += dt
        n = frac * burst
        if b.take(now, n):
            grants.append((now, n))
    for i, (start, _) in enumerate(grants):
        total = sum(n for t, n in grants[i:] if t <= start + window)
        assert total <= rate * window + burst + 1e-6
