"""Retry delays and expiry. Pure: time and randomness are arguments.

The foundation uses a fixed list of intervals (``[queue] retry_intervals_s``); the last one
repeats. RFC 5321 §4.5.4.1 asks for at least 30 minutes between retries on the internet and
a give-up time of at least 4-5 days (``[queue] max_age_s``, default 5 days).
"""

from __future__ import annotations

from typing import Sequence


def delay_for_attempt(attempt: int, intervals_s: Sequence[float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        return 0.0
    return float(intervals_s[min(attempt, len(intervals_s)) - 1])


def is_expired(created_s: float, now_s: float, max_age_s: float) -> bool:
    return now_s - created_s >= max_age_s
