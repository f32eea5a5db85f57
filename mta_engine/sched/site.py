"""One site's control state: how many jobs may start now, and how feedback changes that.

Contract: pure bookkeeping for the manager, which owns one ``SiteState`` per site key (the MX
set, ``routing.mx.site_key``) and egress source: a *lane* (``SiteLanes`` groups a site's lanes;
without ``[delivery] sources`` a site has one lane, source None). Every method takes ``now``
(float seconds); nothing here reads a clock, sleeps or logs. Mode changes are appended to
``self.changes`` as ``ModeChange`` tuples ``(now, site, old_mode, new_mode, cause, source)``; the
manager drains the list and logs each one (``site_mode_changed``). Recovery steps are appended
too, with ``old_mode == new_mode``.

It combines, per site:

- a slow-start ``ConcurrencyWindow`` (AIMD) bounded by ``SiteLimits.max_connections``;
- smooth ``TokenBucket`` rates: messages per minute and per hour, new connections per minute;
- ``SiteHealth``: a cohort of consecutive all-MX failures makes the site DEAD for a while;
- BACKOFF after a throttling signal (``signals.Rule``): rate and connection limit are multiplied
  by the rule's factors for ``rule.backoff_s``; then each ``rule.step_s`` without new throttling
  moves them halfway back to the configured limits, until within 1/16 of them (NORMAL again);
- SUSPENDED by an operator: nothing is dispatched; queued recipients keep aging (the manager
  still expires them);
- optionally a fleet-wide message rate (``SiteLimits.shared``): ``LeasedTokens`` from a shared
  bucket gate dispatch as well; while the shared store is unreachable the lane falls back to its
  local buckets at ``1 / fleet_size`` of the configured rate (``set_shared_up``).

Accounting unit: a *job* (one message, up to ``max_recipients_per_transaction`` recipients, one
session slot). ``on_dispatch`` counts jobs started; ``on_result`` is called once per job.
New connections are estimated: a job that starts while a recently freed slot is still warm
(its session is likely cached by the worker for ``idle_s``) reuses it; any other needs a new
connection token. The worker's connection pool remains the authority on reuse.
"""

from __future__ import annotations

import enum
import math
from typing import Any, NamedTuple

from .lease import LeasedTokens
from .limits import SiteLimits
from .signals import Rule
from .throttle import EPSILON, TokenBucket, default_burst, per_hour, per_minute
from .window import ConcurrencyWindow, SiteHealth

__all__ = ["Mode", "ModeChange", "RESULT_KINDS", "SiteLanes", "SiteLimits", "SiteState"]

MIN_LEVEL = 1.0 / 64
"""Repeated throttling never lowers a limit below this fraction of the configured one."""
RECOVERED_AT = 15.0 / 16
"""Recovery snaps back to the configured limits once within 1/16 of them."""

RESULT_KINDS = frozenset({"delivered", "rejected", "connect_failed", "timeout", "closing_421", "throttled",
                          "returned"})
"""``on_result`` kinds: the session worked (delivered, rejected: the server answered, whatever
it said); it failed (connect_failed: every MX host tried failed; timeout; closing_421); a reply
matched a throttling rule (throttled); or the job came back unattempted (returned)."""


class Mode(enum.Enum):
    NORMAL = "NORMAL"
    BACKOFF = "BACKOFF"
    DEAD = "DEAD"
    SUSPENDED = "SUSPENDED"


class ModeChange(NamedTuple):
    now: float
    site: str
    old_mode: Mode
    new_mode: Mode
    cause: str
    source: str | None = None
    """The lane's egress source (None without sources)."""


def _unlimited(now: float) -> TokenBucket:
    return TokenBucket(0.0, 1.0, now)


def _bucket(rate_per_s: float, now: float) -> TokenBucket:
    return TokenBucket(rate_per_s, default_burst(rate_per_s), now) if rate_per_s > 0 else _unlimited(now)


def _floor(x: float) -> float:
    return x if math.isinf(x) else math.floor(x + EPSILON)


