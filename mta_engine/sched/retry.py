"""Retry schedule: how long a deferred recipient waits before its next attempt.

Contract: pure. Randomness (jitter) comes from the ``random.Random`` the caller passes; nothing
here reads a clock. Only recipients that failed are retried, so the delay is per recipient and
counts that recipient's failed attempts. Bad parameters raise ``ValueError`` at construction.

RFC 5321 §4.5.4.1: the sender MUST delay retrying a destination after a temporary failure; the
retry interval SHOULD be at least 30 minutes, and the give-up time generally at least 4-5 days
(``SiteLimits.max_age_s``, default 5 days). The defaults here (first retry after 5 minutes,
doubling to at most 1 hour between tries) retry sooner than that at first, as bulk senders do
for greylisting, and settle well above 30 minutes. Jitter (±20 % by default) spreads retries of
a large campaign so they do not all return in the same second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rng is passed in; this module never draws randomness itself
    import random

__all__ = ["MIN_DELAY_S", "RetryPolicy"]

MIN_DELAY_S = 1.0
"""No retry is scheduled sooner than this, whatever the jitter draws."""


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before retry n: a fixed list when ``intervals_s`` is set (last value repeats), else
    exponential: ``first_s * factor**(n-1)`` capped at ``max_s``; then ±``jitter`` (a fraction).

    ``max_s`` caps the base delay; the jittered delay may exceed it by up to ``jitter * max_s``
    (so the retries of many recipients held at the cap still spread out).
    """

    first_s: float = 300.0
    factor: float = 2.0
    max_s: float = 3600.0
    jitter: float = 0.2
    intervals_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.first_s > 0:
            raise ValueError(f"first_s must be positive, got {self.first_s!r}")
        if not self.factor >= 1.0:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if not self.max_s >= self.first_s:
            raise ValueError(f"max_s ({self.max_s!r}) must be >= first_s ({self.first_s!r})")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if any(not v > 0 for v in self.intervals_s):
            raise ValueError(f"intervals_s must be positive numbers, got {self.intervals_s!r}")
        object.__setattr__(self, "intervals_s", tuple(float(v) for v in self.intervals_s))

    def base_delay(self, attempt: int) -> float:
        """The delay before the retry after failed attempt ``attempt`` (1-based), without jitter.

        ``attempt < 1`` (nothing failed yet) gives 0.0: the recipient is due now.
        """
        if attempt < 1:
            return 0.0
        if self.intervals_s:
            return self.intervals_s[min(attempt, len(self.intervals_s)) - 1]
        n = attempt - 1
        if self.factor == 1.0 or n == 0:
            return min(self.first_s, self.max_s)
        # compare in log space so huge attempt counts cannot overflow a float
        if n * math.log(self.factor) >= math.log(self.max_s / self.first_s):
            return self.max_s
        return min(self.max_s, self.first_s * self.factor**n)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): base delay ± jitter, >= 1 s.

        ``attempt < 1`` gives 0.0 and draws nothing from ``rng``.
        """
        base = self.base_delay(attempt)
        if attempt < 1:
            return 0.0
        if self.jitter:
            base *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(MIN_DELAY_S, base)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any) -> RetryPolicy:
        """Build from the ``[queue]`` table (a mapping) or a ``QueueConfig``-like object.

        Keys (all optional): ``retry_first_s``, ``retry_factor``, ``retry_max_s``,
        ``retry_jitter``, ``retry_intervals_s`` (a non-empty list selects the fixed schedule).
        Other keys are ignored, so the whole ``[queue]`` table can be passed.
        """
        if isinstance(section, Mapping):
            get = section.get
        else:
            def get(key: str, default: Any = None) -> Any:
                return getattr(section, key, default)
        d = cls()
        return cls(
            first_s=float(get("retry_first_s", d.first_s)),
            factor=float(get("retry_factor", d.factor)),
            max_s=float(get("retry_max_s", d.max_s)),
            jitter=float(get("retry_jitter", d.jitter)),
            intervals_s=tuple(float(v) for v in (get("retry_intervals_s", ()) or ())),
        )

    def __repr__(self) -> str:
        shape = (f"intervals_s={list(self.intervals_s)}" if self.intervals_s
                 else f"first_s={self.first_s:g} factor={self.factor:g} max_s={self.max_s:g}")
        return f"<RetryPolicy {shape} jitter={self.jitter:g}>"
