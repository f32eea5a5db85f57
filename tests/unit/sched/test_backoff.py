"""Retry delays follow the configured list (last value repeats); expiry at max age."""

from mta_engine.sched.backoff import delay_for_attempt, is_expired


def test_delay_follows_list_and_repeats_last() -> None:
    """Attempt n waits the n-th interval; past the list, the last one repeats."""
    iv = [60.0, 300.0, 900.0]
    assert [delay_for_attempt(n, iv) for n in range(0, 6)] == [0.0, 60.0, 300.0, 900.0, 900.0, 900.0]


def test_expiry_boundary() -> None:
    """A recipient expires exactly when its age reaches max_age_s."""
    assert not is_expired(1000.0, 1099.9, 100.0)
    assert is_expired(1000.0, 1100.0, 100.0)
