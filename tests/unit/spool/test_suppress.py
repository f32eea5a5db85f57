"""The suppression list in a real LMDB spool: per tenant, case-insensitive, CSV in and out, B03/B04."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import msgpack
import pytest

from mta_engine.dsn.classify import BounceClass
from mta_engine.spool import suppress
from mta_engine.spool.store import Spool

T0_S = 1_700_000_000
T0_MS = T0_S * 1000


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", map_size_mb=64)
    yield s
    s.close()


def put(spool: Spool, tenant: str | None, *addresses: str, reason: str = "test") -> None:
    with spool.write() as txn:
        for a in addresses:
            suppress.add(txn, spool, tenant, a, reason=reason, source="t", added_at_s=T0_S)


def listed(spool: Spool, **kw: object) -> list[tuple[str, str]]:
    with spool.read() as txn:
        return [(e.tenant, e.address) for e in suppress.iterate(txn, spool, **kw)]  # type: ignore[arg-type]


def clock() -> float:
    return T0_S + 0.5


# -- the list -------------------------------------------------------------------------------------
def test_add_then_lookup_then_remove(spool: Spool) -> None:
    """An added address is suppressed with its reason, source and date; remove() lifts it once."""
    with spool.write() as txn:
        assert suppress.add(txn, spool, "acme", "bob@example.test", reason="invalid_recipient: 550 5.1.1",
                            source="0000000000000001.0", added_at_s=T0_S)
    with spool.read() as txn:
        entry = suppress.is_suppressed(txn, spool, "acme", "bob@example.test")
    assert entry == suppress.Entry("acme", "bob@example.test", "invalid_recipient: 550 5.1.1",
                                   "0000000000000001.0", T0_S)
    with spool.write() as txn:
        assert suppress.remove(txn, spool, "acme", "bob@example.test") is True
        assert suppress.remove(txn, spool, "acme", "bob@example.test") is False
        assert suppress.is_suppressed(txn, spool, "acme", "bob@example.test") is None


def test_adding_twice_keeps_the_first_entry(spool: Spool) -> None:
    """A second add of the same address reports False and does not overwrite the original reason or date."""
    with spool.write() as txn:
        assert suppress.add(txn, spool, None, "a@x.test", reason="first", source="s1", added_at_s=T0_S)
        assert not suppress.add(txn, spool, None, "A@X.TEST", reason="second", source="s2", added_at_s=T0_S + 9)
        entry = suppress.is_suppressed(txn, spool, None, "a@x.test")
    assert entry is not None and (entry.reason, entry.source, entry.added_at_s) == ("first", "s1", T0_S)


@pytest.mark.parametrize("variant", ["Bob@Example.TEST", "BOB@example.test", " bob@example.test ",
                                     "bob@example.test."])
def test_lookup_is_case_insensitive_in_local_part_and_domain(spool: Spool, variant: str) -> None:
    """Case, surrounding space and a trailing root dot do not let a suppressed address through."""
    put(spool, "", "bob@example.test")
    with spool.read() as txn:
        assert suppress.is_suppressed(txn, spool, "", variant) is not None


def test_idn_domain_matches_its_a_label(spool: Spool) -> None:
    """A U-label domain and its A-label (punycode) form are the same suppressed address."""
    put(spool, "", "jörg@Bücher.example")
    with spool.read() as txn:
        entry = suppress.is_suppressed(txn, spool, "", "JÖRG@xn--bcher-kva.example")
    assert entry is not None and entry.address == "jörg@xn--bcher-kva.example"


def test_tenants_are_isolated(spool: Spool) -> None:
    """An address suppressed for one tenant is still deliverable for another and for the default tenant."""
    put(spool, "acme", "bob@example.test")
    with spool.read() as txn:
        assert suppress.is_suppressed(txn, spool, "acme", "bob@example.test") is not None
        assert suppress.is_suppressed(txn, spool, "globex", "bob@example.test") is None
        assert suppress.is_suppressed(txn, spool, None, "bob@example.test") is None
        assert suppress.is_suppressed(txn, spool, "", "bob@example.test") is None
    put(spool, None, "carol@example.test")
    with spool.read() as txn:
        assert suppress.is_suppressed(txn, spool, "", "carol@example.test") is not None  # None is ""
        assert suppress.is_suppressed(txn, spool, "acme", "carol@example.test") is None


def test_tenant_whose_name_prefixes_another_is_not_mixed_up(spool: Spool) -> None:
    """Listing tenant "ac" never shows tenant "acme"'s entries (the NUL separator ends the tenant)."""
    put(spool, "ac", "a@x.test")
    put(spool, "acme", "b@x.test")
    assert listed(spool, tenant="ac") == [("ac", "a@x.test")]
    assert listed(spool, tenant="acme") == [("acme", "b@x.test")]