class SiteState:
    """Per-site dispatch control: window, rates, health, backoff and suspension."""

    def __init__(self, site: str, limits: SiteLimits, now: float, *, cohort: int = 5, dead_s: float = 300.0,
                 max_dead_s: float = 3600.0, idle_s: float = 10.0, rethrottle_gap_s: float = 60.0,
                 source: str | None = None) -> None:
        self.site = site
        self.source = source
        """The egress source this lane sends from; None = any (no sources configured)."""
        self.limits = limits
        self.window = ConcurrencyWindow(limits.max_connections, limits.initial_connections)
        self.health = SiteHealth(cohort=cohort, dead_s=dead_s, max_dead_s=max_dead_s)
        self.idle_s = idle_s
        self.rethrottle_gap_s = rethrottle_gap_s
        """A throttling signal within this long of the previous one only extends the backoff (it is
        most likely the answer to a session started before the site slowed down)."""
        self.in_flight = 0
        self.suspended = False
        self.rate_level = 1.0
        self.concurrency_level = 1.0
        self.rule: Rule | None = None
        """The rule behind the current backoff."""
        self._throttled_at: float | None = None
        self._hold_until: float | None = None
        self._next_step_at: float | None = None
        self._step_s = 0.0
        self._dead_until: float | None = None
        self._warm: list[float] = []
        """Expiry times of slots freed by a working session (likely cached connections)."""
        self.per_minute = _unlimited(now)
        self.per_hour = _unlimited(now)
        self.new_connections = _unlimited(now)
        self.shared: LeasedTokens | None = None
        """Tokens of the fleet-wide rate (``limits.shared`` with a shared store configured)."""
        self.shared_up = True
        self.fleet_share = 1.0
        """The part of the configured rate the local buckets allow: 1, or 1/fleet size while the
        shared store is unreachable."""
        self._apply_levels(now)
        self._mode = Mode.NORMAL
        self.changes: list[ModeChange] = []

    # -- state ---------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """The mode as of the last call (``tick(now)`` brings it up to date)."""
        return self._mode

    def _compute_mode(self, now: float) -> Mode:
        if self.suspended:
            return Mode.SUSPENDED
        if self.health.is_dead(now):
            return Mode.DEAD
        if self._next_step_at is not None:
            return Mode.BACKOFF
        return Mode.NORMAL

    def _refresh(self, now: float, cause: str, *, always: bool = False) -> None:
        new = self._compute_mode(now)
        if new is not self._mode or always:
            self.changes.append(ModeChange(now, self.site, self._mode, new, cause, self.source))
            self._mode = new

    def _apply_levels(self, now: float) -> None:
        lim = self.limits
        self.window.set_limit(max(1, math.floor(lim.max_connections * self.concurrency_level)))
        level = self.rate_level * self.fleet_share
        for bucket, rate in ((self.per_minute, per_minute(lim.messages_per_minute) * level),
                             (self.per_hour, per_hour(lim.messages_per_hour) * level),
                             (self.new_connections,
                              per_minute(lim.new_connections_per_minute) * self.concurrency_level)):
            bucket.set_rate(rate, now, burst=default_burst(rate))

    def tick(self, now: float) -> None:
        """Apply what time alone changes (end of a dead period, recovery steps), each at its own time."""
        while True:
            due = [t for t in (self._dead_until, self._next_step_at) if t is not None and t <= now]
            if not due:
                return
            t = min(due)
            if t == self._dead_until:
                self._dead_until = None
                self._refresh(t, "dead period over: probing the site again")
                continue
            self._recovery_step(t)

    def _recovery_step(self, t: float) -> None:
        self.rate_level += (1.0 - self.rate_level) / 2
        self.concurrency_level += (1.0 - self.concurrency_level) / 2
        if min(self.rate_level, self.concurrency_level) >= RECOVERED_AT:
            self.rate_level = self.concurrency_level = 1.0
            self._next_step_at = self._hold_until = None
            self._apply_levels(t)
            self._refresh(t, "recovered: configured limits restored", always=True)
            self.rule = None
            return
        assert self._next_step_at is not None
        self._next_step_at += self._step_s
        self._apply_levels(t)
        self._refresh(t, f"recovery step: rate {self.rate_level:.0%}, connections {self.concurrency_level:.0%}"
                         f" (limit {self.window.limit})", always=True)

    # -- dispatch ------------------------------------------------------------------------------
    def warm(self, now: float) -> bool:
        """True while a recently finished job's session may still be pooled by a worker."""
        return bool(self._warm_slots(now))

    def _warm_slots(self, now: float) -> int:
        self._warm = [t for t in self._warm if t > now]
        return len(self._warm)

    def can_dispatch(self, now: float) -> int:
        """How many more jobs may start now: window room, rates, new connections; 0 if DEAD/SUSPENDED."""
        self.tick(now)
        if self._mode in (Mode.SUSPENDED, Mode.DEAD):
            return 0
        room = self.window.value - self.in_flight
        if room <= 0:
            return 0
        messages = min(_floor(self.per_minute.available(now)), _floor(self.per_hour.available(now)))
        if self.shared is not None and self.shared_up:
            messages = min(messages, _floor(self.shared.available(now)))
        connections = self._warm_slots(now) + _floor(self.new_connections.available(now))
        return int(max(0, min(room, messages, connections)))

    def message_room(self, now: float) -> int:
        """How many messages the rates allow now, at least 1 (a large number when unlimited): the
        most one job may carry before it is split."""
        room = 1 << 30
        for bucket in (self.per_minute, self.per_hour):
            if not bucket.unlimited:
                room = min(room, max(1, int(bucket.available(now))))
        if self.shared is not None and self.shared_up:
            room = min(room, max(1, int(self.shared.available(now) + EPSILON)))
        return room

    def charge(self, now: float, n_messages: int) -> None:
        """Charge ``n_messages`` more messages to the rates (a job carries more than one)."""
        if n_messages <= 0:
            return
        self.per_minute.spend(now, n_messages)
        self.per_hour.spend(now, n_messages)
        if self.shared is not None and self.shared_up:
            self.shared.spend(now, n_messages)

    def on_dispatch(self, now: float, n_messages: int = 1) -> None:
        """Count ``n_messages`` jobs started now (rates are charged even past ``can_dispatch``)."""
        self.tick(now)
        if n_messages <= 0:
            return
        warm = self._warm_slots(now)
        reused = min(warm, n_messages)
        del self._warm[warm - reused:]  # the most recently freed ones
        self.new_connections.spend(now, n_messages - reused)
        self.charge(now, n_messages)
        self.in_flight += n_messages

    def next_ready_s(self, now: float) -> float:
        """Seconds from ``now`` until ``can_dispatch`` may be positive; 0.0 = now; ``inf`` = only an
        event (a result freeing a slot, ``resume``) can change it."""
        self.tick(now)
        if self._mode is Mode.SUSPENDED:
            return math.inf
        if self._mode is Mode.DEAD:
            assert self._dead_until is not None
            return max(0.0, self._dead_until - now)
        if self.window.value - self.in_flight <= 0:
            return math.inf
        waits = [self.per_minute.wait_s(now), self.per_hour.wait_s(now)]
        if self.shared is not None and self.shared_up:
            waits.append(self.shared.wait_s(now))
        if not self._warm_slots(now):
            waits.append(self.new_connections.wait_s(now))
        return max(waits)

    # -- feedback ------------------------------------------------------------------------------
    def on_result(self, now: float, kind: str, rule: Rule | None = None) -> None:
        """One job finished with ``kind`` (see ``RESULT_KINDS``); ``rule`` is the matched throttle rule."""
        if kind not in RESULT_KINDS:
            raise ValueError(f"unknown result kind {kind!r} (known: {sorted(RESULT_KINDS)})")
        self.tick(now)
        self.in_flight = max(0, self.in_flight - 1)
        if kind in ("delivered", "rejected"):
            self.window.on_success()
            was_dead = self._dead_until is not None
            self.health.on_success(now)
            self._dead_until = None
            self._warm.append(now + self.idle_s)
            if was_dead:
                self._refresh(now, "session succeeded")
        elif kind == "connect_failed":
            self.window.on_failure()
            if self.health.on_connect_failure(now):
                self._dead_until = self.health.dead_until
                assert self._dead_until is not None
                self._refresh(now, f"every MX host failed on {self.health.cohort} consecutive attempts;"
                                   f" dead for {self._dead_until - now:g}s (death {self.health.deaths})")
        elif kind in ("timeout", "closing_421"):
            self.window.on_failure()
        elif kind == "throttled":
            if rule is not None and rule.throttles:
                self.throttle(now, rule)
            else:
                self.window.on_failure()

    def throttle(self, now: float, rule: Rule) -> None:
        """A reply matched ``rule``: enter (or extend) BACKOFF, lowering rate and connections."""
        self.tick(now)
        if not rule.throttles:
            return
        deepen = self._throttled_at is None or self._next_step_at is None \
            or now - self._throttled_at >= self.rethrottle_gap_s
        if deepen:
            self.rate_level = max(MIN_LEVEL, self.rate_level * rule.rate_factor)
            self.concurrency_level = max(MIN_LEVEL, self.concurrency_level * rule.concurrency_factor)
            self._throttled_at = now
            self.window.on_throttle(rule.concurrency_factor)
        self.rule = rule
        self._hold_until = max(self._hold_until or now, now + rule.backoff_s)
        self._step_s = rule.step_s
        self._next_step_at = self._hold_until
        self._apply_levels(now)
        verb = "throttled" if deepen else "throttled again (backoff extended)"
        self._refresh(now, f"{verb} by {rule.cause}: rate {self.rate_level:.0%}, connections"
                           f" {self.concurrency_level:.0%} (limit {self.window.limit}) for {rule.backoff_s:g}s",
                      always=True)

    # -- operator --------------------------------------------------------------------------------
    def suspend(self, now: float, cause: str = "suspended by operator") -> None:
        """Dispatch nothing until ``resume``; in-flight jobs finish; queued recipients keep aging."""
        self.tick(now)
        self.suspended = True
        self._refresh(now, cause)

    def resume(self, now: float, cause: str = "resumed by operator") -> None:
        self.tick(now)
        self.suspended = False
        self._refresh(now, cause)

    def set_limits(self, now: float, limits: SiteLimits) -> None:
        """New configured limits (config reload); a current backoff applies its levels to them."""
        self.tick(now)
        self.limits = limits
        self._apply_levels(now)

    def set_shared_up(self, now: float, up: bool, fleet_size: int = 1) -> None:
        """The shared store answers (``up``: the fleet-wide lease gates dispatch) or not (the local
        buckets alone, at ``1 / fleet_size`` of the configured rate, so the fleet still keeps it)."""
        self.tick(now)
        self.shared_up = up
        self.fleet_share = 1.0 if up else 1.0 / max(1, fleet_size)
        self._apply_levels(now)

    def drain_changes(self) -> list[ModeChange]:
        """The mode changes since the last call, oldest first."""
        out, self.changes = self.changes, []
        return out

    def __repr__(self) -> str:
        lim = self.limits
        rates = [r for r in (lim.messages_per_minute * self.rate_level,
                             lim.messages_per_hour * self.rate_level / 60) if r > 0]
        rate = f"{min(rates):.4g}/min" if rates else "unlimited"
        if self.shared is not None:
            rate += " shared" if self.shared_up else f" local-{self.fleet_share:.2g}"
        site = self.site if self.source is None else f"{self.site} via {self.source}"
        return (f"<SiteState {site} mode={self._mode.name} window={self.window.value}/{self.window.limit}"
                f" in_flight={self.in_flight} rate={rate} level={self.rate_level:.2f}/{self.concurrency_level:.2f}>")


