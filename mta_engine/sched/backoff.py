"""Expiry. Pure: time is an argument. (Retry delays are ``sched/retry.py``.)

RFC 5321 §4.5.4.1 asks for a give-up time of at least 4-5 days (``[queue] max_age_s``,
default 5 days; per site in ``[[sched.site]]``).
"""

from __future__ import annotations


def is_expired(created_s: float, now_s: float, max_age_s: float) -> bool:
    return now_s - created_s >= max_age_s
