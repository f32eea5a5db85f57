"""ConnectionPool bookkeeping: what is reused, what the caller must close (asserted via repr)."""

from __future__ import annotations

from dataclasses import dataclass

from mta_engine.delivery.pool import ConnectionPool, Endpoint

MX1 = Endpoint(source_ip="192.0.2.10", ip="198.51.100.1", port=25)
MX2 = Endpoint(source_ip=None, ip="198.51.100.2", port=25, tls="starttls")


@dataclass
class FakeSession:
    """Stands in for SmtpSession: the pool only reads usable and transactions."""

    name: str
    usable: bool = True
    transactions: int = 1


def test_endpoint_str() -> None:
    """An endpoint renders as source->ip:port/tls, '*' for the default source."""
    assert str(MX1) == "192.0.2.10->198.51.100.1:25/none"
    assert str(MX2) == "*->198.51.100.2:25/starttls"


def test_put_then_take_reuses_the_session() -> None:
    """A parked usable session is handed back for the same endpoint only."""
    pool: ConnectionPool[FakeSession] = ConnectionPool()
    session = FakeSession("a")
    assert pool.put(session, MX1, now=0.0) == []
    assert repr(pool) == "<ConnectionPool idle=1 endpoints=[192.0.2.10->198.51.100.1:25/none=1]>"
    assert pool.take(MX2, now=1.0) is None
    assert pool.take(MX1, now=1.0) is session
    assert repr(pool) == "<ConnectionPool idle=0 endpoints=[]>"


def test_take_is_lifo() -> None:
    """The most recently parked session is reused first, so older ones can expire."""
    pool: ConnectionPool[FakeSession] = ConnectionPool()
    old, new = FakeSession("old"), FakeSession("new")
    pool.put(old, MX1, now=0.0)
    pool.put(new, MX1, now=1.0)
    assert pool.take(MX1, now=2.0) is new


def test_unusable_session_is_returned_for_closing() -> None:
    """put() hands back a session that can no longer carry a transaction."""
    pool: ConnectionPool[FakeSession] = ConnectionPool()
    dead = FakeSession("dead", usable=False)
    assert pool.put(dead, MX1, now=0.0) == [dead]
    assert repr(pool) == "<ConnectionPool idle=0 endpoints=[]>"


def test_session_at_message_limit_is_returned_for_closing() -> None:
    """A session that reached max_messages_per_connection is not parked (T09)."""
    pool: ConnectionPool[FakeSession] = ConnectionPool(max_messages_per_connection=3)
    worn = FakeSession("worn", transactions=3)
    fresh = FakeSession("fresh", transactions=2)
    assert pool.put(worn, MX1, now=0.0) == [worn]
    assert pool.put(fresh, MX1, now=0.0) == []


def test_idle_limit_evicts_the_oldest() -> None:
    """Beyond max_idle_per_endpoint the oldest idle session is returned for closing."""
    pool: ConnectionPool[FakeSession] = ConnectionPool(max_idle_per_endpoint=2)
    a, b, c = FakeSession("a"), FakeSession("b"), FakeSession("c")
    assert pool.put(a, MX1, now=0.0) == []
    assert pool.put(b, MX1, now=1.0) == []
    assert pool.put(c, MX1, now=2.0) == [a]
    assert pool.put(FakeSession("d"), MX2, now=2.0) == []
    assert repr(pool) == (
        "<ConnectionPool idle=3 endpoints=[192.0.2.10->198.51.100.1:25/none=2, *->198.51.100.2:25/starttls=1]>"
    )


def test_stale_sessions_are_not_taken_and_expire() -> None:
    """A session idle past idle_timeout_s is not reused and comes back from expire()."""
    pool: ConnectionPool[FakeSession] = ConnectionPool(idle_timeout_s=10.0)
    stale, fresh = FakeSession("stale"), FakeSession("fresh")
    pool.put(stale, MX1, now=0.0)
    pool.put(fresh, MX2, now=5.0)
    assert pool.take(MX1, now=10.5) is None
    assert pool.expire(now=10.5) == [stale]
    assert repr(pool) == "<ConnectionPool idle=1 endpoints=[*->198.51.100.2:25/starttls=1]>"
    assert pool.expire(now=15.0) == []


def test_session_that_died_while_idle_is_skipped_and_expired() -> None:
    """A parked session that became unusable (server closed it) is skipped by take, closed by expire."""
    pool: ConnectionPool[FakeSession] = ConnectionPool()
    good, died = FakeSession("good"), FakeSession("died")
    pool.put(good, MX1, now=0.0)
    pool.put(died, MX1, now=1.0)
    died.usable = False
    assert pool.take(MX1, now=2.0) is good
    assert pool.expire(now=2.0) == [died]
    assert pool.idle_count == 0


def test_drain_returns_everything() -> None:
    """drain() empties the pool and returns every idle session."""
    pool: ConnectionPool[FakeSession] = ConnectionPool()
    a, b = FakeSession("a"), FakeSession("b")
    pool.put(a, MX1, now=0.0)
    pool.put(b, MX2, now=0.0)
    assert pool.drain() == [a, b]
    assert repr(pool) == "<ConnectionPool idle=0 endpoints=[]>"