_MODE_ORDER = (Mode.SUSPENDED, Mode.DEAD, Mode.BACKOFF)


class SiteLanes:
    """One site's lanes: a ``SiteState`` per egress source, each with the site's limits (a provider
    counts per sending IP), so with N sources the site may carry up to N times a lane's limits.

    Without sources there is one lane (source None) and this adds nothing but one indirection.
    The manager asks ``rooms`` once per round and ``pick``s a lane per job: round robin among the
    lanes with room left, so the sources share the work evenly. Site-wide actions (operator
    suspension, a throttle the operator applies) go to every lane.
    """

    __slots__ = ("site", "lanes", "_next")

    def __init__(self, site: str, lanes: list[SiteState], start: int = 0) -> None:
        if not lanes:
            raise ValueError("a site needs at least one lane")
        self.site = site
        self.lanes = lanes
        self._next = start % len(lanes)
        """The lane tried first by the next ``pick``; ``start`` staggers sites (a site with one
        job at a time would otherwise always send from the first source)."""

    @property
    def limits(self) -> SiteLimits:
        """The site-wide limits (max age, recipients per transaction: the same in every lane)."""
        return self.lanes[0].limits

    @property
    def mode(self) -> Mode:
        """The lanes' mode when they agree; else the most restrictive one any lane is in."""
        modes = {lane.mode for lane in self.lanes}
        if len(modes) == 1:
            return modes.pop()
        return next(m for m in _MODE_ORDER if m in modes)

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in self.lanes)

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        self._only_lane("in_flight").in_flight = n

    def _only_lane(self, name: str) -> SiteState:
        if len(self.lanes) != 1:
            raise AttributeError(f"{name}: {self.site} has {len(self.lanes)} lanes (one per source); ask a lane")
        return self.lanes[0]

    def __getattr__(self, name: str) -> Any:
        """A site with one lane (no sources) answers as that lane, so code written for one
        ``SiteState`` per site keeps working; with several lanes, ask ``lanes``."""
        if name.startswith("__") or name in SiteLanes.__slots__:
            raise AttributeError(name)
        return getattr(self._only_lane(name), name)

    def warm(self, now: float) -> bool:
        """True while any lane's recently finished session may still be pooled by a worker."""
        return any(lane.warm(now) for lane in self.lanes)

    def rooms(self, now: float) -> list[int]:
        """How many jobs each lane may start now (``SiteState.can_dispatch``), in lane order."""
        return [lane.can_dispatch(now) for lane in self.lanes]

    def pick(self, rooms: list[int]) -> SiteState | None:
        """The next lane in turn with room left in ``rooms`` (which it decrements); None if none."""
        n = len(self.lanes)
        for k in range(n):
            i = (self._next + k) % n
            if rooms[i] > 0:
                rooms[i] -= 1
                self._next = (i + 1) % n
                return self.lanes[i]
        return None

    def next_ready_s(self, now: float) -> float:
        return min(lane.next_ready_s(now) for lane in self.lanes)

    def tick(self, now: float) -> None:
        for lane in self.lanes:
            lane.tick(now)

    def throttle(self, now: float, rule: Rule) -> None:
        """Throttle every lane (a site-wide signal); replies on one lane throttle only that lane."""
        for lane in self.lanes:
            lane.throttle(now, rule)

    def suspend(self, now: float, cause: str = "suspended by operator") -> None:
        for lane in self.lanes:
            lane.suspend(now, cause)

    def resume(self, now: float, cause: str = "resumed by operator") -> None:
        for lane in self.lanes:
            lane.resume(now, cause)

    def __repr__(self) -> str:
        if len(self.lanes) == 1:
            return f"<SiteLanes {self.lanes[0]!r}>"
        windows = " ".join(f"{lane.source}={lane.window.value}/{lane.window.limit}:{lane.in_flight}"
                           for lane in self.lanes)
        return f"<SiteLanes {self.site} mode={self.mode.name} lanes={len(self.lanes)} {windows}>"
