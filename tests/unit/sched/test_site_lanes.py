"""Per egress source limits: lanes of a site, per-source overrides, and a lane's fleet-wide rate."""

from __future__ import annotations

import pytest

from mta_engine.errors import ConfigError
from mta_engine.sched.lease import LeasedTokens
from mta_engine.sched.limits import LimitTable, SiteLimits
from mta_engine.sched.signals import Rule
from mta_engine.sched.site import Mode, SiteLanes, SiteState

SITE = "mx.example.net"
T0 = 1_700_000_000.0
A, B = "192.0.2.10", "192.0.2.11"


def lanes(limits: SiteLimits, sources: list[str | None]) -> SiteLanes:
    return SiteLanes(SITE, [SiteState(SITE, limits, T0, source=s) for s in sources])


def take_all(grp: SiteLanes, now: float) -> list[str | None]:
    """Start every job the lanes allow now; return the source of each, in order."""
    rooms = grp.rooms(now)
    out = []
    while (lane := grp.pick(rooms)) is not None:
        lane.on_dispatch(now, 1)
        out.append(lane.source)
    return out


def test_each_source_gets_the_site_window() -> None:
    """Two sources, 3 connections per site: 3 per source, 6 in all, taken in turn."""
    grp = lanes(SiteLimits(max_connections=3, initial_connections=3), [A, B])
    assert take_all(grp, T0) == [A, B, A, B, A, B]
    assert grp.rooms(T0) == [0, 0] and grp.in_flight == 6
    grp.lanes[1].on_result(T0 + 1, "delivered")
    assert take_all(grp, T0 + 1) == [B]  # only the lane whose job finished has room


def test_each_source_gets_the_site_rate() -> None:
    """60/min per source: one job per source per second, so two sources send two per second."""
    grp = lanes(SiteLimits(messages_per_minute=60, initial_connections=20), [A, B])
    assert take_all(grp, T0) == [A, B]
    assert take_all(grp, T0 + 0.5) == []
    assert take_all(grp, T0 + 1.0) == [A, B]
    assert grp.next_ready_s(T0 + 1.0) == pytest.approx(1.0)


def test_throttle_reply_backs_off_only_its_lane() -> None:
    """A 421 about "your IP" lowers that source's lane; the other source keeps its limits."""
    rule = Rule.from_dict({"name": "ip-rate", "code": [421], "backoff_s": 60, "concurrency_factor": 0.5,
                           "rate_factor": 0.5})
    grp = lanes(SiteLimits(max_connections=4, initial_connections=4), [A, B])
    take_all(grp, T0)
    grp.lanes[0].on_result(T0 + 1, "throttled", rule)
    assert grp.lanes[0].mode is Mode.BACKOFF and grp.lanes[1].mode is Mode.NORMAL
    assert (grp.lanes[0].window.limit, grp.lanes[1].window.limit) == (2, 4)
    assert grp.mode is Mode.BACKOFF  # the site shows its most restrictive lane
    assert [c.source for c in grp.lanes[0].drain_changes()] == [A]


def test_suspending_a_site_stops_every_lane() -> None:
    grp = lanes(SiteLimits(), [A, B])
    grp.suspend(T0)
    assert grp.rooms(T0) == [0, 0] and grp.mode is Mode.SUSPENDED
    grp.resume(T0 + 1)
    assert grp.rooms(T0 + 1) == [2, 2]


def test_one_lane_site_answers_as_its_lane() -> None:
    """Without sources a site is one lane and reads like a SiteState (window, warm, in_flight)."""
    grp = lanes(SiteLimits(max_connections=5), [None])
    assert take_all(grp, T0) == [None, None]
    assert grp.window.value == 2 and grp.in_flight == 2
    grp.in_flight = 0
    assert grp.lanes[0].in_flight == 0
    assert repr(grp) == f"<SiteLanes <SiteState {SITE} mode=NORMAL window=2/5 in_flight=0 rate=unlimited " \
                        "level=1.00/1.00>>"
    two = lanes(SiteLimits(), [A, B])
    with pytest.raises(AttributeError, match="2 lanes"):
        two.window  # noqa: B018
    assert repr(two) == f"<SiteLanes {SITE} mode=NORMAL lanes=2 {A}=2/20:0 {B}=2/20:0>"


# -- per-source overrides ----------------------------------------------------------------------

OVERRIDES = [
    {"domain": "gmail.com", "max_connections": 10, "messages_per_minute": 600},
    {"domain": "gmail.com", "source": B, "messages_per_minute": 60},     # B is warming up
    {"source": [B], "max_connections": 2, "messages_per_hour": 1000},    # B everywhere
    {"pattern": "*.google.com", "source": B, "max_connections": 3},
]


