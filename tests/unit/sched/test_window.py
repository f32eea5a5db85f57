"""Concurrency window (slow start, AIMD) and the dead-site detector."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.sched.window import ConcurrencyWindow, SiteHealth


def test_slow_start_then_additive_increase() -> None:
    """+1 per success up to ssthresh, then +1 only after `value` successes."""
    w = ConcurrencyWindow(limit=20, initial=2)
    for _ in range(4):
        w.on_success()
    assert w.value == 6
    w.on_failure()
    assert (w.value, w.ssthresh) == (3, 3)
    assert repr(w) == "<ConcurrencyWindow 3/20 ssthresh=3 avoidance>"
    for _ in range(2):
        w.on_success()
    assert w.value == 3
    w.on_success()
    assert w.value == 4
    for _ in range(4):
        w.on_success()
    assert w.value == 5


def test_window_never_passes_limit_or_drops_below_one() -> None:
    """Many successes stop at the limit; many failures stop at one."""
    w = ConcurrencyWindow(limit=4, initial=10)
    assert w.value == 4
    for _ in range(100):
        w.on_success()
    assert w.value == 4
    for _ in range(10):
        w.on_failure()
    assert w.value == 1
    assert repr(w) == "<ConcurrencyWindow 1/4 ssthresh=1 avoidance>"


def test_set_limit_clamps_and_throttle_scales() -> None:
    """Lowering the limit clamps the value; a throttle scales it by its factor."""
    w = ConcurrencyWindow(limit=20, initial=16)
    w.on_throttle(0.5)
    assert w.value == 8
    w.set_limit(5)
    assert (w.value, w.limit) == (5, 5)
    with pytest.raises(ValueError):
        w.set_limit(0)
    with pytest.raises(ValueError):
        ConcurrencyWindow(limit=0)


@given(st.integers(1, 50), st.integers(-5, 60),
       st.lists(st.one_of(st.just("ok"), st.just("fail"), st.tuples(st.just("limit"), st.integers(1, 50)),
                          st.tuples(st.just("throttle"), st.floats(0.01, 1.0))), max_size=300))
def test_window_invariant(limit: int, initial: int, ops: list) -> None:
    """Whatever happens, 1 <= value <= limit and ssthresh <= limit."""
    w = ConcurrencyWindow(limit, initial)
    for op in ops:
        if op == "ok":
            w.on_success()
        elif op == "fail":
            w.on_failure()
        elif op[0] == "limit":
            w.set_limit(op[1])
        else:
            w.on_throttle(op[1])
        assert 1 <= w.value <= w.limit
        assert w.ssthresh <= w.limit


def test_cohort_of_all_mx_failures_makes_site_dead() -> None:
    """Five consecutive all-MX failures make the site dead for dead_s; four do not."""
    h = SiteHealth(cohort=5, dead_s=300.0)
    assert [h.on_connect_failure(float(t)) for t in range(5)] == [False, False, False, False, True]
    assert h.dead_until == 304.0
    assert h.is_dead(303.9) and not h.is_dead(304.0)
    assert repr(h) == "<SiteHealth failures=0/5 deaths=1 next_dead_s=600 dead_until=304.000>"


def test_success_breaks_the_cohort() -> None:
    """A success between failures resets the count: the failures must be consecutive."""
    h = SiteHealth(cohort=3)
    h.on_connect_failure(0.0)
    h.on_connect_failure(1.0)
    h.on_success(2.0)
    assert not h.on_connect_failure(3.0)
    assert not h.on_connect_failure(4.0)
    assert h.on_connect_failure(5.0)


def test_repeated_death_doubles_up_to_cap_and_success_resets() -> None:
    """Each death after the last waits twice as long, capped; a success restores the base wait."""
    h = SiteHealth(cohort=1, dead_s=100.0, max_dead_s=350.0)
    now, waits = 0.0, []
    for _ in range(4):
        assert h.on_connect_failure(now)
        assert h.dead_until is not None
        waits.append(h.dead_until - now)
        now = h.dead_until
    assert waits == [100.0, 200.0, 350.0, 350.0]
    assert not h.on_connect_failure(now - 1)  # late failures while dead do not extend it
    h.on_success(now)
    assert h.on_connect_failure(now) and h.dead_until == now + 100.0
