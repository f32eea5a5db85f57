"""Recipient state transitions in the spool: the one place that decides a recipient's fate.

Contract: called only by the manager, on its spool-writer thread, inside one write transaction
per tick. Takes ``now_ms`` as an argument. Each function changes the recipient record, the due
index and the message's remaining count together, and appends the matching
accounting event to the outbox in the same transaction, so a state change and its log line are
never separated. A final outcome (Delivery, Bounce, Expiration) is appended exactly once: the
recipient record is removed in the same transaction. A recipient in flight keeps its due entry
(the manager remembers it and skips it while a worker has it), so nothing is written when a
worker takes a job, and a restart finds it due.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import random
from typing import Any

import lmdb

from ..errors import SpoolCorrupt
from ..spool import records, suppress
from ..spool.records import Message, Recipient, State
from ..spool.store import Spool
from ..dsn.classify import Classification, Classifier
from ..dsn.report import DsnRequest, RecipientReport, build_dsn, select_recipients
from ..dsn.status import status_for
from ..ingest.commit import spool_message
from ..ingest.inject import Submission
from ..template.render import MessageTemplate
from .backoff import is_expired
from .retry import RetryPolicy

_PHASES = {"greeting": "connect", "payload": "data"}
"""Our phase names that the classifier knows under another name."""

FINAL_TYPES = {State.DELIVERED: "Delivery", State.BOUNCED: "Bounce", State.EXPIRED: "Expiration",
               State.CANCELLED: "AdminBounce"}


@dataclass(slots=True)
class Result:
    """One recipient's outcome of one attempt, as reported by a worker (or made by the manager)."""

    msg_id: int
    index: int
    code: int
    """SMTP reply code; 0 = returned unattempted (drain, worker death): no attempt is counted."""
    enhanced: str | None = None
    text: str = ""
    phase: str = ""
    site: str | None = None
    mx: str | None = None
    ip: str | None = None
    unknown: bool = False
    """The connection died after the final dot: the message may have been delivered."""
    max_age_s: float | None = None
    """The destination's max age when it differs from the default."""
    tls: dict[str, Any] | None = None
    """TLS of the session: version, cipher, verified, peer_cn (None = plaintext)."""
    address: str | None = None
    attempts: int = 0
    dkey: bytes | None = None
    """The recipient's due entry while it is in flight, from the manager's bookkeeping: deleted
    when the outcome is applied, and it lets a delivery be applied without reading the record."""


@dataclass(slots=True)
class Delivered:
    """Recipients in flight of one message that one 2xx reply delivered (one transaction, or
    consecutive ones with the same reply): applied without reading their records and logged as
    one grouped event (``records.GROUP_MEMBERS``). Every other outcome is a ``Result``."""

    msg_id: int
    members: list[tuple[int, str, int, bytes]]
    """(recipient index, address, attempts before this one, its due entry)"""
    code: int
    enhanced: str | None
    text: str
    phase: str
    site: str | None
    mx: str | None
    ip: str | None
    tls: dict[str, Any] | None = None
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class DsnPolicy:
    reporting_mta: str
    delay_after_s: float = 0.0
    """Send an Action: delayed DSN once a recipient has waited this long (0 = never)."""
    delay_when_notify_absent: bool = False
    """Delayed DSNs also when the submission gave no NOTIFY (RFC 3461 leaves it to the MTA)."""


@dataclass(slots=True)
class TickStats:
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    expired: int = 0
    returned: int = 0
    unknown: int = 0
    corrupt: int = 0
    sites: dict[str, list[int]] = field(default_factory=dict)
    """site -> [delivered, deferred, bounced] in this tick."""


