"""Retry schedule: exponential with cap and jitter, or a fixed list; RFC 5321 §4.5.4.1 defaults."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.config import QueueConfig
from mta_engine.sched.retry import MIN_DELAY_S, RetryPolicy


def test_default_schedule_doubles_from_five_minutes_to_one_hour() -> None:
    """Without jitter the default waits 5, 10, 20, 40 min, then 1 h for every later retry."""
    p = RetryPolicy(jitter=0.0)
    rng = random.Random(1)
    assert [p.delay(n, rng) for n in range(1, 8)] == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0]


def test_fixed_list_repeats_its_last_value() -> None:
    """A configured list gives the n-th interval; past its end the last one repeats."""
    p = RetryPolicy(intervals_s=(60.0, 900.0), jitter=0.0)
    assert [p.base_delay(n) for n in range(0, 5)] == [0.0, 60.0, 900.0, 900.0, 900.0]


def test_jitter_stays_within_twenty_percent_and_is_seeded() -> None:
    """Jittered delays lie within ±20 % of the base and repeat exactly for the same seed."""
    p = RetryPolicy()
    a = [p.delay(3, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    draws = [p.delay(3, rng) for rng in [random.Random(7)] for _ in range(500)]
    assert min(draws) >= 1200 * 0.8 and max(draws) <= 1200 * 1.2
    assert len(set(draws)) > 400


def test_huge_attempt_counts_do_not_overflow() -> None:
    """An absurd attempt number still yields the cap, not an OverflowError."""
    assert RetryPolicy(jitter=0.0).base_delay(10**9) == 3600.0
    assert RetryPolicy(factor=1.0000001, jitter=0.0).base_delay(10**9) == 3600.0


def test_from_config_reads_queue_section() -> None:
    """from_config accepts the [queue] mapping or the QueueConfig object (default: exponential, jitter)."""
    p = RetryPolicy.from_config({"retry_first_s": 60, "retry_factor": 3, "retry_max_s": 600, "retry_jitter": 0,
                                 "max_age_s": 5.0})
    assert p == RetryPolicy(first_s=60.0, factor=3.0, max_s=600.0, jitter=0.0)
    q = RetryPolicy.from_config(QueueConfig())
    assert q == RetryPolicy(first_s=300.0, factor=2.0, max_s=3600.0, jitter=0.2)
    assert RetryPolicy.from_config(QueueConfig(retry_intervals_s=[60.0, 120.0])).intervals_s == (60.0, 120.0)


@pytest.mark.parametrize("kwargs", [dict(first_s=0), dict(factor=0.5), dict(max_s=10), dict(jitter=1.0),
                                    dict(intervals_s=(60.0, -1.0))])
def test_bad_parameters_are_rejected(kwargs: dict) -> None:
    """Nonsense policies fail at construction, not at the first retry."""
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_repr_names_the_schedule() -> None:
    """The repr shows which kind of schedule is in force."""
    assert repr(RetryPolicy()) == "<RetryPolicy first_s=300 factor=2 max_s=3600 jitter=0.2>"
    assert repr(RetryPolicy(intervals_s=(60,), jitter=0)) == "<RetryPolicy intervals_s=[60.0] jitter=0>"


@given(st.integers(1, 10_000), st.integers(0, 2**32 - 1), st.floats(0.0, 0.9))
def test_delay_bounds(attempt: int, seed: int, jitter: float) -> None:
    """Every delay is >= 1 s and within ±jitter of a base that never exceeds max_s."""
    p = RetryPolicy(jitter=jitter)
    base = p.base_delay(attempt)
    d = p.delay(attempt, random.Random(seed))
    assert base <= p.max_s
    assert d >= MIN_DELAY_S
    assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9


@given(st.integers(1, 200))
def test_base_delay_is_monotonic(attempt: int) -> None:
    """Without jitter a later retry never waits less than an earlier one."""
    p = RetryPolicy(first_s=1.5, factor=1.7, max_s=86400.0)
    assert p.base_delay(attempt) <= p.base_delay(attempt + 1)
