"""`mta-engine export-csv`: the accounting log (JSON lines) as PowerMTA-style accounting CSV.

Contract: an operator tool; reads only the named files (or stdin) and writes CSV to stdout. The
header row is PowerMTA's field names (``FIELDS``); ``--with-ids`` appends ``queueId`` and
``eventSeq``. One CSV row per per-recipient record; records PowerMTA has no type for
(SiteModeChange, DsnFailed) are skipped and counted on stderr. Malformed lines are reported on
stderr with their line number and skipped; exit status is 0 once the input is read, 1 when a file
cannot be read. Pure mapping in ``to_row``; no clock, no network.

Mapping (ours -> PowerMTA):

============ ================================================================================
type         Reception r; Delivery d; Bounce, Expiration, AdminBounce b; TransientFailure t
timeLogged   ``timestamp`` as ``YYYY-MM-DD HH:MM:SS+0000`` (UTC)
timeQueued   Reception: ``timestamp``; others: ``timestamp - latency_s`` (when the message was queued)
orig         ``sender`` (the envelope MAIL FROM)
rcpt         ``recipient``
orcpt        ``orcpt`` when the event carries it (RFC 3461 ORCPT), else empty
dsnAction    d relayed; b failed; t delayed; r empty
dsnStatus    ``enhanced`` (RFC 3463); without one: the reply class as X.0.0 (Expiration: 4.4.7)
dsnDiag      ``smtp;<code> <response>`` when there was a reply, else the response text
dsnMta       ``mx`` host name, with `` (<ip>)`` when the MX address is known
bounceCat    our bounce ``category`` -> PowerMTA category (``BOUNCE_CATEGORIES``);
             Expiration -> message-expired; empty on d and r records
srcType      r: ``api`` (HTTP inject API), or ``local`` for a DSN the engine generated (``dsn_for``);
             empty on other records (the event does not say how the message arrived)
srcMta       empty (the engine has no SMTP submission source)
dlvType      ``smtp`` on d/b/t records that reached an MX (``mx`` set), else empty
dlvSourceIp  ``source_ip`` when the event carries it, else empty
dlvDestinationIp  ``ip`` (the MX address the session used)
dlvEsmtpAvailable ``esmtp`` when the event carries it (extensions offered), else empty
dlvSize      ``size`` (Reception: the message size)
vmta         ``site`` (the engine's delivery queue key: the set of MX hosts)
jobId        ``campaign``
envId        ``envid`` when the event carries it (RFC 3461 ENVID), else empty
queue        recipient domain + ``/`` + ``site`` (PowerMTA: domain/vmta); r: empty
vmtaPool     ``tenant``
============ ================================================================================
"""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import IO, Any, Iterable, Iterator

import orjson

__all__ = ["FIELDS", "ID_FIELDS", "TYPE_CODES", "BOUNCE_CATEGORIES", "to_row", "export", "register", "run"]

FIELDS = ["type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt", "dsnAction", "dsnStatus", "dsnDiag",
          "dsnMta", "bounceCat", "srcType", "srcMta", "dlvType", "dlvSourceIp", "dlvDestinationIp",
          "dlvEsmtpAvailable", "dlvSize", "vmta", "jobId", "envId", "queue", "vmtaPool"]
ID_FIELDS = ["queueId", "eventSeq"]

TYPE_CODES = {"Reception": "r", "Delivery": "d", "Bounce": "b", "Expiration": "b", "AdminBounce": "b",
              "TransientFailure": "t"}
_ACTIONS = {"d": "relayed", "b": "failed", "t": "delayed", "r": ""}

BOUNCE_CATEGORIES = {
    "invalid_recipient": "bad-mailbox", "mailbox_full": "quota-issues", "inactive_mailbox": "inactive-mailbox",
    "spam_block": "spam-related", "reputation_block": "spam-related", "policy_block": "policy-related",
    "rate_limited": "policy-related", "greylisted": "policy-related", "auth_or_dmarc_failure": "policy-related",
    "message_too_large": "content-related", "content_rejected": "content-related", "dns_failure": "bad-domain",
    "relay_denied": "relaying-issues", "routing_error": "routing-errors", "protocol_error": "protocol-errors",
    "transient_server_error": "other", "other": "other",
}
"""``dsn.classify.BounceClass`` values -> PowerMTA bounce categories."""


