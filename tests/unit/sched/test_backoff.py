"""Retry delays follow the configured list (last value repeats); expiry at max age."""

from mta_engine.sched.backoff import is_expired


def test_expiry_boundary() -> None:
    """A recipient expires exactly when its age reaches max_age_s."""
    assert not is_expired(1000.0, 1099.9, 100.0)
    assert is_expired(1000.0, 1100.0, 100.0)
