"""Token buckets: smooth message and connection rates per site.

Contract: pure. Every method takes ``now`` (float seconds, any monotonic origin); a ``now``
earlier than the last one seen is treated as no time passing. A bucket holds at most ``burst``
tokens and refills at ``rate_per_s``; with a small burst (one second's worth, at least one token)
the rate is smooth: "100 per minute" means one message every 0.6 s, not 100 at the top of
each minute. ``rate_per_s == 0`` means unlimited. Bad parameters raise ``ValueError``.

Guarantee (tested with hypothesis): over any window of W seconds, the tokens granted by
``take`` with ``n <= burst`` sum to at most ``rate_per_s * W + burst``.
"""

from __future__ import annotations

import math

__all__ = ["EPSILON", "TokenBucket", "default_burst", "per_hour", "per_minute"]

EPSILON = 1e-9
"""Float slack in token counts: a caller that sleeps exactly ``wait_s`` must then succeed."""


def per_minute(n: float) -> float:
    """A rate of ``n`` per minute, in tokens per second."""
    return n / 60.0


def per_hour(n: float) -> float:
    """A rate of ``n`` per hour, in tokens per second."""
    return n / 3600.0


def default_burst(rate_per_s: float) -> float:
    """One second's worth of tokens, at least one: smooth, never bursty."""
    return max(1.0, rate_per_s * 1.0)


class TokenBucket:
    """A smooth token bucket; starts full. ``rate_per_s == 0`` means unlimited."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_last")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s < 0 or math.isnan(rate_per_s):
            raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s!r}")
        if not burst >= 1.0:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now

    @property
    def unlimited(self) -> bool:
        return self.rate_per_s == 0.0

    def _refill(self, now: float) -> None:
        if now > self._last:
            if self.rate_per_s:
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now

    def available(self, now: float) -> float:
        """Tokens available now (``inf`` when unlimited; negative while in debt)."""
        if self.unlimited:
            return math.inf
        self._refill(now)
        return self._tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are there; return whether it did (all or nothing).

        A request larger than ``burst`` is granted only from a full bucket, and leaves it in
        debt (so the long-run rate still holds).
        """
        if self.unlimited:
            return True
        self._refill(now)
        if self._tokens + EPSILON >= min(n, self.burst):
            self._tokens -= n
            return True
        return False

    def spend(self, now: float, n: float = 1.0) -> None:
        """Record ``n`` tokens used whether or not they were there (may leave the bucket in debt)."""
        if not self.unlimited:
            self._refill(now)
            self._tokens -= n

    def wait_s(self, now: float, n: float = 1.0) -> float:
        """Seconds from ``now`` until ``take(n)`` can succeed (0.0 if it can now)."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        missing = min(n, self.burst) - self._tokens
        return 0.0 if missing <= EPSILON else missing / self.rate_per_s

    def set_rate(self, rate_per_s: float, now: float, burst: float | None = None) -> None:
        """Change the rate from ``now`` on (tokens earned so far are kept, up to the burst).

        Going from unlimited to limited starts from a full bucket.
        """
        if rate_per_s < 0 or math.isnan(rate_per_s):
            raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s!r}")
        was_unlimited = self.unlimited
        self._refill(now)
        self._last = max(self._last, now)
        self.rate_per_s = float(rate_per_s)
        if burst is not None:
            if not burst >= 1.0:
                raise ValueError(f"burst must be >= 1, got {burst!r}")
            self.burst = float(burst)
        if was_unlimited:
            self._tokens = self.burst
        self._tokens = min(self._tokens, self.burst)

    def __repr__(self) -> str:
        if self.unlimited:
            return "<TokenBucket unlimited>"
        return f"<TokenBucket rate={self.rate_per_s:.4g}/s burst={self.burst:g} tokens={self._tokens:.2f}>"