def test_iterate_orders_by_tenant_then_address_and_filters_by_prefix(spool: Spool) -> None:
    """All tenants in key order; a prefix matches the start of the address in every tenant."""
    put(spool, "t2", "zed@x.test", "bob@y.test", "bobby@x.test")
    put(spool, "t1", "bob@x.test", "alice@x.test")
    put(spool, "", "bo@x.test")
    assert listed(spool) == [("", "bo@x.test"), ("t1", "alice@x.test"), ("t1", "bob@x.test"),
                             ("t2", "bob@y.test"), ("t2", "bobby@x.test"), ("t2", "zed@x.test")]
    assert listed(spool, prefix="BOB") == [("t1", "bob@x.test"), ("t2", "bob@y.test"), ("t2", "bobby@x.test")]
    assert listed(spool, tenant="t2", prefix="bob") == [("t2", "bob@y.test"), ("t2", "bobby@x.test")]
    assert listed(spool, tenant="t3") == []
    assert listed(spool, prefix="nobody") == []


def test_iterate_pages_with_cursor_without_gaps_or_repeats(spool: Spool) -> None:
    """Following `cursor` of each page's last entry visits every entry exactly once, in order."""
    addresses = [f"user{i:03}@x.test" for i in range(25)]
    put(spool, "acme", *reversed(addresses))
    put(spool, "other", "user000@x.test")
    seen: list[str] = []
    after = None
    while True:
        with spool.read() as txn:
            page = list(suppress.iterate(txn, spool, "acme", after=after, limit=10))
        seen.extend(e.address for e in page)
        if len(page) < 10:
            break
        after = page[-1].cursor
    assert seen == addresses


def test_list_handler_pages_with_next_and_respects_limits(spool: Spool) -> None:
    """suppress_list returns `next` only when more entries follow; a bad limit or cursor is a ValueError."""
    put(spool, "acme", *[f"u{i}@x.test" for i in range(5)])
    first = suppress.handle_suppress_list(spool, {"tenant": "acme", "limit": 3})
    assert [e["address"] for e in first["entries"]] == ["u0@x.test", "u1@x.test", "u2@x.test"]
    second = suppress.handle_suppress_list(spool, {"tenant": "acme", "limit": 3, "after": first["next"]})
    assert [e["address"] for e in second["entries"]] == ["u3@x.test", "u4@x.test"]
    assert second["next"] is None
    exact = suppress.handle_suppress_list(spool, {"tenant": "acme", "limit": 5})
    assert exact["next"] is None and len(exact["entries"]) == 5
    for bad in ({"limit": 0}, {"limit": "10"}, {"limit": suppress.MAX_LIST_LIMIT + 1}, {"after": "zz"},
                {"prefix": 3}, {"tenant": 5}):
        with pytest.raises(ValueError):
            suppress.handle_suppress_list(spool, bad)


def test_undecodable_value_still_suppresses(spool: Spool) -> None:
    """A corrupt entry value keeps its address suppressed; the key is the fact."""
    with spool.write() as txn:
        txn.put(b"\0bob@x.test", b"\xc1garbage", db=spool.dbs["suppress"])
        txn.put(b"\0eve@x.test", msgpack.packb([99, "r", "s", 1]), db=spool.dbs["suppress"])
    with spool.read() as txn:
        for a in ("bob@x.test", "eve@x.test"):
            entry = suppress.is_suppressed(txn, spool, None, a)
            assert entry is not None and entry.reason == "(undecodable entry)"


def test_overlong_key_is_refused_on_add_and_never_matches(spool: Spool) -> None:
    """A tenant plus address over LMDB's 511-byte key limit is a ValueError to add, and simply not suppressed."""
    tenant = "ü" * 200  # 400 bytes of UTF-8
    address = "a" * 64 + "@" + "b" * 60 + ".test"
    with spool.write() as txn:
        with pytest.raises(ValueError):
            suppress.add(txn, spool, tenant, address, reason="r", source="s", added_at_s=T0_S)
        assert suppress.is_suppressed(txn, spool, tenant, address) is None
        assert suppress.filter_recipients(txn, spool, tenant, [address]) == ([0], [])


