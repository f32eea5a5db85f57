"""Leased tokens: one lane's local share of a fleet-wide message rate.

Contract: pure bookkeeping, no I/O and no clock (``now`` is passed in, monotonic seconds). The
fleet-wide rate lives in a shared token bucket (``sched.shared_limits``: Redis, one Lua script
per lease). A lane never asks it per message: it *leases* a batch of tokens (up to ``burst``, one
``batch_s`` worth of the rate), spends them locally, and asks again when it is down to half a
batch. Tokens not spent within ``ttl_s`` of their grant lapse, so a lane cannot hoard them: every
message sent at ``t`` was granted by the shared bucket within ``[t - ttl_s, t]``, which bounds the
fleet over any window of W seconds to ``rate * (W + ttl_s) + burst`` messages.

A spend beyond the tokens held (a job that charges several messages) is debt, paid from the next
grant. When a grant falls short, the shared bucket was empty: the lane waits at least until the
next token is due before it asks again (no busy asking). Bad parameters raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LeasedTokens"]

EPSILON = 1e-9


class LeasedTokens:
    """Tokens leased from one shared bucket (``key``), spent by one lane."""

    __slots__ = ("key", "rate_per_s", "burst", "ttl_s", "min_gap_s", "pending", "next_ask_at", "asked",
                 "_grants", "_debt")

    def __init__(self, key: str, rate_per_s: float, *, batch_s: float = 1.0) -> None:
        if not rate_per_s > 0 or math.isinf(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s!r}")
        if not batch_s > 0:
            raise ValueError(f"batch_s must be positive, got {batch_s!r}")
        self.key = key
        self.rate_per_s = float(rate_per_s)
        self.burst = max(1.0, self.rate_per_s * batch_s)
        """The shared bucket's size, and the largest lease."""
        self.ttl_s = float(batch_s)
        self.min_gap_s = batch_s / 4
        """After a short grant, wait at least this long before asking again (bounds round trips)."""
        self.pending = False
        """A request for this key is in flight."""
        self.next_ask_at = -math.inf
        self.asked = 0
        self._grants: deque[list[float]] = deque()
        """[expires_at, tokens] per grant, oldest first."""
        self._debt = 0.0

    def _expire(self, now: float) -> None:
        g = self._grants
        while g and g[0][0] <= now:
            g.popleft()

    def available(self, now: float) -> float:
        """Tokens held now (negative while in debt)."""
        self._expire(now)
        return sum(g[1] for g in self._grants) - self._debt

    def spend(self, now: float, n: float = 1.0) -> None:
        """Use ``n`` tokens, oldest grant first; what is not held becomes debt."""
        self._expire(now)
        while n > EPSILON and self._grants:
            g = self._grants[0]
            used = min(g[1], n)
            g[1] -= used
            n -= used
            if g[1] <= EPSILON:
                self._grants.popleft()
        if n > EPSILON:
            self._debt += n

    def need(self, now: float) -> int:
        """How many tokens to ask the shared bucket for now (0: enough held, or not yet time)."""
        if self.pending or now < self.next_ask_at:
            return 0
        held = self.available(now)
        if held + EPSILON >= max(1.0, self.burst / 2):
            return 0
        return max(1, math.ceil(self.burst - held - EPSILON))

    def on_asked(self, n: int) -> None:
        """A request for ``n`` tokens went out."""
        self.pending = True
        self.asked = n

    def on_grant(self, now: float, granted: int, wait_s: float) -> None:
        """The shared bucket granted ``granted`` of the tokens asked; the next one is due in ``wait_s``."""
        self.pending = False
        n = float(max(0, granted))
        paid = min(self._debt, n)
        self._debt -= paid
        n -= paid
        if n > EPSILON:
            self._grants.append([now + self.ttl_s, n])
        if granted < self.asked:
            self.next_ask_at = now + max(self.min_gap_s, min(self.ttl_s, max(0.0, wait_s)))
        self.asked = 0

    def on_error(self, now: float) -> None:
        """The request failed (the shared store is unreachable); nothing was granted."""
        self.pending = False
        self.asked = 0

    def wait_s(self, now: float) -> float:
        """Seconds until a token may be held: 0 now, ``inf`` while only a grant can tell."""
        if self.available(now) + EPSILON >= 1.0:
            return 0.0
        if self.pending:
            return math.inf
        return max(0.0, self.next_ask_at - now)

    def __repr__(self) -> str:
        held = sum(g[1] for g in self._grants) - self._debt
        state = " pending" if self.pending else ""
        return (f"<LeasedTokens {self.key} rate={self.rate_per_s:.4g}/s burst={self.burst:g} held={held:.2f}"
                f" grants={len(self._grants)}{state}>")
