"""VERP return paths and engine Message-IDs encode a recipient and read back to it."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mta_engine.dsn.verp import RecipientRef, parse_message_id, parse_verp, return_path
from mta_engine.model import address_problem
from tests.unit.test_layering import IO_MODULES, PKG, imported

DOMAINS = frozenset({"bounce.example.com"})


def test_parsers_are_pure() -> None:
    """The inbound report parsers import nothing that does I/O (STYLE layering rule)."""
    for module in ("dsn/verp.py", "dsn/oob.py", "dsn/arf.py"):
        assert not imported(PKG / module) & IO_MODULES, module


def test_single_recipient_transaction_gets_recipient_verp() -> None:
    """One recipient: bounces+<queue_id>.<index>@domain."""
    assert return_path("news@sender.test", 0xA1, [3], "bounce.example.com") == \
        "bounces+00000000000000a1.3@bounce.example.com"


def test_multi_recipient_transaction_gets_message_verp() -> None:
    """Several recipients share one reverse-path, so it names only the message."""
    assert return_path("news@sender.test", 0xA1, [0, 1], "bounce.example.com") == \
        "bounces+00000000000000a1@bounce.example.com"


def test_null_sender_and_disabled_verp_are_unchanged() -> None:
    """DSNs keep the null sender (RFC 5321 §4.5.5); no domain means VERP is off."""
    assert return_path("", 1, [0], "bounce.example.com") == ""
    assert return_path("a@b.test", 1, [0], "") == "a@b.test"


@given(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_verp_round_trips_and_is_a_valid_short_address(msg_id: int, index: int) -> None:
    """Any id encodes to a valid address with a local part under 64 octets, and decodes back."""
    addr = return_path("s@x.test", msg_id, [index], "bounce.example.com")
    assert address_problem(addr) is None and len(addr.partition("@")[0]) <= 64
    assert parse_verp(addr.upper(), DOMAINS) == RecipientRef(msg_id, index, "verp")


def test_verp_parse_refuses_other_domains_and_shapes() -> None:
    """Only bounces+<16 hex>[.<index>] at our domains is a reference."""
    assert parse_verp("<bounces+00000000000000a1@bounce.example.com>", DOMAINS) == RecipientRef(0xA1, None, "verp")
    assert parse_verp("bounces+00000000000000a1.2@elsewhere.test", DOMAINS) is None
    assert parse_verp("bounces+00000000000000a1.2@elsewhere.test") is not None
    for bad in ("fbl@bounce.example.com", "bounces+xyz@bounce.example.com", "bounces+a1.2@bounce.example.com",
                "other+00000000000000a1.2@bounce.example.com", "bounces+0000000000000000.1@bounce.example.com",
                "no-at-sign"):
        assert parse_verp(bad, DOMAINS) is None, bad


def test_message_id_reference_needs_the_recipient_index() -> None:
    """Worker Message-IDs are <queue_id>.<index>@host; a submitter's own ids are not ours."""
    ref = parse_message_id("<00000000000000a1.7@mta.test>")
    assert ref == RecipientRef(0xA1, 7, "message_id") and ref.queue_id == "00000000000000a1.7"
    assert parse_message_id("<00000000000000a1@mta.test>") is None
    assert parse_message_id("<CAFx=abc@mail.gmail.example>") is None


def test_signed_references_round_trip_and_only_verify_under_their_key() -> None:
    from mta_engine.dsn.verp import message_id, parse_message_id, parse_verp, return_path

    key = b"k" * 32
    addr = return_path("n@s.test", 0x2A, [7], "bounce.test", key)
    assert addr.startswith("bounces+000000000000002a.7-") and len(addr.partition("@")[0]) <= 64
    ref = parse_verp(addr.upper(), frozenset({"bounce.test"}))  # case folding keeps the tag
    assert ref is not None and (ref.msg_id, ref.index) == (0x2A, 7)
    assert ref.signed_by(key) and not ref.signed_by(b"x" * 32)
    mid = parse_message_id(f"<{message_id(0x2A, 7, 'mta.test', key)}>")
    assert mid is not None and mid.signed_by(key) and mid.queue_id == "000000000000002a.7"
    unsigned = parse_verp(return_path("n@s.test", 0x2A, [7], "bounce.test"))
    assert unsigned is not None and unsigned.tag is None and not unsigned.signed_by(key)
