"""SiteState: window + rates + health + backoff + suspension, driven by a fake clock (plain floats)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.sched.signals import Rule, ThrottleRules
from mta_engine.sched.site import RESULT_KINDS, Mode, ModeChange, SiteLimits, SiteState

SITE = "mx1.example.net,mx2.example.net"
T0 = 1_700_000_000.0


def fill(s: SiteState, now: float) -> int:
    """Dispatch everything the site allows now; return how many."""
    n = s.can_dispatch(now)
    s.on_dispatch(now, n)
    return n


def test_slow_start_grows_window_on_success() -> None:
    """A new site starts at two sessions and gains one per success up to its limit."""
    s = SiteState(SITE, SiteLimits(max_connections=5), T0)
    assert fill(s, T0) == 2 and s.can_dispatch(T0) == 0
    assert s.next_ready_s(T0) == math.inf  # only a result can free a slot
    s.on_result(T0 + 1, "delivered")
    s.on_result(T0 + 1, "rejected")
    assert s.window.value == 4 and s.can_dispatch(T0 + 1) == 4
    assert repr(s) == f"<SiteState {SITE} mode=NORMAL window=4/5 in_flight=0 rate=unlimited level=1.00/1.00>"


def test_connection_failures_halve_the_window() -> None:
    """A connect failure, timeout or 421 is multiplicative decrease."""
    s = SiteState(SITE, SiteLimits(max_connections=20, initial_connections=16), T0)
    fill(s, T0)
    for kind, want in (("timeout", 8), ("closing_421", 4), ("connect_failed", 2), ("throttled", 1)):
        s.on_result(T0 + 1, kind)
        assert s.window.value == want
    assert s.mode is Mode.NORMAL and s.changes == []


def test_message_rate_is_smooth() -> None:
    """60 messages/min lets one job start per second, and says when the next may."""
    s = SiteState(SITE, SiteLimits(messages_per_minute=60, initial_connections=20), T0)
    assert fill(s, T0) == 1
    assert s.can_dispatch(T0 + 0.5) == 0
    assert s.next_ready_s(T0 + 0.5) == pytest.approx(0.5)
    assert fill(s, T0 + 1.0) == 1
    assert repr(s).endswith("in_flight=2 rate=60/min level=1.00/1.00>")


def test_hourly_rate_is_smooth_too() -> None:
    """120 messages/hour is one every 30 s, not 120 at the top of the hour."""
    s = SiteState(SITE, SiteLimits(messages_per_hour=120, initial_connections=20), T0)
    started = [fill(s, T0 + t) for t in range(0, 300)]
    assert sum(started) == 10 and started[0] == 1 and started[30] == 1


def test_new_connections_limit_spares_warm_slots() -> None:
    """With 6 new connections/min, a freed (warm) slot is reused without a new-connection token."""
    s = SiteState(SITE, SiteLimits(new_connections_per_minute=6, initial_connections=10), T0, idle_s=10.0)
    assert fill(s, T0) == 1  # one new-connection token (burst 1), though the window has room for 10
    assert s.next_ready_s(T0) == pytest.approx(10.0)
    s.on_result(T0 + 2, "delivered")
    assert s.next_ready_s(T0 + 2) == 0.0
    assert fill(s, T0 + 2) == 1  # reuses the warm session; the token bucket holds only 0.2
    s.on_result(T0 + 3, "timeout")  # a failed session leaves nothing warm
    assert s.can_dispatch(T0 + 3) == 0
    assert s.can_dispatch(T0 + 10) == 1  # the token has refilled


def test_throttle_backoff_then_step_recovery() -> None:
    """A throttle halves rate and connection limit for backoff_s, then each step moves halfway back."""
    rule = Rule(name="slow", provider="acme", code=(421,), backoff_s=600.0, rate_factor=0.5,
                concurrency_factor=0.5)
    s = SiteState(SITE, SiteLimits(max_connections=20, messages_per_minute=600, initial_connections=20), T0)
    fill(s, T0)
    s.on_result(T0 + 10, "throttled", rule)
    assert s.mode is Mode.BACKOFF
    assert (s.window.limit, s.window.value) == (10, 10)
    assert s.per_minute.rate_per_s == pytest.approx(5.0)
    assert repr(s) == f"<SiteState {SITE} mode=BACKOFF window=10/10 in_flight=9 rate=300/min level=0.50/0.50>"
    s.tick(T0 + 609)
    assert s.window.limit == 10  # still held
    s.tick(T0 + 610 + 600 * 2)  # three steps due: at +610, +1210, +1810
    assert s.mode is Mode.NORMAL and s.window.limit == 20 and s.per_minute.rate_per_s == pytest.approx(10.0)
    assert s.drain_changes() == [
        ModeChange(T0 + 10, SITE, Mode.NORMAL, Mode.BACKOFF,
                   "throttled by throttle rule slow (acme): rate 50%, connections 50% (limit 10) for 600s"),
        ModeChange(T0 + 610, SITE, Mode.BACKOFF, Mode.BACKOFF, "recovery step: rate 75%, connections 75% (limit 15)"),
        ModeChange(T0 + 1210, SITE, Mode.BACKOFF, Mode.BACKOFF,
                   "recovery step: rate 88%, connections 88% (limit 17)"),
        ModeChange(T0 + 1810, SITE, Mode.BACKOFF, Mode.NORMAL, "recovered: configured limits restored"),
    ]
    assert s.changes == [] and s.rule is None


def test_rethrottle_soon_extends_later_deepens() -> None:
    """Signals within the re-throttle gap only extend the backoff; a later one lowers limits again."""
    rule = Rule(name="slow", code=(421,), backoff_s=300.0)
    s = SiteState(SITE, SiteLimits(max_connections=32, initial_connections=32), T0)
    s.throttle(T0, rule)
    s.throttle(T0 + 5, rule)  # answers to sessions started before the first signal
    assert (s.concurrency_level, s.window.limit) == (0.5, 16)
    s.throttle(T0 + 200, rule)
    assert (s.concurrency_level, s.window.limit) == (0.25, 8)
    s.tick(T0 + 499)
    assert s.window.limit == 8  # the hold now runs to T0 + 500
    s.tick(T0 + 500)
    assert s.window.limit == 20  # halfway back: 0.625 * 32
    causes = [c.cause.split(" by ")[0] for c in s.drain_changes()]
    assert causes == ["throttled", "throttled again (backoff extended)", "throttled", "recovery step: rate 62%, connections 62% (limit 20)"]


def test_exemption_rule_does_not_throttle() -> None:
    """A greylisting reply matches an exemption rule and changes nothing."""
    rule = ThrottleRules.default().match(451, "4.7.1", "Greylisted, try again later")
    s = SiteState(SITE, SiteLimits(), T0)
    assert rule is not None
    s.throttle(T0, rule)
    assert s.mode is Mode.NORMAL and s.changes == []


def test_dead_site_after_a_cohort_of_failures_then_probe() -> None:
    """Five consecutive all-MX failures make the site DEAD: nothing dispatched until dead_s has passed."""
    s = SiteState(SITE, SiteLimits(initial_connections=5), T0, cohort=5, dead_s=300.0)
    assert fill(s, T0) == 5
    for i in range(5):
        s.on_result(T0 + 30 + i, "connect_failed")
    assert s.mode is Mode.DEAD
    assert s.can_dispatch(T0 + 100) == 0
    assert s.next_ready_s(T0 + 100) == pytest.approx(234.0)
    assert s.can_dispatch(T0 + 334) == 1  # a single probe: the window fell to one
    s.on_dispatch(T0 + 334)
    s.on_result(T0 + 335, "delivered")
    assert s.changes == [
        ModeChange(T0 + 34, SITE, Mode.NORMAL, Mode.DEAD,
                   "every MX host failed on 5 consecutive attempts; dead for 300s (death 1)"),
        ModeChange(T0 + 334, SITE, Mode.DEAD, Mode.NORMAL, "dead period over: probing the site again"),
    ]
    assert s.health.deaths == 0


def test_repeated_death_waits_longer() -> None:
    """A probe that fails again after a death completes a new cohort and doubles the dead time."""
    s = SiteState(SITE, SiteLimits(), T0, cohort=1, dead_s=300.0)
    s.on_dispatch(T0)
    s.on_result(T0, "connect_failed")
    s.on_dispatch(T0 + 300)
    s.on_result(T0 + 301, "connect_failed")
    assert s.next_ready_s(T0 + 301) == pytest.approx(600.0)
    assert [c.new_mode for c in s.changes] == [Mode.DEAD, Mode.NORMAL, Mode.DEAD]


def test_suspended_site_dispatches_nothing_and_resumes() -> None:
    """While suspended can_dispatch is 0 whatever else happens; in-flight results still count."""
    s = SiteState(SITE, SiteLimits(initial_connections=4), T0)
    fill(s, T0)
    s.suspend(T0 + 1)
    for i in range(4):
        s.on_result(T0 + 2, "delivered")
    assert s.in_flight == 0
    assert s.can_dispatch(T0 + 2) == 0 and s.can_dispatch(T0 + 86400) == 0
    assert s.next_ready_s(T0 + 2) == math.inf
    assert s.mode is Mode.SUSPENDED and repr(s).split(" mode=")[1].startswith("SUSPENDED")
    s.resume(T0 + 100, cause="resumed by ops: ticket 42")
    assert s.can_dispatch(T0 + 100) == 8
    assert s.drain_changes() == [
        ModeChange(T0 + 1, SITE, Mode.NORMAL, Mode.SUSPENDED, "suspended by operator"),
        ModeChange(T0 + 100, SITE, Mode.SUSPENDED, Mode.NORMAL, "resumed by ops: ticket 42"),
    ]


def test_backoff_recovers_underneath_a_suspension() -> None:
    """A suspension outranks BACKOFF; recovery steps still advance and resume lands in the right mode."""
    s = SiteState(SITE, SiteLimits(), T0)
    s.throttle(T0, Rule(name="r", code=(421,), backoff_s=60.0))
    s.suspend(T0 + 1)
    s.tick(T0 + 60)
    assert s.mode is Mode.SUSPENDED and s.concurrency_level == 0.75
    s.resume(T0 + 61)
    assert s.mode is Mode.BACKOFF


def test_set_limits_applies_current_backoff_level() -> None:
    """A config reload takes effect at once, scaled by an ongoing backoff."""
    s = SiteState(SITE, SiteLimits(max_connections=10), T0)
    s.throttle(T0, Rule(name="r", code=(421,), backoff_s=60.0))
    s.set_limits(T0 + 1, SiteLimits(max_connections=40, messages_per_minute=100))
    assert s.window.limit == 20 and s.per_minute.rate_per_s == pytest.approx(100 / 60 / 2)


def test_unknown_result_kind_is_a_bug() -> None:
    """A misspelt kind raises rather than being silently ignored."""
    s = SiteState(SITE, SiteLimits(), T0)
    with pytest.raises(ValueError, match="unknown result kind"):
        s.on_result(T0, "deliverd")


@given(st.lists(st.tuples(st.floats(0.0, 120.0),
                          st.sampled_from(sorted(RESULT_KINDS) + ["dispatch", "throttle", "suspend", "resume"])),
                max_size=150))
def test_never_more_in_flight_than_the_window_allows(ops: list[tuple[float, str]]) -> None:
    """Dispatching what can_dispatch allows never overfills the window, and DEAD/SUSPENDED allow nothing."""
    s = SiteState(SITE, SiteLimits(max_connections=8, messages_per_minute=120), T0, cohort=3, dead_s=60.0)
    rule = Rule(name="r", code=(421,), backoff_s=90.0)
    now = T0
    for dt, op in ops:
        now += dt
        if op == "dispatch":
            n = s.can_dispatch(now)
            if s.mode in (Mode.DEAD, Mode.SUSPENDED):
                assert n == 0
            s.on_dispatch(now, n)
            assert n == 0 or s.in_flight <= s.window.value
        elif op == "throttle":
            s.throttle(now, rule)
        elif op == "suspend":
            s.suspend(now)
        elif op == "resume":
            s.resume(now)
        elif s.in_flight:
            s.on_result(now, op, rule if op == "throttled" else None)
        assert 1 <= s.window.value <= s.window.limit <= 8
        assert s.next_ready_s(now) >= 0.0
    times = [c.now for c in s.changes]
    assert times == sorted(times)


def test_new_modules_do_no_io() -> None:
    """The scheduling policies are pure: no asyncio, time, random, sockets or logging config."""
    from tests.unit.test_layering import IO_MODULES, PKG, imported

    for name in ("retry", "throttle", "window", "signals", "site", "limits", "fairness"):
        path = PKG / "sched" / f"{name}.py"
        assert not imported(path) & IO_MODULES, name
    assert isinstance(PKG, Path)