def _time(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S+0000")


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _status(ev: dict[str, Any], kind: str) -> str:
    if ev.get("enhanced"):
        return str(ev["enhanced"])
    if ev.get("type") == "Expiration":
        return "4.4.7"
    code = ev.get("code")
    if isinstance(code, int) and 200 <= code < 600:
        return f"{code // 100}.0.0"
    return {"d": "2.0.0", "b": "5.0.0", "t": "4.0.0"}.get(kind, "")


def to_row(ev: dict[str, Any]) -> dict[str, str] | None:
    """One accounting event as a PowerMTA CSV row (field -> text); None for types PowerMTA lacks."""
    kind = TYPE_CODES.get(str(ev.get("type")))
    if kind is None:
        return None
    ts = ev.get("timestamp")
    queued = ts
    if kind != "r" and isinstance(ts, (int, float)) and isinstance(ev.get("latency_s"), (int, float)):
        queued = ts - ev["latency_s"]
    rcpt = _text(ev.get("recipient"))
    site = _text(ev.get("site"))
    code, response = ev.get("code"), _text(ev.get("response"))
    diag = f"smtp;{code} {response}".rstrip() if isinstance(code, int) and code else response
    mx, ip = _text(ev.get("mx")), _text(ev.get("ip"))
    category = ""
    if kind == "b":
        category = "message-expired" if ev.get("type") == "Expiration" else \
            BOUNCE_CATEGORIES.get(_text(ev.get("category")), "other")
    elif kind == "t":
        category = BOUNCE_CATEGORIES.get(_text(ev.get("category")), "")
    domain = rcpt.rpartition("@")[2] if "@" in rcpt else ""
    return {
        "type": kind, "timeLogged": _time(ts), "timeQueued": _time(queued),
        "orig": _text(ev.get("sender")), "rcpt": rcpt, "orcpt": _text(ev.get("orcpt")),
        "dsnAction": _ACTIONS[kind], "dsnStatus": "" if kind == "r" else _status(ev, kind),
        "dsnDiag": "" if kind == "r" else diag, "dsnMta": f"{mx} ({ip})" if mx and ip else mx,
        "bounceCat": category,
        "srcType": ("local" if ev.get("dsn_for") else "api") if kind == "r" else "", "srcMta": "",
        "dlvType": "smtp" if kind != "r" and mx else "", "dlvSourceIp": _text(ev.get("source_ip")),
        "dlvDestinationIp": ip, "dlvEsmtpAvailable": _text(ev.get("esmtp")), "dlvSize": _text(ev.get("size")),
        "vmta": site, "jobId": _text(ev.get("campaign")), "envId": _text(ev.get("envid")),
        "queue": f"{domain}/{site}" if kind != "r" and domain else "", "vmtaPool": _text(ev.get("tenant")),
        "queueId": _text(ev.get("queue_id")), "eventSeq": _text(ev.get("event_seq")),
    }


def _events(lines: Iterable[bytes], name: str, errors: IO[str]) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            print(f"mta-engine export-csv: {name}:{n}: not JSON ({exc}); skipped", file=errors)
            continue
        if not isinstance(ev, dict):
            print(f"mta-engine export-csv: {name}:{n}: not a JSON object; skipped", file=errors)
            continue
        yield ev


def export(lines: Iterable[bytes], out: IO[str], *, name: str = "-", with_ids: bool = False,
           types: frozenset[str] | None = None, header: bool = True, errors: IO[str] = sys.stderr) -> tuple[int, int]:
    """Write CSV rows for the JSON lines; returns (rows written, records skipped for their type).
    ``types`` keeps only these PowerMTA type codes (e.g. {"d", "b"})."""
    fields = FIELDS + ID_FIELDS if with_ids else FIELDS
    w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\r\n")
    if header:
        w.writeheader()
    rows = skipped = 0
    for ev in _events(lines, name, errors):
        row = to_row(ev)
        if row is None:
            skipped += 1
            continue
        if types and row["type"] not in types:
            continue
        w.writerow(row)
        rows += 1
    return rows, skipped


def run(args: argparse.Namespace) -> int:
    types = frozenset(t.strip() for t in args.types.split(",") if t.strip()) if args.types else None
    total = skipped = 0
    status = 0
    header = True
    for path in args.files:
        try:
            f: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")
        except OSError as exc:
            print(f"mta-engine export-csv: cannot read {path}: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        with f if path != "-" else nullcontext(f):
            n, s = export(f, sys.stdout, name=path, with_ids=args.with_ids, types=types, header=header)
        header = False
        total, skipped = total + n, skipped + s
    sys.stdout.flush()
    if skipped:
        print(f"mta-engine export-csv: {skipped} record(s) without a PowerMTA type skipped", file=sys.stderr)
    return status


def register(subparsers: Any) -> None:
    """Add the ``export-csv`` subcommand to ``mta-engine``'s subparsers."""
    p = subparsers.add_parser(
        "export-csv", help="convert the accounting log to PowerMTA-style accounting CSV (stdout)",
        description="Reads accounting JSON lines (files in order, or - for stdin) and writes PowerMTA-style "
                    "accounting CSV with a header row to stdout. Rotated logs can be given oldest first.")
    p.add_argument("files", nargs="+", metavar="ACCOUNTING.jsonl", help="accounting log file(s), or - for stdin")
    p.add_argument("--types", metavar="CODES", help="keep only these PowerMTA types, comma-separated (e.g. d,b)")
    p.add_argument("--with-ids", action="store_true", help="append queueId and eventSeq columns")
    p.set_defaults(func=run)
