"""PowerMTA-style CSV export: field names, type codes, the documented mapping, and bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from mta_engine.obs.csv_export import FIELDS, export, register, to_row

T = 1_700_000_000.0

DELIVERY = {"type": "Delivery", "timestamp": T, "queue_id": "0000000000000001.0", "recipient": "a@d001.test",
            "sender": "s@x.test", "campaign": "spring", "tenant": "acme", "site": "mx0.sites.test",
            "mx": "mx0.sites.test", "ip": "127.0.0.31", "code": 250, "enhanced": "2.0.0", "response": "OK queued",
            "phase": "data", "attempt": 1, "latency_s": 2.5, "event_seq": 7}


def test_header_is_powermta_field_list() -> None:
    """The header row is PowerMTA's acct field names, in order."""
    out = io.StringIO()
    export([], out)
    assert out.getvalue() == ",".join(FIELDS) + "\r\n"
    assert FIELDS[:5] == ["type", "timeLogged", "timeQueued", "orig", "rcpt"] and FIELDS[-1] == "vmtaPool"


def test_delivery_maps_to_d_record() -> None:
    """A Delivery is a `d` record: relayed, smtp diag, dsnMta with the MX address, queue domain/site."""
    row = to_row(DELIVERY)
    assert row is not None
    assert {k: row[k] for k in FIELDS} == {
        "type": "d", "timeLogged": "2023-11-14 22:13:20+0000", "timeQueued": "2023-11-14 22:13:17+0000",
        "orig": "s@x.test", "rcpt": "a@d001.test", "orcpt": "", "dsnAction": "relayed", "dsnStatus": "2.0.0",
        "dsnDiag": "smtp;250 OK queued", "dsnMta": "mx0.sites.test (127.0.0.31)", "bounceCat": "",
        "srcType": "", "srcMta": "", "dlvType": "smtp", "dlvSourceIp": "", "dlvDestinationIp": "127.0.0.31",
        "dlvEsmtpAvailable": "", "dlvSize": "", "vmta": "mx0.sites.test", "jobId": "spring", "envId": "",
        "queue": "d001.test/mx0.sites.test", "vmtaPool": "acme"}


@pytest.mark.parametrize(("event", "expect"), [
    ({"type": "Bounce", "code": 550, "enhanced": "5.1.1", "category": "invalid_recipient"},
     {"type": "b", "dsnAction": "failed", "dsnStatus": "5.1.1", "bounceCat": "bad-mailbox"}),
    ({"type": "TransientFailure", "code": 451, "enhanced": None, "category": "greylisted"},
     {"type": "t", "dsnAction": "delayed", "dsnStatus": "4.0.0", "bounceCat": "policy-related"}),
    ({"type": "Expiration", "code": 0, "enhanced": None, "response": "too old", "mx": None},
     {"type": "b", "dsnStatus": "4.4.7", "bounceCat": "message-expired", "dsnDiag": "too old", "dlvType": ""}),
    ({"type": "AdminBounce", "code": 0, "enhanced": None, "category": None},
     {"type": "b", "dsnStatus": "5.0.0", "bounceCat": "other"}),
    ({"type": "Bounce", "code": 550, "category": "something_new"}, {"bounceCat": "other"}),
])
def test_failures_map_to_b_and_t(event: dict[str, object], expect: dict[str, str]) -> None:
    """Bounce, Expiration and AdminBounce are `b`; TransientFailure is `t`; categories map to PowerMTA's."""
    row = to_row({**DELIVERY, **event})
    assert row is not None
    assert {k: row[k] for k in expect} == expect


def test_reception_maps_to_r_record() -> None:
    """A Reception is an `r` record: srcType api (local for a generated DSN), size, no delivery fields."""
    ev = {"type": "Reception", "timestamp": T, "queue_id": "0000000000000002", "sender": "s@x.test",
          "recipient_count": 3, "campaign": "c", "tenant": "t", "size": 1234, "event_seq": 1}
    row = to_row(ev)
    assert row is not None
    assert (row["type"], row["srcType"], row["dlvSize"], row["timeQueued"], row["dsnStatus"], row["queue"]) == \
        ("r", "api", "1234", "2023-11-14 22:13:20+0000", "", "")
    assert to_row({**ev, "dsn_for": "0000000000000001"})["srcType"] == "local"  # type: ignore[index]


def test_types_without_powermta_code_are_skipped() -> None:
    """SiteModeChange and DsnFailed have no PowerMTA type: skipped and counted."""
    lines = [json.dumps(e).encode() for e in (DELIVERY, {"type": "SiteModeChange", "site": "s"},
                                               {"type": "DsnFailed", "queue_id": "x"})]
    out = io.StringIO()
    assert export(lines, out) == (1, 2)


def test_malformed_lines_are_reported_and_skipped() -> None:
    """A line that is not a JSON object is named on stderr with its number; the rest is exported."""
    out, err = io.StringIO(), io.StringIO()
    lines = [b"{not json", b"", b"[1,2]", json.dumps(DELIVERY).encode()]
    assert export(lines, out, name="acct.jsonl", errors=err) == (1, 0)
    assert "acct.jsonl:1: not JSON" in err.getvalue() and "acct.jsonl:3: not a JSON object" in err.getvalue()


def test_values_with_commas_and_quotes_are_quoted() -> None:
    """Reply text with commas, quotes and newlines round-trips through a CSV reader."""
    text = 'mailbox "full", try\nlater'
    out = io.StringIO()
    export([json.dumps({**DELIVERY, "type": "Bounce", "response": text}).encode()], out, with_ids=True)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["dsnDiag"] == f"smtp;250 {text}" and rows[0]["eventSeq"] == "7"
    assert rows[0]["queueId"] == "0000000000000001.0"


def test_cli_reads_files_in_order_with_one_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mta-engine export-csv A B --types d` prints one header and the d rows of both files."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(DELIVERY) + "\n" + json.dumps({**DELIVERY, "type": "Bounce"}) + "\n")
    b.write_text(json.dumps({**DELIVERY, "recipient": "z@d002.test"}) + "\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["export-csv", str(a), str(b), "--types", "d"])
    assert args.func(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["rcpt"] for r in rows] == ["a@d001.test", "z@d002.test"]
    args = parser.parse_args(["export-csv", str(tmp_path / "missing.jsonl")])
    assert args.func(args) == 1
    assert "cannot read" in capsys.readouterr().err
