"""Spool records: versioned msgpack round trips; undecodable bytes are SpoolCorrupt, not a crash."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta_engine.errors import SpoolCorrupt
from mta_engine.spool import records
from mta_engine.spool.records import Message, Recipient, State


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_keys_round_trip_and_sort_numerically(due: int, msg: int, idx: int) -> None:
    """Due keys split back into their parts and order by time first."""
    assert records.split_due_key(records.due_key(due, msg & (2**64 - 1), idx & (2**32 - 1))) == (due, msg, idx & (2**32 - 1))
    if due < 2**64 - 1:
        assert records.due_key(due, msg, 0) < records.due_key(due + 1, 0, 0)


def test_recipient_round_trip() -> None:
    """A recipient record decodes to the same values it was encoded from."""
    r = Recipient("jörg@example.test", "Jörg", {"first_name": "J", "n": 3}, State.QUEUED, 2, 1234, 451, "4.7.1", "later")
    assert Recipient.decode(r.encode()) == r
    assert r.domain == "example.test"


def test_message_round_trip() -> None:
    """A message record decodes to the same values it was encoded from."""
    m = Message("s@x.test", 99, 10, 7, "camp", "ten", 5, 1000, True, True)
    assert Message.decode(m.encode()) == m


@pytest.mark.parametrize("raw", [b"", b"\xc1", msgpack.packb([99, "x"]), msgpack.packb({"a": 1}), b"\x93\x01"])
def test_undecodable_records_raise_spool_corrupt(raw: bytes) -> None:
    """Garbage or an unknown schema version is SpoolCorrupt for both record kinds."""
    with pytest.raises(SpoolCorrupt):
        Recipient.decode(raw)
    with pytest.raises(SpoolCorrupt):
        Message.decode(raw)


def test_queue_id_text_forms() -> None:
    """Queue ids are 16 hex digits; recipient ids add the index after a dot."""
    assert records.queue_id(255) == "00000000000000ff"
    assert records.rcpt_id(255, 3) == "00000000000000ff.3"
    assert records.parse_queue_id("00000000000000ff.3") == (255, 3)
    assert records.parse_queue_id("00000000000000ff") == (255, None)


def test_a_due_key_ends_with_its_recipient_key() -> None:
    """The scheduler reads a recipient's record (and deletes it) by the tail of its due key."""
    for due_ms, msg_id, index in ((0, 1, 0), (1_795_898_414_712, 2**40 + 3, 99_999), (2**63, 2**64 - 1, 2**32 - 1)):
        assert records.due_key(due_ms, msg_id, index)[8:] == records.rcpt_key(msg_id, index)


def test_pack_reuses_a_packer_and_matches_packb_even_after_a_failure() -> None:
    """records.pack keeps one Packer per thread: same bytes as msgpack.packb, and a value it
    cannot pack leaves nothing behind for the next call."""
    import msgpack
    import pytest

    with pytest.raises(TypeError):
        records.pack([1, "half", object()])
    for value in ([1, "a@b.c", None, {"k": b"\xff"}], {"v": 1, "x": [True, 2.5]}, []):
        assert records.pack(value) == msgpack.packb(value, use_bin_type=True)
