"""Per-site concurrency: the slow-start window and the dead-site detector.

Contract: pure bookkeeping, no clock and no I/O; ``SiteHealth`` takes ``now`` as an argument.
The window is TCP-style AIMD, Postfix's concurrency feedback in spirit (qmgr_queue.c): start
with a few connections, grow by one per success until ``ssthresh`` (slow start), then by one
per ``value`` successes (additive increase); a connection failure, a timeout or a 421 halves
it (multiplicative decrease). ``1 <= value <= limit`` always holds (tested with hypothesis).

``SiteHealth`` is Postfix's dead-site rule: when a cohort of consecutive attempts each found
every MX host failing, the whole site waits ``dead_s`` before the next probe; a repeated death
doubles the wait up to ``max_dead_s``; any success resets it.
"""

from __future__ import annotations

__all__ = ["ConcurrencyWindow", "SiteHealth"]


class ConcurrencyWindow:
    """How many sessions a site may have open at once, adapted from feedback."""

    __slots__ = ("limit", "value", "ssthresh", "_acked")

    def __init__(self, limit: int, initial: int = 2) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = int(limit)
        self.value = max(1, min(int(initial), self.limit))
        self.ssthresh = self.limit
        self._acked = 0

    @property
    def slow_start(self) -> bool:
        return self.value < self.ssthresh

    def on_success(self) -> None:
        """A session worked: +1 in slow start, else +1 per ``value`` successes; never past the limit."""
        if self.value >= self.limit:
            self._acked = 0
            return
        if self.slow_start:
            self.value += 1
            self._acked = 0
            return
        self._acked += 1
        if self._acked >= self.value:
            self.value += 1
            self._acked = 0

    def on_failure(self) -> None:
        """A connection failed, timed out or was closed with 421: halve (at least 1); ssthresh = value."""
        self.value = max(1, self.value // 2)
        self.ssthresh = self.value
        self._acked = 0

    def on_throttle(self, factor: float) -> None:
        """A provider asked us to slow down: scale the value by ``factor`` (0 < factor <= 1)."""
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor!r}")
        self.value = max(1, int(self.value * factor))
        self.ssthresh = self.value
        self._acked = 0

    def set_limit(self, n: int) -> None:
        """Change the ceiling (config reload, throttling); the value is clamped into it."""
        if n < 1:
            raise ValueError(f"limit must be >= 1, got {n!r}")
        self.limit = int(n)
        self.value = min(self.value, self.limit)
        self.ssthresh = min(self.ssthresh, self.limit)

    def __repr__(self) -> str:
        phase = "slow-start" if self.slow_start else "avoidance"
        return f"<ConcurrencyWindow {self.value}/{self.limit} ssthresh={self.ssthresh} {phase}>"


class SiteHealth:
    """Counts consecutive all-MX-failed attempts; a full cohort makes the site dead for a while."""

    __slots__ = ("cohort", "dead_s", "max_dead_s", "failures", "dead_until", "deaths", "_next_dead_s")

    def __init__(self, cohort: int = 5, dead_s: float = 300.0, max_dead_s: float = 3600.0) -> None:
        if cohort < 1:
            raise ValueError(f"cohort must be >= 1, got {cohort!r}")
        if not 0 < dead_s <= max_dead_s:
            raise ValueError(f"need 0 < dead_s <= max_dead_s, got {dead_s!r}, {max_dead_s!r}")
        self.cohort = int(cohort)
        self.dead_s = float(dead_s)
        self.max_dead_s = float(max_dead_s)
        self.failures = 0
        """Consecutive attempts where every MX host failed."""
        self.dead_until: float | None = None
        self.deaths = 0
        """Deaths since the last success."""
        self._next_dead_s = self.dead_s

    def on_connect_failure(self, now: float) -> bool:
        """An attempt found every MX host failing; returns True when this makes the site dead.

        Failures reported while the site is already dead (attempts started before it died) do
        not extend the dead period.
        """
        if self.is_dead(now):
            return False
        self.failures += 1
        if self.failures < self.cohort:
            return False
        self.dead_until = now + self._next_dead_s
        self._next_dead_s = min(self.max_dead_s, self._next_dead_s * 2)
        self.deaths += 1
        self.failures = 0
        return True

    def on_success(self, now: float) -> None:
        """A session worked: the site is alive; counters and the dead period reset."""
        self.failures = 0
        self.deaths = 0
        self.dead_until = None
        self._next_dead_s = self.dead_s

    def is_dead(self, now: float) -> bool:
        return self.dead_until is not None and now < self.dead_until

    def __repr__(self) -> str:
        dead = f" dead_until={self.dead_until:.3f}" if self.dead_until is not None else ""
        return (f"<SiteHealth failures={self.failures}/{self.cohort} deaths={self.deaths}"
                f" next_dead_s={self._next_dead_s:g}{dead}>")