# -- ingest: filter_recipients --------------------------------------------------------------------
def test_filter_keeps_order_and_reports_refused_by_index(spool: Spool) -> None:
    """Kept indexes stay in submission order; refused ones come back with their entries."""
    put(spool, "acme", "b@x.test", "d@x.test", reason="invalid_recipient")
    addresses = ["a@x.test", "B@X.test", "c@x.test", "d@x.test", "e@x.test"]
    with spool.read() as txn:
        kept, refused = suppress.filter_recipients(txn, spool, "acme", addresses)
        other_kept, other_refused = suppress.filter_recipients(txn, spool, "globex", addresses)
    assert kept == [0, 2, 4]
    assert [(i, e.address, e.reason) for i, e in refused] == [(1, "b@x.test", "invalid_recipient"),
                                                              (3, "d@x.test", "invalid_recipient")]
    assert (other_kept, other_refused) == ([0, 1, 2, 3, 4], [])


def test_refusal_text_names_the_address_date_and_reason() -> None:
    """The per-recipient error a submitter gets says what was refused, since when and why."""
    entry = suppress.Entry("acme", "bob@x.test", "invalid_recipient: 550 5.1.1 no such user", "q.0", T0_S)
    assert entry.refusal("Bob@X.test") == ("'Bob@X.test': on the suppression list since 2023-11-14T22:13:20Z "
                                           "(invalid_recipient: 550 5.1.1 no such user); not queued")


# -- the queue: note_bounce (STANDARDS B03/B04) -----------------------------------------------------
def test_suppressing_categories_are_classifier_categories() -> None:
    """The two suppressing categories are spelled exactly as dsn.classify names them."""
    assert suppress.SUPPRESSING_CATEGORIES == {BounceClass.INVALID_RECIPIENT.value,
                                               BounceClass.INACTIVE_MAILBOX.value}


@pytest.mark.parametrize("category", ["invalid_recipient", "inactive_mailbox"])
def test_permanent_invalid_or_inactive_bounce_suppresses_with_an_event(spool: Spool, category: str) -> None:
    """B04: a permanent invalid_recipient/inactive_mailbox bounce adds the address and yields a Suppressed event."""
    with spool.write() as txn:
        event = suppress.note_bounce(txn, spool, tenant=None, address="Bob@X.test", category=category,
                                     permanent=True, code=550, enhanced="5.1.1",
                                     text="5.1.1 The email account\r\n  does not exist", source="00000000000000a0.3",
                                     now_ms=T0_MS + 250)
        entry = suppress.is_suppressed(txn, spool, "", "bob@x.test")
    reason = f"{category}: 550 5.1.1 5.1.1 The email account does not exist"
    assert event == {"type": "Suppressed", "timestamp": T0_S + 0.25, "tenant": None, "recipient": "Bob@X.test",
                     "reason": reason, "source": "00000000000000a0.3"}
    assert entry == suppress.Entry("", "bob@x.test", reason, "00000000000000a0.3", T0_S)


@pytest.mark.parametrize("category", [c.value for c in BounceClass
                                      if c.value not in ("invalid_recipient", "inactive_mailbox")])
def test_other_categories_never_suppress(spool: Spool, category: str) -> None:
    """B03/B04: reputation, policy, auth, mailbox-full and every other category leave the address alone."""
    with spool.write() as txn:
        event = suppress.note_bounce(txn, spool, tenant="acme", address="bob@x.test", category=category,
                                     permanent=True, code=550, enhanced="5.7.1", text="blocked", source="q.0",
                                     now_ms=T0_MS)
    assert event is None
    assert listed(spool) == []


def test_transient_invalid_recipient_does_not_suppress(spool: Spool) -> None:
    """Only a permanent verdict suppresses: a 4xx "no such user" that will be retried does not."""
    with spool.write() as txn:
        assert suppress.note_bounce(txn, spool, tenant="acme", address="bob@x.test", category="invalid_recipient",
                                    permanent=False, code=450, enhanced="4.1.1", text="try later", source="q.0",
                                    now_ms=T0_MS) is None
    assert listed(spool) == []


