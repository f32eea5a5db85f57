"""The inbound listener: out-of-band bounces and feedback-loop reports, recorded as OOB and Feedback events.

Contract: faces remote MTAs (it is the MX of the bounce/return-path domain and the inbox of the
FBL address), inside the ingest process's event loop, built on aiosmtpd like the submission
listener. It accepts mail only for ``[inbound] domains`` (others: ``550 5.7.1``); any sender,
the null sender included (RFC 3464 DSNs come from ``<>``). Each message is parsed on a helper
thread (``read_report``: pure) as an ARF report (``dsn/arf.py``), an RFC 3464 DSN or a
non-standard bounce (``dsn/oob.py``). A report is answered ``250`` only after its events are in
a synced group commit (``GroupCommitter.submit_op``, shared with submissions); a failed commit
answers ``451 4.3.0`` so the remote MTA retries.

Correlation (``report_events``, inside the commit): the references found (the VERP address we
received it at, then the returned original's Return-Path and Message-ID, see ``dsn/verp.py``)
are looked up in the origin index (``spool/origin.py``). A found message gives the tenant,
campaign and sender, and with a recipient index the address we sent to. Effects: one ``OOB``
event per failed or delayed recipient and one ``Feedback`` event per report, in the outbox (so
the manager writes them to the accounting log and the webhooks process sends them). A correlated
permanent ``invalid_recipient``/``inactive_mailbox`` OOB, or a correlated ``abuse`` complaint,
adds the address to the tenant's suppression list (``Suppressed`` event). Uncorrelated reports
are logged but never suppress (no tenant to suppress for, and nothing vouches for them).

Garbage: a message that is neither a report nor a bounce (spam to the bounce domain, an
auto-reply, a DSN with only ``delivered`` actions) is answered ``250`` and discarded, counted
and logged (``inbound_report_unparsable`` / ``inbound_report_ignored``): refusing it would only
make the remote MTA retry, or bounce to a forged sender. Never decides delivery.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from ..config import InboundConfig
from ..dsn.arf import FeedbackReport, parse_arf
from ..dsn.classify import Classification, Classifier
from ..dsn.oob import OobReport, classify, clean, parse_dsn, parse_message, parse_text_bounce
from ..dsn.verp import RecipientRef, parse_verp
from ..errors import ConfigError
from ..model import address_problem
from ..spool import suppress
from ..spool.origin import Origin, OriginIndex
from ..spool.store import VERP_KEY
from .listener import DrainingListener
from .smtp_submit import COMMAND_CALL_LIMITS, SESSION_IDLE_TIMEOUT_S, EnhancedCodesSession, server_tls_context

if TYPE_CHECKING:
    import lmdb

    from ..spool.store import Spool
    from .commit import GroupCommitter

__all__ = ["Received", "read_report", "report_events", "InboundListener", "InboundSession", "start_inbound"]

log = structlog.get_logger("ingest.inbound")

MAX_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8: the minimum a server must accept
SCAN_TEXT_BYTES = 256 * 1024
"""Of the raw message, how much is searched for inline returned headers (Message-ID, Return-Path)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One inbound message, read: what it is and what it says (``read_report``)."""

    kind: str
    """``oob``, ``feedback``, ``ignored`` (a well-formed message that reports no failure) or ``unparsable``."""
    why: str
    refs: tuple[RecipientRef, ...] = ()
    oob: OobReport | None = None
    verdicts: tuple[Classification, ...] = ()
    """One per ``oob.recipients``."""
    feedback: FeedbackReport | None = None
    mail_from: str = ""
    subject: str = ""
    message_id: str = ""


def read_report(raw: bytes, *, mail_from: str, rcpt_tos: list[str], domains: frozenset[str],
                classifier: Classifier) -> Received:
    """Parse and classify one received message. Pure; never raises for any input."""
    mail_from = "" if mail_from.strip() in ("", "<>") else mail_from  # aiosmtpd keeps the null sender as "<>"
    try:
        msg = parse_message(raw)
    except Exception as exc:  # the stdlib parser is lenient; this is a last resort
        return Received("unparsable", f"not a MIME message: {exc!r}"[:200], mail_from=mail_from)
    text = raw[:SCAN_TEXT_BYTES].decode("utf-8", "replace")
    envelope_refs = tuple(r for r in (parse_verp(a, domains) for a in rcpt_tos) if r is not None)
    subject, message_id = clean(msg.get("Subject") or "", 200), clean(msg.get("Message-ID") or "", 200)

    def merged(found: tuple[RecipientRef, ...]) -> tuple[RecipientRef, ...]:
        return envelope_refs + tuple(r for r in found if r not in envelope_refs)

    feedback = parse_arf(msg, domains, text)
    if feedback is not None:
        return Received("feedback", "arf", merged(feedback.refs), feedback=feedback, mail_from=mail_from,
                        subject=subject, message_id=message_id)
    oob = parse_dsn(msg, domains, text)
    if oob is None:
        oob = parse_text_bounce(msg, mail_from, domains, text, ignore_domains=domains)
    if oob is None:
        return Received("unparsable", "neither a feedback report nor a bounce", merged(()), mail_from=mail_from,
                        subject=subject, message_id=message_id)
    if not oob.recipients:
        return Received("ignored", "a delivery status notification with no failed or delayed recipient",
                        merged(oob.refs), oob=oob, mail_from=mail_from, subject=subject, message_id=message_id)
    verdicts = tuple(classify(classifier, rs) for rs in oob.recipients)
    return Received("oob", oob.format, merged(oob.refs), oob=oob, verdicts=verdicts, mail_from=mail_from,
                    subject=subject, message_id=message_id)


# --- correlation and effects, inside the group commit -----------------------------------------

def _correlate(txn: lmdb.Transaction, spool: Spool, origin: OriginIndex | None,
               refs: tuple[RecipientRef, ...]) -> tuple[RecipientRef | None, Origin | None]:
    """The first reference signed by this spool's key (``dsn/verp.py``) that names a message
    still in the origin index, else the first signed one. Unsigned or wrongly signed references
    are ignored: queue ids are sequential, so without the tag anyone could name a real recipient."""
    key = txn.get(VERP_KEY, db=spool.dbs["meta"])
    signed = [r for r in refs if key is not None and r.signed_by(bytes(key))]
    if origin is not None:
        for ref in signed:
            found = origin.get(txn, ref.msg_id)
            if found is not None and (ref.index is None or ref.index < found.n_rcpt):
                return ref, found
    return (signed[0] if signed else None), None


def _usable(address: str | None) -> str | None:
    """``address`` if it can be a suppression key (a valid mailbox), else None."""
    if not address or len(address) > 320:
        return None
    return address if address_problem(address) is None else None


def _base(kind: str, now_ms: int, ref: RecipientRef | None, found: Origin | None, rep: Received) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": kind, "timestamp": now_ms / 1000.0,
                          "queue_id": ref.queue_id if ref is not None else None,
                          "correlation": ref.via if ref is not None and found is not None else "none",
                          "inbound_sender": rep.mail_from}
    if found is not None:
        ev.update(sender=found.sender, campaign=found.campaign, tenant=found.tenant)
    return ev


def _oob_events(txn: lmdb.Transaction, spool: Spool, origin: OriginIndex | None, rep: Received,
                now_ms: int) -> list[dict[str, Any]]:
    assert rep.oob is not None
    ref, found = _correlate(txn, spool, origin, rep.refs)
    stored = None
    if found is not None and ref is not None and ref.index is not None and origin is not None:
        stored = origin.address(txn, ref.msg_id, ref.index)
    events: list[dict[str, Any]] = []
    only = len(rep.oob.recipients) == 1
    for rs, verdict in zip(rep.oob.recipients, rep.verdicts):
        reported = rs.original_recipient or rs.final_recipient
        this_ref, address, member = ref, reported, None
        if stored is not None and (only or (reported or "").lower() == stored.lower()):
            address, member = stored, True  # the address we sent to, whatever the report says
        elif ref is not None and ref.index is not None and not only:
            this_ref = RecipientRef(ref.msg_id, None, ref.via)  # one of several: not the one referenced
        if member is None and found is not None and origin is not None and _usable(address):
            member = origin.contains(txn, found, address or "")
        ev = _base("OOB", now_ms, this_ref, found, rep)
        permanent = verdict.permanence == "permanent"
        ev.update(recipient=address, reported_recipient=rs.final_recipient if rs.final_recipient != address else None,
                  action=rs.action, code=rs.code, enhanced=rs.status, response=rs.diagnostic,
                  category=str(verdict.category), permanence=str(verdict.permanence), rule=verdict.rule,
                  format=rep.oob.format, reporting_mta=rep.oob.reporting_mta, remote_mta=rs.remote_mta)
        if member is False:
            ev["recipient_match"] = False  # not a recipient of that message: never suppressed
        events.append(ev)
        usable = _usable(address)
        if found is not None and usable and member is not False and rs.action == "failed":
            try:
                added = suppress.note_bounce(
                    txn, spool, tenant=found.tenant, address=usable, category=str(verdict.category),
                    permanent=permanent, code=rs.code or 0, enhanced=rs.status, text=rs.diagnostic,
                    source=f"oob:{ev['queue_id']}", now_ms=now_ms)
            except ValueError:  # tenant and address exceed the key size: cannot be listed
                added = None
            if added is not None:
                events.append(added)
    return events


def _feedback_recipient(fb: FeedbackReport) -> str | None:
    if len(fb.original_rcpt_to) == 1:
        return _usable(fb.original_rcpt_to[0])
    to = fb.original.to or ""
    if "," not in to:
        addr = to.rpartition("<")[2].rstrip(">").strip() if "<" in to else to.strip()
        return _usable(addr)
    return None


def _feedback_events(txn: lmdb.Transaction, spool: Spool, origin: OriginIndex | None, rep: Received,
                     now_ms: int) -> list[dict[str, Any]]:
    fb = rep.feedback
    assert fb is not None
    ref, found = _correlate(txn, spool, origin, rep.refs)
    address, member = _feedback_recipient(fb), None
    if found is not None and ref is not None and ref.index is not None and origin is not None:
        stored = origin.address(txn, ref.msg_id, ref.index)
        if stored is not None:
            address, member = stored, True  # reports often redact the complainer (RFC 6590)
    if member is None and found is not None and origin is not None and address:
        member = origin.contains(txn, found, address)
    ev = _base("Feedback", now_ms, ref, found, rep)
    ev.update(recipient=address, feedback_type=fb.feedback_type, user_agent=fb.user_agent, version=fb.version,
              source_ip=fb.source_ip, arrival_date=fb.arrival_date, reported_domain=fb.reported_domain,
              reporting_mta=fb.reporting_mta, original_mail_from=fb.original_mail_from,
              original_rcpt_to=list(fb.original_rcpt_to) or None, incidents=fb.incidents,
              subject=fb.original.subject)
    if member is False:
        ev["recipient_match"] = False
    events = [ev]
    if found is not None and address and member is not False and fb.is_complaint:
        added = suppress.note_complaint(txn, spool, tenant=found.tenant, address=address,
                                        feedback_type=fb.feedback_type, reporter=fb.user_agent,
                                        source=f"fbl:{ev['queue_id']}", now_ms=now_ms)
        if added is not None:
            events.append(added)
    return events


def report_events(spool: Spool, origin: OriginIndex | None, rep: Received, txn: lmdb.Transaction,
                  now_ms: int) -> list[dict[str, Any]]:
    """Correlate ``rep``, apply its suppressions in ``txn`` and return its accounting events."""
    if rep.kind == "oob":
        return _oob_events(txn, spool, origin, rep, now_ms)
    if rep.kind == "feedback":
        return _feedback_events(txn, spool, origin, rep, now_ms)
    return []


# --- the aiosmtpd adapter ---------------------------------------------------------------------

class InboundSession(EnhancedCodesSession):
    """One remote MTA's connection: aiosmtpd's engine with enhanced status codes on every reply."""

    def __init__(self, listener: InboundListener, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        listener.sessions.add(self)


class InboundListener(DrainingListener):
    """The listening socket and the aiosmtpd handler hooks; counts what it received."""

    kind = "inbound"

    def __init__(self, committer: GroupCommitter, cfg: InboundConfig, *, origin: OriginIndex | None,
                 classifier: Classifier, hostname: str, tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls_context = tls_context
        self.committer = committer
        self.cfg = cfg
        self.domains = frozenset(d.lower().rstrip(".") for d in cfg.domains)
        self.origin = origin
        self.classifier = classifier
        self.hostname = hostname
        self.counts = {"oob": 0, "feedback": 0, "ignored": 0, "unparsable": 0, "refused": 0}
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbound-parse")

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"<InboundListener {self.address} domains={len(self.domains)} {counts} inflight={self._inflight}>"

    def session(self) -> InboundSession:
        return InboundSession(self, data_size_limit=self.cfg.max_message_bytes, enable_SMTPUTF8=True,
                              decode_data=False, hostname=self.hostname, ident="mta-engine ESMTP inbound",
                              tls_context=self.tls_context, require_starttls=False,
                              timeout=SESSION_IDLE_TIMEOUT_S, command_call_limit=COMMAND_CALL_LIMITS,
                              loop=asyncio.get_running_loop())

    # aiosmtpd hooks

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses[1:] if r[4:] != "HELP" and not r[4:].startswith("AUTH")]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        return [responses[0]] + [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower().rstrip(".") not in self.domains:
            self.counts["refused"] += 1
            return "550 5.7.1 Relay access denied: this host accepts only bounces and feedback reports"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        peer_ip = session.peer[0] if session.peer else None
        with self.in_flight():
            return await self._receive(raw, envelope.mail_from or "", list(envelope.rcpt_tos), peer_ip)

    async def _receive(self, raw: bytes, mail_from: str, rcpt_tos: list[str], peer_ip: str | None) -> str:
        loop = asyncio.get_running_loop()
        try:
            rep = await loop.run_in_executor(self._parser, functools.partial(
                read_report, raw, mail_from=mail_from, rcpt_tos=rcpt_tos, domains=self.domains,
                classifier=self.classifier))
        except Exception as exc:  # a parser bug must not make remote MTAs retry forever
            rep = Received("unparsable", f"parser error: {exc!r}"[:200], mail_from=mail_from)
        if rep.kind in ("unparsable", "ignored"):
            self.counts[rep.kind] += 1
            log.warning(f"inbound_report_{rep.kind}", why=rep.why, mail_from=mail_from, rcpt=rcpt_tos[:3],
                        subject=rep.subject, message_id=rep.message_id, size=len(raw), ip=peer_ip)
            return "250 2.0.0 Ok: not a bounce or feedback report; discarded"
        try:
            await self.committer.submit_op(functools.partial(report_events, self.committer.spool, self.origin, rep))
        except Exception as exc:  # nothing of it was committed: let the remote MTA retry
            log.error("inbound_commit_failed", error=str(exc), ip=peer_ip)
            return "451 4.3.0 Local error: report not recorded, try again later"
        self.counts[rep.kind] += 1
        ref = rep.refs[0].queue_id if rep.refs else None
        log.info("inbound_report_recorded", kind=rep.kind, format=rep.why, queue_id=ref, mail_from=mail_from,
                 ip=peer_ip)
        return f"250 2.0.0 Ok: {'feedback report' if rep.kind == 'feedback' else 'bounce'} recorded"

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let reports in flight reach their commit, then stop the parser thread."""
        await super().close(drain_timeout_s)
        self._parser.shutdown(wait=False)


async def start_inbound(committer: GroupCommitter, cfg: InboundConfig, *, origin: OriginIndex | None,
                        classifier: Classifier, hostname: str | None = None) -> InboundListener:
    """Listen on ``cfg.listen`` in the running loop; returns the listener (``await .close()``).

    Raises ``ConfigError`` for an unusable section (including ``listen = ""``: check it first).
    """
    problems = cfg.problems()
    if not cfg.listen:
        problems.insert(0, ("listen", 'is "" (disabled)'))
    if problems:
        raise ConfigError("; ".join(f"inbound.{k}: {why}" for k, why in problems))
    try:
        tls = server_tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"inbound.tls_cert: cannot load {cfg.tls_cert} / {cfg.tls_key}: {exc}") from exc
    listener = InboundListener(committer, cfg, origin=origin, classifier=classifier,
                               hostname=hostname or socket.getfqdn(), tls_context=tls)
    await listener.listen(cfg.listen)
    log.info("inbound_listening", listen=cfg.listen, domains=sorted(listener.domains), tls=tls is not None)
    return listener