class QueueWriter:
    """Applies outcomes to the spool. One instance, owned by the manager."""

    def __init__(self, spool: Spool, *, retry: RetryPolicy, max_age_s: float, lease_s: float,
                 rng: random.Random | None = None, classifier: Classifier | None = None,
                 dsn: DsnPolicy | None = None, unknown_policy: str = "retry") -> None:
        self.spool = spool
        self.unknown_policy = unknown_policy
        """After the final dot with no reply: "retry" (a possible duplicate) or "delivered" (a possible loss)."""
        self.dsn = dsn
        self._dsn_pending: dict[int, list[tuple[str, Recipient, Result, dict[str, Any]]]] = {}
        self.classifier = classifier or Classifier.default()
        self.retry = retry
        self.rng = rng or random.Random()
        self.max_age_s = max_age_s
        self.lease_ms = int(lease_s * 1000)
        self._db = spool.dbs
        self._msgs: dict[int, Message | None] = {}

    # -- messages ---------------------------------------------------------------------------
    def message(self, txn: lmdb.Transaction, msg_id: int) -> Message | None:
        """The message record (cached); None when it is gone or corrupt (moved aside)."""
        msg = self._msgs.get(msg_id)
        if msg is None:
            raw = txn.get(records.u64(msg_id), db=self._db["msg"])
            if raw is None:
                return None
            try:
                msg = Message.decode(raw)
            except SpoolCorrupt:
                return None
            if len(self._msgs) > 100_000:
                self._msgs.clear()
            self._msgs[msg_id] = msg
        return msg

    def cached(self, msg_id: int) -> Message | None:
        """The message record if this writer has it in memory (no spool access)."""
        return self._msgs.get(msg_id)

    def forget(self, msg_id: int) -> None:
        self._msgs.pop(msg_id, None)

    # -- the tick's transaction -------------------------------------------------------------
    def apply_delivered(self, txn: lmdb.Transaction, groups: list[Delivered], now_ms: int, stats: TickStats,
                        events: list[dict[str, Any]]) -> None:
        """Apply deliveries of recipients in flight: delete each record and its due entry;
        one event per group (a plain one for a single recipient). A recipient already gone
        (a duplicate report, or cancelled meanwhile) is not counted or logged again."""
        rcpt_db, due_db = self._db["rcpt"], self._db["due"]
        delete = txn.delete
        touched: dict[int, int] = {}
        for g in groups:
            msg_id = g.msg_id
            each = []
            for index, address, attempts, dkey in g.members:
                gone = not delete(dkey[8:], db=rcpt_db)  # the due key ends with the recipient key
                delete(dkey, db=due_db)
                if not gone:
                    each.append([index, address, attempts + 1])
            msg = self.message(txn, msg_id)
            if msg is None or not each:
                continue
            n = len(each)
            stats.delivered += n
            stats.sites.setdefault(g.site or "-", [0, 0, 0])[0] += n
            touched[msg_id] = touched.get(msg_id, 0) + n
            if n == 1:
                index, address, attempt = each[0]
                events.append(self._event("Delivery", msg, records.rcpt_id(msg_id, index), address, attempt, g, now_ms))
                continue
            ev = {"type": "Delivery", "timestamp": now_ms / 1000.0, "queue_id": records.queue_id(msg_id)}
            self._shared_fields(ev, msg, g, now_ms)
            ev[records.GROUP_MEMBERS] = each
            events.append(ev)
        self._finish_messages(txn, touched)

    def _drop_due(self, txn: lmdb.Transaction, r: Result) -> None:
        """Delete the due entry of a recipient whose outcome is being applied (when known)."""
        if r.dkey is not None:
            txn.delete(r.dkey, db=self._db["due"])

    def requeue_inflight(self, txn: lmdb.Transaction, now_ms: int) -> int:
        """Manager start: every recipient leased in the ``inflight`` table is due now. Only a spool
        written before leases moved to the manager's memory has such entries; since then a recipient
        in flight keeps its due entry, so it is due at once after a restart anyway."""
        n = 0
        with txn.cursor(db=self._db["inflight"]) as cur:
            items = list(cur.iternext())
        for rkey, raw in items:
            msg_id, index = records.split_rcpt_key(rkey)
            txn.delete(records.due_key(records.from_u64(raw), msg_id, index), db=self._db["due"])
            txn.put(records.due_key(now_ms, msg_id, index), b"", db=self._db["due"])
            txn.delete(rkey, db=self._db["inflight"])
            n += 1
        return n

    def apply(self, txn: lmdb.Transaction, results: list[Result], now_ms: int, stats: TickStats,
              events: list[dict[str, Any]]) -> None:
        """Apply worker results: delivered, bounced, deferred/expired, or returned unattempted. The
        deliveries the manager could group (``Delivered``) go through ``apply_delivered`` instead."""
        rcpt_db, due_db = self._db["rcpt"], self._db["due"]
        touched: dict[int, int] = {}
        for r in results:
            rkey = records.rcpt_key(r.msg_id, r.index)
            raw = txn.get(rkey, db=rcpt_db)
            if raw is None:  # already final (duplicate report) or cancelled meanwhile
                self._drop_due(txn, r)
                continue
            try:
                rec = Recipient.decode(raw)
            except SpoolCorrupt:
                self._drop_due(txn, r)
                self.spool.move_aside(txn, "rcpt", rkey)
                stats.corrupt += 1
                continue
            msg = self.message(txn, r.msg_id)
            self._drop_due(txn, r)
            if msg is None:  # its message record is corrupt: keep the recipient aside, not lost
                self.spool.move_aside(txn, "rcpt", rkey)
                stats.corrupt += 1
                continue
            if r.code == 0:
                txn.put(records.due_key(now_ms, r.msg_id, r.index), b"", db=due_db)
                stats.returned += 1
                continue
            rec.attempts += 1
            rec.last_code, rec.last_enhanced, rec.last_text = r.code, r.enhanced, r.text
            site_counts = stats.sites.setdefault(r.site or "-", [0, 0, 0])
            verdict = None if 200 <= r.code < 300 or (r.unknown and self.unknown_policy == "delivered") \
                else self.classify(r)
            if verdict is None:
                state = State.DELIVERED
                stats.delivered += 1
                stats.unknown += r.unknown
                site_counts[0] += 1
            elif verdict.permanence == "permanent":
                state = State.BOUNCED
                stats.bounced += 1
                site_counts[2] += 1
            elif is_expired(msg.created_ms / 1000, now_ms / 1000, r.max_age_s or self.max_age_s):
                state = State.EXPIRED
                stats.expired += 1
                site_counts[2] += 1
            else:
                state = State.QUEUED
                stats.deferred += 1
                stats.unknown += r.unknown
                site_counts[1] += 1
            event = self._event(FINAL_TYPES.get(state, "TransientFailure"), msg, records.rcpt_id(r.msg_id, r.index),
                                rec.address, rec.attempts, r, now_ms)
            if verdict is not None:
                event["category"], event["rule"] = str(verdict.category), verdict.rule
                event["permanence"] = "permanent" if state is not State.QUEUED else str(verdict.permanence)
            events.append(event)
            if state is State.BOUNCED and verdict is not None:  # STANDARDS B03/B04 decide in note_bounce
                suppressed = suppress.note_bounce(
                    txn, self.spool, tenant=msg.tenant, address=rec.address, category=str(verdict.category),
                    permanent=True, code=r.code, enhanced=r.enhanced, text=r.text, source=event["queue_id"],
                    now_ms=now_ms)
                if suppressed is not None:
                    events.append(suppressed)
            self._dsn_note(msg, rec, r, state, event, now_ms)
            if state is State.QUEUED:
                rec.state = State.QUEUED
                rec.due_ms = now_ms + int(self.retry.delay(rec.attempts, self.rng) * 1000)
                txn.put(rkey, rec.encode(), db=rcpt_db)
                txn.put(records.due_key(rec.due_ms, r.msg_id, r.index), b"", db=due_db)
            else:
                txn.delete(rkey, db=rcpt_db)
                touched[r.msg_id] = touched.get(r.msg_id, 0) + 1
        self._emit_dsns(txn, now_ms, events)
        self._finish_messages(txn, touched)

    # -- DSNs ---------------------------------------------------------------------------------
    def _dsn_note(self, msg: Message, rec: Recipient, r: Result, state: State, event: dict[str, Any],
                  now_ms: int) -> None:
        """Remember a failure (or a long delay) that the envelope sender should hear about."""
        pol = self.dsn
        if pol is None or not msg.dsn or msg.sender == "":  # never a DSN to the null sender (no loops)
            return
        if state in (State.BOUNCED, State.EXPIRED):
            action = "failed"
        elif state is State.QUEUED and pol.delay_after_s > 0 and not rec.delay_notified \
                and now_ms - msg.created_ms >= pol.delay_after_s * 1000:
            action = "delayed"
        else:
            return
        if not select_recipients(rec.notify, action, delay_by_default=pol.delay_when_notify_absent):
            return
        if action == "delayed":
            rec.delay_notified = True  # saved with the deferral
        self._dsn_pending.setdefault(r.msg_id, []).append((action, rec, r, event))

    def _emit_dsns(self, txn: lmdb.Transaction, now_ms: int, events: list[dict[str, Any]]) -> None:
        """One DSN per message per transaction, queued in the same transaction (exactly once)."""
        pending, self._dsn_pending = self._dsn_pending, {}
        for msg_id, items in pending.items():
            msg = self._msgs.get(msg_id)
            raw_body = txn.get(records.u64(msg_id), db=self._db["body"])
            if msg is None or raw_body is None or self.dsn is None:
                continue
            try:
                dsn_msg = self._build_dsn(msg_id, msg, raw_body, items, now_ms)
            except Exception as exc:  # a DSN we cannot build must not stop the queue
                events.append({"type": "DsnFailed", "timestamp": now_ms / 1000.0,
                               "queue_id": records.queue_id(msg_id), "error": repr(exc)})
                continue
            sub = Submission(sender="", spec={"raw": dsn_msg, "template": False},
                             recipients=[(msg.sender, None, None)], campaign=msg.campaign, tenant=msg.tenant,
                             priority=max(msg.priority, 5), dsn=False)
            dsn_id, reception = spool_message(self.spool, txn, sub, now_ms)
            reception["dsn_for"] = records.queue_id(msg_id)
            events.append(reception)
            for _, _, _, event in items:
                event["dsn"] = records.queue_id(dsn_id)

    def _build_dsn(self, msg_id: int, msg: Message, raw_body: bytes,
                   items: list[tuple[str, Recipient, Result, dict[str, Any]]], now_ms: int) -> str:
        pol = self.dsn
        assert pol is not None
        first = items[0][1]
        original = MessageTemplate(records.decode_body(raw_body)).render(
            address=first.address, name=first.name, variables=first.variables,
            message_id=f"{records.rcpt_id(msg_id, items[0][2].index)}@{pol.reporting_mta}")
        reports = []
        for action, rec, r, _ in items:
            code_ok = 200 <= r.code < 600
            reports.append(RecipientReport(
                final_recipient=rec.address, action=action,
                status=status_for(r.code, r.enhanced) if code_ok else ("5.4.7" if action == "failed" else "4.4.7"),
                original_recipient=rec.orcpt, remote_mta=r.mx,
                diagnostic_code=f"{r.code} {r.enhanced + ' ' if r.enhanced else ''}{r.text}" if code_ok else r.text,
                last_attempt_s=now_ms / 1000.0,
                will_retry_until_s=(msg.created_ms / 1000.0 + (r.max_age_s or self.max_age_s))
                if action == "delayed" else None))
        req = DsnRequest(reporting_mta=pol.reporting_mta, envelope_sender=msg.sender, original_message=original,
                         recipients=tuple(reports), arrival_s=msg.created_ms / 1000.0, envid=msg.envid,
                         ret=msg.ret or "HDRS", message_id_domain=pol.reporting_mta)
        return build_dsn(req, now_s=now_ms / 1000.0,
                         message_id=f"{records.queue_id(msg_id)}.{now_ms}.dsn@{pol.reporting_mta}").decode(
                             "utf-8", "replace")

    def expire_due(self, txn: lmdb.Transaction, items: list[tuple[bytes, int, int]], now_ms: int,
                   stats: TickStats, events: list[dict[str, Any]], *, code: int, enhanced: str, text: str,
                   phase: str, permanent: bool, site: str | None = None, max_age_s: float | None = None) -> None:
        """Fail due recipients without a connection (DNS failure, max age): bounce or defer."""
        results = [Result(m, i, code if permanent else 451, enhanced, text, phase, site, max_age_s=max_age_s)
                   for _, m, i in items]
        for dkey, m, i in items:  # not leased: their due entries go here
            txn.delete(dkey, db=self._db["due"])
        self.apply(txn, results, now_ms, stats, events)

    def _finish_messages(self, txn: lmdb.Transaction, touched: dict[int, int]) -> None:
        for msg_id, n in touched.items():
            msg = self._msgs.get(msg_id)
            if msg is None:
                continue
            msg.remaining -= n
            mkey = records.u64(msg_id)
            if msg.remaining <= 0:
                txn.delete(mkey, db=self._db["msg"])
                txn.delete(mkey, db=self._db["body"])
                self.forget(msg_id)
            else:
                txn.put(mkey, msg.encode(), db=self._db["msg"])

    def classify(self, r: Result) -> Classification:
        """Bounce or defer: the classifier may overrule the first digit (RFC 5321 §4.5.3.1.10, B02)."""
        local = None
        phase: str | None = _PHASES.get(r.phase, r.phase)
        if r.phase == "dns":
            local = "null_mx" if r.enhanced == "5.1.10" else ("dns_nxdomain" if r.code >= 500 else "dns_servfail")
        elif r.phase == "connect" and r.enhanced in ("4.4.1", "4.4.4"):
            local = "connect_failed"
        elif r.unknown:
            local = "connection_lost"
        elif r.phase in ("queue", "worker"):
            phase = None
        if local is not None:
            return self.classifier.classify(None, None, r.text, None, local)
        return self.classifier.classify(r.code, r.enhanced, r.text, phase)

    def _event(self, type_: str, msg: Message, queue_id: str, address: str, attempt: int, r: Result | Delivered,
               now_ms: int) -> dict[str, Any]:
        """One recipient's event; its keys in the order of an expanded group's (``records.expand_group``)."""
        ev = {"type": type_, "timestamp": now_ms / 1000.0, "queue_id": queue_id, "recipient": address}
        self._shared_fields(ev, msg, r, now_ms)
        ev["attempt"] = attempt
        return ev

    @staticmethod
    def _shared_fields(ev: dict[str, Any], msg: Message, r: Result | Delivered, now_ms: int) -> None:
        """The fields of an event that every recipient of one reply shares."""
        ev.update(sender=msg.sender, campaign=msg.campaign, tenant=msg.tenant, site=r.site, mx=r.mx, ip=r.ip,
                  code=r.code, enhanced=r.enhanced, response=r.text, phase=r.phase,
                  latency_s=round((now_ms - msg.created_ms) / 1000.0, 3))
        if r.unknown:
            ev["unknown"] = True
        if r.tls:
            ev["tls_version"], ev["tls_cipher"] = r.tls.get("version"), r.tls.get("cipher")
            ev["tls_verified"] = r.tls.get("verified")
            if r.tls.get("dane"):  # RFC 7672: authenticated by this TLSA record
                ev["tls_dane"], ev["tls_dane_record"] = True, r.tls.get("dane_record")
            if r.tls.get("mta_sts"):  # RFC 8461: the MX host and its certificate checked against the policy
                ev["tls_mta_sts"] = r.tls["mta_sts"]