def test_second_bounce_of_a_suppressed_address_adds_no_event(spool: Spool) -> None:
    """An address already on the list keeps its entry and produces no second Suppressed event."""
    kw = dict(tenant="acme", address="bob@x.test", category="invalid_recipient", permanent=True, code=550,
              enhanced="5.1.1", text="no", now_ms=T0_MS)
    with spool.write() as txn:
        assert suppress.note_bounce(txn, spool, source="q.0", **kw) is not None  # type: ignore[arg-type]
        assert suppress.note_bounce(txn, spool, source="q.1", **kw) is None  # type: ignore[arg-type]
        entry = suppress.is_suppressed(txn, spool, "acme", "bob@x.test")
    assert entry is not None and entry.source == "q.0"


def test_bounce_reason_is_one_bounded_line() -> None:
    """A multi-line reply becomes one line, cut at MAX_REASON_CHARS."""
    reason = suppress.bounce_reason("invalid_recipient", 550, None, "no\r\nsuch " + "x" * 1000)
    assert reason.startswith("invalid_recipient: 550 no such xxx") and "\n" not in reason
    assert len(reason) == suppress.MAX_REASON_CHARS


# -- CSV import and export ------------------------------------------------------------------------
def test_import_without_header_uses_address_tenant_reason_columns(spool: Spool) -> None:
    """Lines are address[,tenant[,reason]]; empty tenant means the default; blanks and # comments are skipped."""
    text = "# exported from the old ESP\n\nbob@x.test\ncarol@x.test,acme\ndave@x.test,,complaint\n" \
           "erin@x.test,acme,\"hard bounce, 2019\"\n"
    result = suppress.import_csv(spool, text, default_tenant="globex", now_s=T0_S)
    assert result == suppress.ImportResult(added=4, unchanged=0, errors=[])
    with spool.read() as txn:
        got = [(e.tenant, e.address, e.reason, e.source, e.added_at_s) for e in suppress.iterate(txn, spool)]
    assert got == [("acme", "carol@x.test", "imported", "import", T0_S),
                   ("acme", "erin@x.test", "hard bounce, 2019", "import", T0_S),
                   ("globex", "bob@x.test", "imported", "import", T0_S),
                   ("globex", "dave@x.test", "complaint", "import", T0_S)]


def test_import_is_all_or_nothing_and_reports_every_bad_line(spool: Spool) -> None:
    """One bad line means nothing is written; each bad line is reported by its line number."""
    text = "address,tenant\nok@x.test,acme\nnot-an-address,acme\nok2@x.test,acme\nx@y@z,acme\n" \
           "bad@x.test,\"tab\there\"\n"
    result = suppress.import_csv(spool, text, now_s=T0_S)
    assert (result.added, result.unchanged) == (0, 0)
    assert [e.split(":")[0] for e in result.errors] == ["line 3", "line 5", "line 6"]
    assert "exactly one @" in result.errors[0]
    assert listed(spool) == []


def test_import_reports_too_many_fields_and_bad_header(spool: Spool) -> None:
    """Four fields without a header, or an unknown header column, are line errors."""
    assert suppress.import_csv(spool, "a@x.test,t,r,extra\n", now_s=T0_S).errors == [
        "line 1: expected address[,tenant[,reason]], got 4 fields"]
    errors = suppress.import_csv(spool, "email,colour\na@x.test,red\n", now_s=T0_S).errors
    assert len(errors) == 1 and errors[0].startswith("line 1: header") and "colour" in errors[0]
    assert suppress.import_csv(spool, 'a@x.test,"unterminated\n', now_s=T0_S).errors[0].startswith("line ")


def test_import_counts_existing_and_repeated_addresses_as_unchanged(spool: Spool) -> None:
    """Re-importing is idempotent: existing entries and in-file repeats are unchanged, not errors."""
    put(spool, "", "bob@x.test", reason="bounced")
    result = suppress.import_csv(spool, "bob@x.test\nBOB@x.test\nnew@x.test\nnew@x.test\n", now_s=T0_S)
    assert result == suppress.ImportResult(added=1, unchanged=3, errors=[])
    with spool.read() as txn:
        entry = suppress.is_suppressed(txn, spool, "", "bob@x.test")
    assert entry is not None and entry.reason == "bounced"


