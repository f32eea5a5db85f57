"""Webhook bookkeeping: config checks, filters, batching, retention, backoff, cursors and trim floor."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.errors import ConfigError
from mta_engine.obs.webhooks import (NO_FLOOR, Courier, Cursor, WebhookConfig, WebhookEndpoint, backoff_delay_s,
                                     cursor_get, cursor_key, cursor_put, cursor_register, decode_cursor,
                                     encode_cursor, encode_payload, signature, trim_floor)
from mta_engine.spool.store import Spool

URL = "http://127.0.0.1:9/hook"


def ep(**kw: object) -> WebhookEndpoint:
    return WebhookEndpoint.from_dict("webhooks.endpoint[0]", {"url": URL, **kw})


def ev(seq: int, type_: str = "Delivery", tenant: str | None = "t1", ts: float = 1000.0) -> dict[str, object]:
    return {"type": type_, "tenant": tenant, "timestamp": ts, "event_seq": seq, "recipient": f"r{seq}@x.test"}


def courier(endpoint: WebhookEndpoint | None = None, cursor: int = 0, retention_s: float = 3600.0) -> Courier:
    return Courier(endpoint or ep(), cursor, retention_s=retention_s, min_backoff_s=1.0, max_backoff_s=60.0)


# -- config ---------------------------------------------------------------------------------------
def test_endpoint_defaults_and_repr() -> None:
    """An endpoint needs only a url; the name defaults to it and the repr shows the filters."""
    e = ep(types=["Bounce", "Delivery"], tenants=["acme"])
    assert e.name == URL and e.batch_max == 100 and e.timeout_s == 10.0
    assert repr(e) == f"<WebhookEndpoint {URL} {URL} types=Bounce,Delivery tenants=acme batch_max=100>"


@pytest.mark.parametrize(("raw", "key"), [
    ({"url": "ftp://x/y"}, "url"),
    ({}, "url"),
    ({"url": URL, "types": ["Delivered"]}, "types"),
    ({"url": URL, "types": "Delivery"}, "types"),
    ({"url": URL, "tenants": [""]}, "tenants"),
    ({"url": URL, "batch_max": 0}, "batch_max"),
    ({"url": URL, "batch_max": True}, "batch_max"),
    ({"url": URL, "timeout_s": -1}, "timeout_s"),
    ({"url": URL, "colour": "red"}, "colour"),
])
def test_bad_endpoint_names_the_key(raw: dict[str, object], key: str) -> None:
    """A bad endpoint table is a ConfigError naming the offending key."""
    with pytest.raises(ConfigError, match=key):
        WebhookConfig(endpoint=[raw]).validate()


def test_duplicate_names_are_rejected() -> None:
    """Two endpoints sharing a name would share a cursor: refused."""
    with pytest.raises(ConfigError, match="duplicate"):
        WebhookConfig(endpoint=[{"url": URL}, {"url": URL}]).validate()
    WebhookConfig(endpoint=[{"url": URL}, {"url": URL, "name": "second"}]).validate()


def test_section_limits_are_checked() -> None:
    """Retention and backoff bounds must make sense."""
    with pytest.raises(ConfigError, match="retention_s"):
        WebhookConfig(retention_s=0).validate()
    with pytest.raises(ConfigError, match="backoff"):
        WebhookConfig(min_backoff_s=10, max_backoff_s=1).validate()
    assert WebhookConfig(retention_s=40).heartbeat_s == 10
    assert WebhookConfig().heartbeat_s == 60


def test_filters_by_type_and_tenant() -> None:
    """Empty filters take everything; a tenant filter drops events without a tenant."""
    assert ep().wants(ev(1, "SiteModeChange", tenant=None))
    e = ep(types=["Bounce"], tenants=["acme"])
    assert e.wants(ev(1, "Bounce", "acme"))
    assert not e.wants(ev(1, "Delivery", "acme"))
    assert not e.wants(ev(1, "Bounce", "other"))
    assert not e.wants(ev(1, "Bounce", None))


# -- courier --------------------------------------------------------------------------------------
def test_offer_batches_up_to_batch_max_and_delivery_moves_cursor() -> None:
    """A batch holds at most batch_max events; delivering it moves the cursor to its last event."""
    c = courier(ep(batch_max=2))
    events = [ev(i) for i in range(1, 6)]
    assert c.offer(events, 1000.0) == 2
    assert c.pending is not None and [e["event_seq"] for e in c.pending.events] == [1, 2]
    assert repr(c.pending) == "<Batch 1-2 n=2 upto=2>"
    assert c.cursor == 0
    c.on_delivered()
    assert c.cursor == 2 and c.pending is None and c.delivered == 2


def test_unwanted_events_move_the_cursor_without_a_post() -> None:
    """Filtered-out events are consumed: the cursor passes them and no batch is made."""
    c = courier(ep(types=["Bounce"]))
    assert c.offer([ev(1), ev(2), ev(3)], 1000.0) == 3
    assert c.pending is None and c.cursor == 3
    c.offer([ev(4), ev(5, "Bounce"), ev(6)], 1000.0)
    assert c.pending is not None and c.pending.upto == 6 and [e["event_seq"] for e in c.pending.events] == [5]


def test_offer_skips_events_at_or_below_the_cursor() -> None:
    """A re-read page (events the cursor already passed) sends nothing twice."""
    c = courier(cursor=3)
    c.offer([ev(2), ev(3), ev(4)], 1000.0)
    assert c.pending is not None and [e["event_seq"] for e in c.pending.events] == [4]


def test_gap_in_sequence_is_counted_as_missing() -> None:
    """Sequence numbers absent from the outbox (trimmed past retention) are counted, not hidden."""
    c = courier(cursor=10)
    c.offer([ev(15)], 1000.0)
    assert c.missing == 4


def test_events_older_than_retention_are_dropped() -> None:
    """Events past the retention are not sent; a batch that expires while retrying is dropped whole."""
    c = courier(retention_s=100.0)
    c.offer([ev(1, ts=800.0), ev(2, ts=950.0)], 1000.0)
    assert c.expired == 1 and c.pending is not None and [e["event_seq"] for e in c.pending.events] == [2]
    c.on_failed(1000.0, random.Random(1))
    assert c.expire(1049.0) == 0
    assert c.expire(1051.0) == 1
    assert c.pending is None and c.cursor == 2 and c.failures == 0 and c.expired == 2


def test_failure_schedules_retry_with_growing_delay() -> None:
    """Consecutive failures back off exponentially up to the cap; success resets."""
    c = courier()
    c.offer([ev(1)], 0.0)
    rng = random.Random(7)
    delays = [c.on_failed(0.0, rng) for _ in range(10)]
    assert c.failures == 10 and not c.due(delays[-1] - 0.001) and c.due(delays[-1])
    assert all(0.5 <= d <= 60.0 for d in delays) and delays[-1] >= 30.0
    c.on_delivered()
    assert c.failures == 0 and c.due(0.0) is False


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(10, 1000), st.floats(0, 1), st.none() | st.floats(0, 1e6))
def test_backoff_is_bounded(failures: int, lo: float, hi: float, r: float, retry_after: float | None) -> None:
    """The delay is never above max_backoff_s and never below half of min_backoff_s."""

    class Fixed:
        def random(self) -> float:
            return r

    d = backoff_delay_s(failures, lo, hi, Fixed(), retry_after)
    assert lo / 2 <= d <= hi


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    """A server's Retry-After lengthens the delay but never beyond max_backoff_s."""
    rng = random.Random(0)
    assert backoff_delay_s(1, 1.0, 60.0, rng, 30.0) == 30.0
    assert backoff_delay_s(1, 1.0, 60.0, rng, 3600.0) == 60.0