def test_source_override_applies_to_its_lane_only() -> None:
    """A source entry narrows its layer to that source; a source-only entry sits over the defaults."""
    t = LimitTable(SiteLimits(), OVERRIDES)
    hosts = ["gmail-smtp-in.l.google.com"]
    a = t.for_site("gmail-smtp-in.l.google.com", ["gmail.com"], hosts, A)
    b = t.for_site("gmail-smtp-in.l.google.com", ["gmail.com"], hosts, B)
    site = t.for_site("gmail-smtp-in.l.google.com", ["gmail.com"], hosts)
    assert (a.max_connections, a.messages_per_minute, a.messages_per_hour) == (10, 600, 0)
    # domain (10) beats pattern+source (3) beats source-only (2); domain+source beats domain for the rate
    assert (b.max_connections, b.messages_per_minute, b.messages_per_hour) == (10, 60, 1000)
    assert site == a
    other = t.for_site("mx.other.net", ["other.net"], ["mx.other.net"], B)
    assert (other.max_connections, other.messages_per_hour) == (2, 1000)
    assert t.sources() == {B}
    v6 = LimitTable(SiteLimits(), [{"source": "2001:DB8::1", "max_connections": 3}])
    assert v6.for_site("mx.x.net", ["x.net"], [], "2001:db8::1").max_connections == 3  # IP text normalised


@pytest.mark.parametrize(("override", "why"), [
    ({"source": "not-an-ip", "max_connections": 2}, "expected IP addresses"),
    ({"domain": "a.example", "source": A, "max_age_s": 60}, "cannot be set per source"),
    ({"source": A, "max_recipients_per_transaction": 5}, "cannot be set per source"),
    ({"domain": "a.example", "shared": "yes"}, "expected true or false"),
])
def test_bad_source_overrides_fail_at_load(override: dict, why: str) -> None:
    """What is decided before a lane is chosen cannot be set per source."""
    with pytest.raises(ConfigError, match=why):
        LimitTable(SiteLimits(), [override])


def test_shared_rate_is_the_tighter_of_minute_and_hour() -> None:
    assert SiteLimits(messages_per_minute=120).shared_rate_per_s == 2.0
    assert SiteLimits(messages_per_minute=120, messages_per_hour=3600).shared_rate_per_s == 1.0
    assert SiteLimits().shared_rate_per_s == 0.0
    assert LimitTable(SiteLimits(), [{"domain": "x.test", "shared": True}]).any_shared()
    assert not LimitTable(SiteLimits(), [{"domain": "x.test", "shared": False}]).any_shared()


# -- a lane's fleet-wide rate ------------------------------------------------------------------

def shared_lane(rate_per_min: float = 600) -> SiteState:
    lane = SiteState(SITE, SiteLimits(messages_per_minute=rate_per_min, initial_connections=20, shared=True), T0)
    lane.shared = LeasedTokens(f"rate:{SITE}", rate_per_min / 60)
    return lane


def test_shared_lane_waits_for_leased_tokens() -> None:
    """The local bucket would allow 10 now, but nothing goes out before the fleet grants tokens."""
    lane = shared_lane()
    assert lane.can_dispatch(T0) == 0
    lane.shared.on_asked(10)  # type: ignore[union-attr]
    assert lane.next_ready_s(T0) == float("inf")  # the grant wakes the manager
    lane.shared.on_grant(T0, 3, 0.0)  # type: ignore[union-attr]
    assert lane.can_dispatch(T0) == 3 and lane.message_room(T0) == 3
    lane.on_dispatch(T0, 1)
    lane.charge(T0, 2)
    assert lane.can_dispatch(T0) == 0 and lane.shared.available(T0) == 0  # type: ignore[union-attr]


def test_shared_lane_falls_back_to_its_share_of_the_rate() -> None:
    """Store unreachable: the local buckets alone, at 1/fleet_size of the rate; restored after."""
    lane = shared_lane(600)
    lane.set_shared_up(T0, False, fleet_size=2)
    assert lane.per_minute.rate_per_s == pytest.approx(5.0)
    assert lane.can_dispatch(T0) == 5  # no lease needed; a 5/s bucket's burst
    assert "local-0.5" in repr(lane)
    lane.set_shared_up(T0 + 1, True, fleet_size=2)
    assert lane.per_minute.rate_per_s == pytest.approx(10.0) and lane.can_dispatch(T0 + 1) == 0
    assert repr(lane).endswith("rate=600/min shared level=1.00/1.00>")