def test_export_then_import_round_trips_every_field(spool: Spool, tmp_path: Path) -> None:
    """export_csv output imported into an empty spool gives the same entries (tenant, reason, source, date)."""
    put(spool, "acme", "bob@x.test", reason='invalid_recipient: 550 5.1.1 "no, really"')
    put(spool, "", "jörg@xn--bcher-kva.example", reason="imported")
    with spool.write() as txn:
        suppress.add(txn, spool, "globex", "carol@x.test", reason="r", source="0000000000000002.1",
                     added_at_s=T0_S + 3600)
    text = suppress.export_csv(spool)
    assert text.splitlines()[0] == "address,tenant,reason,source,added_at"
    other = Spool(tmp_path / "other", map_size_mb=64)
    try:
        assert suppress.import_csv(other, text, now_s=0).errors == []
        with spool.read() as a, other.read() as b:
            assert list(suppress.iterate(a, spool, limit=None)) == list(suppress.iterate(b, other, limit=None))
        assert suppress.export_csv(other) == text
    finally:
        other.close()


def test_export_handler_pages_concatenate_to_one_file(spool: Spool) -> None:
    """suppress_export pages: header on the first page only; the pages joined equal export_csv."""
    put(spool, "acme", *[f"u{i}@x.test" for i in range(7)])
    pages, after = [], None
    while True:
        req = {"tenant": "acme", "limit": 3} | ({"after": after} if after else {})
        resp = suppress.handle_suppress_export(spool, req)
        pages.append(resp["csv"])
        after = resp["next"]
        if after is None:
            break
    assert len(pages) == 3
    assert "".join(pages) == suppress.export_csv(spool, "acme")


# -- control handlers -----------------------------------------------------------------------------
def test_add_and_remove_handlers_validate_and_write_audit_events(spool: Spool) -> None:
    """suppress_add/remove answer with a message, refuse bad input, and log Suppressed/Unsuppressed events."""
    resp = suppress.handle_suppress_add(spool, {"address": "Bob@X.test", "tenant": "acme", "reason": "asked"},
                                        clock=clock)
    assert resp["added"] is True and resp["message"] == "bob@x.test suppressed for tenant 'acme'"
    again = suppress.handle_suppress_add(spool, {"address": "bob@x.test", "tenant": "acme"}, clock=clock)
    assert again["added"] is False and "already suppressed" in again["message"] and "(asked)" in again["message"]
    for bad in ({}, {"address": "nope"}, {"address": "a@x.test", "tenant": 3}, {"address": "a@x.test", "reason": 1}):
        with pytest.raises(ValueError):
            suppress.handle_suppress_add(spool, bad, clock=clock)
    assert suppress.handle_suppress_remove(spool, {"address": "BOB@x.test", "tenant": "acme"}, clock=clock) == {
        "removed": True, "message": "bob@x.test removed from the suppression list for tenant 'acme'"}
    assert suppress.handle_suppress_remove(spool, {"address": "bob@x.test", "tenant": "acme"},
                                           clock=clock)["removed"] is False
    with spool.read() as txn:
        events = spool.events_after(txn, 0)
    assert [(e["type"], e["tenant"], e["recipient"], e["reason"], e["source"]) for e in events] == [
        ("Suppressed", "acme", "Bob@X.test", "asked", "control"),
        ("Unsuppressed", "acme", "BOB@x.test", "asked", "control")]


def test_import_handler_raises_with_line_numbers_and_writes_nothing(spool: Spool) -> None:
    """suppress_import refuses a file with bad lines as a whole, naming each line (capped)."""
    bad = "".join(f"bad{i}\n" for i in range(30))
    with pytest.raises(ValueError) as info:
        suppress.handle_suppress_import(spool, {"csv": "good@x.test\n" + bad}, clock=clock)
    text = str(info.value)
    assert text.startswith("nothing imported: 30 bad line(s)\nline 2: ") and text.endswith("... and 10 more")
    assert listed(spool) == []
    resp = suppress.handle_suppress_import(spool, {"csv": "good@x.test\n", "tenant": "acme"}, clock=clock)
    assert resp == {"added": 1, "unchanged": 0, "message": "1 address(es) added, 0 already suppressed"}
    assert listed(spool) == [("acme", "good@x.test")]
    with pytest.raises(ValueError):
        suppress.handle_suppress_import(spool, {}, clock=clock)