def test_payload_and_signature() -> None:
    """The body lists the events without None values; the signature is an HMAC of the body."""
    c = courier(ep(name="n", secret="s3cret"))
    c.offer([ev(7, tenant=None)], 1000.0)
    assert c.pending is not None
    body = encode_payload(c.endpoint, c.pending)
    assert body.startswith(b'{"webhook":"n","first_seq":7,"last_seq":7,"events":[{"type":"Delivery","timestamp"')
    assert b"tenant" not in body
    assert signature("s3cret", body).startswith("sha256=") and len(signature("s3cret", body)) == 71


# -- cursors and trim floor ------------------------------------------------------------------------
def test_cursor_codec_round_trips_and_rejects_garbage() -> None:
    """A cursor decodes to what was encoded; a wrong size or version decodes to None."""
    c = Cursor(2**64 - 1, 123)
    assert decode_cursor(encode_cursor(c)) == c
    assert decode_cursor(b"\x02" + encode_cursor(c)[1:]) is None
    assert decode_cursor(b"xx") is None and decode_cursor(None) is None
    assert cursor_key("a") == b"webhook_cursor:a"


def test_trim_floor_is_the_lowest_live_cursor(tmp_path: Path) -> None:
    """The floor is the lowest cursor among endpoints whose cursor was refreshed within retention."""
    spool = Spool(tmp_path / "spool", map_size_mb=64)
    cfg = WebhookConfig(endpoint=[{"url": URL, "name": "a"}, {"url": URL, "name": "b"}], retention_s=100.0)
    with spool.write() as txn:
        assert trim_floor(txn, spool, WebhookConfig(), 1000.0) == NO_FLOOR
        cursor_put(txn, spool, "a", 50, 1000.0)
        cursor_put(txn, spool, "b", 20, 950.0)
        assert trim_floor(txn, spool, cfg, 1000.0) == 20
        assert trim_floor(txn, spool, cfg, 1051.0) == 50  # b's process has been gone past retention
        assert trim_floor(txn, spool, cfg, 1101.0) == NO_FLOOR
    spool.close()


def test_trim_floor_registers_new_endpoints_at_zero(tmp_path: Path) -> None:
    """An endpoint the webhook process has not seen yet holds the whole outbox from now on."""
    spool = Spool(tmp_path / "spool", map_size_mb=64)
    cfg = WebhookConfig(endpoint=[{"url": URL, "name": "a"}, {"url": URL, "name": "new"}])
    with spool.write() as txn:
        cursor_put(txn, spool, "a", 50, 1000.0)
        assert trim_floor(txn, spool, cfg, 1000.0) == 0
        assert cursor_get(txn, spool, "new") == Cursor(0, 1_000_000)
        assert cursor_register(txn, spool, cfg.endpoints(), 2000.0) == {"a": 50, "new": 0}
        assert cursor_get(txn, spool, "a") == Cursor(50, 1_000_000)  # register never moves a cursor
    spool.close()
