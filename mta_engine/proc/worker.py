"""Worker process: receives delivery jobs, speaks SMTP, reports every recipient's outcome (grouped by reply).

Contract: network-facing and stateless. Decides nothing about a recipient's fate: it reports
replies (or locally made transient outcomes) and the manager decides. Opens the spool read-only
to read bodies. Renders template bodies per recipient at delivery time (merge at delivery).
Keeps, per site, up to ``max_connections_per_site`` runners; each runner holds one session and
reuses it for the site's next job (RSET between transactions); a job of rendered bodies goes through
``SmtpSession.run_transactions``, pipelined across transactions; idle sessions wait in a pool keyed
by endpoint until ``idle_timeout_s``. If the manager goes away the worker exits (the next manager
finds whatever it had handed us still due).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import OrderedDict, deque
from typing import Any

import structlog

from ..config import LMTP_SITE_PREFIX, RELAY_SITE_PREFIX, Config, parse_lmtp_endpoint
from ..delivery.outcome import Outcome, error_text, grouped, local_failure, transaction_outcomes
from ..delivery.pool import ConnectionPool, Endpoint
from ..delivery.session import SessionRefused, SmtpSession, SmtpTimeouts, TransactionItem
from ..errors import DeliveryTimeout, DnsError, MtaError, SpoolCorrupt, TlsError
from ..routing.mx import MxHost, below_self, order_mx
from ..routing.mta_sts import MtaStsCache, StsPolicy
from ..routing.dane import DaneLookup
from ..routing.resolver import Resolver, has_ipv6_route
from ..delivery.tls import TlsPolicy
from ..smtp.body import PreparedMessage
from ..smtp.transaction import DsnParams
from ..dsn.verp import message_id, return_path
from ..spool import records
from ..spool.store import Spool
from ..template.render import MessageTemplate
from .ipc import FrameProtocol
from .readonly import open_spool_readonly

log = structlog.get_logger("worker")
_NO_MX_POLICY = (LMTP_SITE_PREFIX, RELAY_SITE_PREFIX)
"""Sites reached without MX routing (an LMTP store, the smarthost): MTA-STS does not apply, so
their jobs' domains never need policies compared (``deliver``, ``run_site``)."""

FLUSH_S = 0.005
FLUSH_ITEMS = 512
BODY_CACHE = 2048
PIPELINE_CHUNK = 16  # rendered bodies: transactions handed to a session (and rendered) at a time
_NO_TLS = TlsPolicy("none")  # LMTP over a unix socket: local, never TLS
STS_CHECK_S = 3600.0  # MTA-STS testing: a domain's MX hosts are checked at most this often


def tls_info_of(job: dict[str, Any], session: SmtpSession) -> dict[str, Any] | None:
    """The session's TLS details for the accounting log, plus ``mta_sts`` when the job's MX host
    was chosen and verified under an MTA-STS enforce policy (RFC 8461)."""
    info = session.tls_info
    if info is not None and job.get("_sts"):
        return {**info, "mta_sts": job["_sts"]}
    return info


def _failed_kind(failed: list[Outcome]) -> str:
    """How a job that got no session went, for the site: connect_failed (connect or DNS) or closing_421."""
    return "connect_failed" if failed and failed[0][4] in ("connect", "dns") else "closing_421"


def _error_kind(out: list[Outcome], error: BaseException) -> str:
    """How a session that failed with ``error`` went, for the site: closing_421 or timeout."""
    if any(o[1] == 421 for o in out):
        return "closing_421"
    return "timeout" if isinstance(error, (DeliveryTimeout, TimeoutError)) else "closing_421"


class Body:
    __slots__ = ("template", "shared_payload")

    def __init__(self, template: MessageTemplate) -> None:
        self.template = template
        self.shared_payload: PreparedMessage | None = None


def prepare(message: bytes) -> PreparedMessage:
    """The message ready for SMTP; UTF-8 in the header section needs SMTPUTF8 (RFC 6532)."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return PreparedMessage(message, smtputf8=not head.isascii())


class SiteQueue:
    __slots__ = ("site", "jobs", "runners")

    def __init__(self, site: str) -> None:
        self.site = site
        self.jobs: deque[dict[str, Any]] = deque()
        self.runners = 0


class Worker:
    def __init__(self, cfg: Config, shard: int, spool: Spool, resolver: Resolver) -> None:
        self.cfg = cfg
        self.shard = shard
        self.spool = spool
        self.resolver = resolver
        d = cfg.delivery
        self.timeouts = SmtpTimeouts(connect_s=d.connect_timeout_s, greeting_s=d.greeting_timeout_s,
                                     ehlo_s=d.ehlo_timeout_s, mail_s=d.mail_timeout_s, rcpt_s=d.rcpt_timeout_s,
                                     data_s=d.data_timeout_s, block_s=d.block_timeout_s, final_s=d.final_timeout_s,
                                     quit_s=d.quit_timeout_s, tls_s=d.tls_timeout_s)
        self._tls: dict[str, TlsPolicy] = {}
        self._verp_key: bytes | None = None
        self.dane = DaneLookup(resolver, port=d.port) if cfg.dane.enabled else None  # RFC 7672 TLSA verdicts
        self._tls_required = TlsPolicy("required")
        sts = cfg.mta_sts
        self.mta_sts = MtaStsCache(resolver, ca_file=sts.ca_file or None, port=sts.port,
                                   fetch_timeout_s=sts.fetch_timeout_s) if sts.enabled else None
        self._sts_tls = TlsPolicy("verify", ca_file=cfg.tls.ca_file or None)  # RFC 8461 §4.2
        self._sts_checked: dict[str, float] = {}  # testing-mode domain -> next check (monotonic)
        self._sts_tasks: set[asyncio.Task[None]] = set()
        self.sources: list[tuple[str | None, str]] = [
            (src["ip"], src.get("ehlo_name") or cfg.ehlo_name) for src in d.sources] or [(None, cfg.ehlo_name)]
        self._next_source = 0
        self.own_names = {cfg.ehlo_name, *(ehlo for _, ehlo in self.sources)}  # MX hosts that are us
        self.pool = ConnectionPool(idle_timeout_s=d.idle_timeout_s,
                                   max_messages_per_connection=d.max_messages_per_connection)
        self.ehlo_name = cfg.ehlo_name
        self.sites: dict[str, SiteQueue] = {}
        self.bodies: OrderedDict[int, Body] = OrderedDict()
        self.rng = random.Random()
        self.link: FrameProtocol | None = None
        self._out: list[dict[str, Any]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.draining = False
        self.done = asyncio.Event()
        self.active = 0

    def __repr__(self) -> str:
        return f"<Worker shard={self.shard} sites={len(self.sites)} active={self.active} pool={self.pool!r}>"

    # -- IPC ------------------------------------------------------------------------------------
    def on_frame(self, proto: FrameProtocol, frame: dict[str, Any]) -> None:
        t = frame.get("t")
        if t == "jobs":
            for job in frame["items"]:
                self.enqueue(job)
        elif t == "drain":
            self.drain()

    def on_lost(self, proto: FrameProtocol, exc: Exception | None) -> None:
        self.link = None
        if not self.done.is_set():
            log.warning("manager_lost", shard=self.shard)
            self.done.set()

    def report(self, job: dict[str, Any], results: list[Outcome], mx: str | None = None, ip: str | None = None,
               kind: str = "delivered", tls: dict[str, Any] | None = None) -> None:
        """Queue one job's outcome for the manager. ``kind`` tells the site how the session went:
        delivered (the server answered, whatever it said), connect_failed, timeout, closing_421.
        A part of a job split by domain (``_partial``, see ``deliver``) reports as a partial."""
        if job.get("_partial"):
            self.report_partial(job, results, mx, ip, tls)
            return
        self._out.append({"id": job["id"], "results": grouped(results), "mx": mx, "ip": ip, "kind": kind,
                          "tls": tls})
        if len(self._out) >= FLUSH_ITEMS:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def report_partial(self, job: dict[str, Any], results: list[Outcome], mx: str | None, ip: str | None,
                       tls: dict[str, Any] | None) -> None:
        """Outcomes of a job's finished transactions, before the job ends (fewer repeats after a crash)."""
        self._out.append({"id": job["id"], "results": grouped(results), "mx": mx, "ip": ip, "tls": tls,
                          "partial": True})
        if len(self._out) >= FLUSH_ITEMS:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out and self.link is not None:
            self.link.send({"t": "outcomes", "items": self._out})
        self._out = []

    # -- scheduling -----------------------------------------------------------------------------
    def enqueue(self, job: dict[str, Any]) -> None:
        if self.draining:
            self.report(job, [(r[0], 0, None, "returned: worker draining", "queue", False) for r in job["rcpts"]])
            return
        # one queue (and runner cap) per site and egress source: a runner's session is of one source
        key = job["site"] if job.get("source") is None else f"{job['site']} via {job['source']}"
        sq = self.sites.get(key)
        if sq is None:
            sq = self.sites[key] = SiteQueue(key)
        sq.jobs.append(job)
        cap = job.get("conns") or self.cfg.delivery.max_connections_per_site
        if sq.runners < cap and sq.runners < len(sq.jobs):
            sq.runners += 1
            asyncio.get_running_loop().create_task(self.run_site(sq))

    async def run_site(self, sq: SiteQueue) -> None:
        session: SmtpSession | None = None
        endpoint: Endpoint | None = None
        last_domain = ""
        mx_routed = not sq.site.startswith(_NO_MX_POLICY)
        try:
            while sq.jobs and not self.draining:
                job = sq.jobs.popleft()
                self.active += 1
                try:
                    if mx_routed:
                        session, endpoint = await self._for_domain(session, endpoint, last_domain, job["domain"])
                    last_domain = job["domain"]
                    session, endpoint = await self.deliver(job, session, endpoint)
                except Exception as exc:  # a bug must cost a deferral, never a lost recipient
                    log.exception("job_failed", site=sq.site, error=repr(exc))
                    self.report(job, local_failure([r[0] for r in job["rcpts"]], 451, "4.3.0",
                                                   f"internal error: {exc!r}", "worker"))
                    if session is not None:
                        session.abort()
                    session = None
                finally:
                    self.active -= 1
        finally:
            sq.runners -= 1
            self._park(session, endpoint)
            if not sq.jobs and sq.runners == 0:
                self.sites.pop(sq.site, None)
            if self.draining and self.active == 0:
                self._maybe_drained()

    # -- one job ---------------------------------------------------------------------------------
    def body(self, msg_id: int) -> Body:
        b = self.bodies.get(msg_id)
        if b is not None:
            self.bodies.move_to_end(msg_id)
            return b
        with self.spool.read() as txn:
            raw = txn.get(records.u64(msg_id), db=self.spool.dbs["body"])
        if raw is None:
            raise SpoolCorrupt(f"body of {records.queue_id(msg_id)} is missing")
        b = Body(MessageTemplate(records.decode_body(raw)))
        self.bodies[msg_id] = b
        if len(self.bodies) > BODY_CACHE:
            self.bodies.popitem(last=False)
        return b

    def payload(self, job: dict[str, Any], body: Body, rcpt: list[Any]) -> PreparedMessage:
        if not body.template.per_recipient:
            if body.shared_payload is None:
                body.shared_payload = prepare(body.template.render(address="", name=None, variables=None,
                                                                   message_id=""))
            return body.shared_payload
        index, address = rcpt[0], rcpt[1]
        name, variables = (rcpt[2], rcpt[3]) if len(rcpt) > 3 else (None, None)  # short for shared bodies
        mid = message_id(job["msg"], index, self.ehlo_name, self.verp_key())
        return prepare(body.template.render(address=address, name=name, variables=variables, message_id=mid))

    def verp_key(self) -> bytes | None:
        """The spool's signing key for VERP addresses and Message-IDs, read once (ingest or the
        manager made it before any message could reach us)."""
        if self._verp_key is None:
            self._verp_key = self.spool.verp_key()
        return self._verp_key

    def tls_policy(self, domain: str) -> TlsPolicy:
        mode = self.cfg.tls.mode_for(domain)
        pol = self._tls.get(mode)
        if pol is None:
            pol = self._tls[mode] = TlsPolicy(mode, ca_file=self.cfg.tls.ca_file or None)  # type: ignore[arg-type]
        return pol

    # -- MTA-STS (RFC 8461) -----------------------------------------------------------------------
    async def sts_policy(self, domain: str) -> StsPolicy | None:
        """The MTA-STS policy for ``domain`` (enforce or testing), or None. Cached per domain; an
        explicit ``[tls] per_domain`` entry or ``[tls] mode = "none"`` wins (no lookup at all)."""
        if self.mta_sts is None or domain in self.cfg.tls.per_domain or self.cfg.tls.mode == "none":
            return None
        return await self.mta_sts.policy(domain)

    def sts_apply(self, sts: StsPolicy, domain: str, hosts: list[MxHost], tls: TlsPolicy) -> TlsPolicy:
        """The TLS policy under ``sts``. Enforce: verified TLS (§4.2); ``connect`` skips MX hosts
        the policy does not list (§4.1) unless DANE applies to them (§2); when none is left the job
        is deferred with 451 4.7.5 (§5.1). Testing: unchanged; a background check logs what enforce
        would refuse."""
        if not sts.enforces:
            self._sts_check_later(domain, sts, hosts)
            return tls
        return self._sts_tls

    @staticmethod
    def _sts_refused(domain: str, host: str, sts: StsPolicy, idx: list[int]) -> list[Outcome]:
        log.warning("mta_sts_mx_not_in_policy", domain=domain, mx=host, policy_mx=list(sts.mx))
        return local_failure(idx, 451, "4.7.5", f"MTA-STS: MX {host} of {domain} is not in its policy", "connect")

    def _sts_check_later(self, domain: str, sts: StsPolicy, hosts: list[MxHost]) -> None:
        now = time.monotonic()
        if self._sts_checked.get(domain, 0.0) > now:
            return
        if len(self._sts_checked) >= 10_000:
            self._sts_checked = {d: t for d, t in self._sts_checked.items() if t > now}
        self._sts_checked[domain] = now + STS_CHECK_S
        task = asyncio.get_running_loop().create_task(self._sts_check(domain, sts, hosts))
        self._sts_tasks.add(task)
        task.add_done_callback(self._sts_tasks.discard)

    async def _sts_check(self, domain: str, sts: StsPolicy, hosts: list[MxHost]) -> None:
        """MTA-STS testing, off the delivery path: log each MX host enforce would not use (outside
        the policy, or its TLS does not verify for its name). One short verified session per host."""
        try:
            await self._sts_check_hosts(domain, sts, hosts)
        except Exception as exc:  # a bug here must not go unnoticed, nor touch delivery
            log.exception("mta_sts_testing_check_crashed", domain=domain, error=repr(exc))

    async def _sts_check_hosts(self, domain: str, sts: StsPolicy, hosts: list[MxHost]) -> None:
        src, ehlo = self.sources[0]
        for host in hosts[: self.cfg.delivery.max_mx_hosts_per_attempt]:
            if not sts.matches(host.name):
                log.warning("mta_sts_testing_mx_mismatch", domain=domain, mx=host.name, policy_mx=list(sts.mx))
                continue
            try:
                ip = (await self.resolver.resolve_addresses(host.name))[0]
                s = await SmtpSession.open(ip, self.cfg.delivery.port, ehlo_name=ehlo, timeouts=self.timeouts,
                                           source_ip=src, mx_name=host.name, tls=self._sts_tls, tls_fallback=False)
            except TlsError as exc:
                log.warning("mta_sts_testing_tls_failed", domain=domain, mx=host.name, ip=ip, error=error_text(exc))
            except (MtaError, OSError) as exc:
                log.info("mta_sts_testing_check_failed", domain=domain, mx=host.name, error=error_text(exc))
            else:
                await s.close()

    async def close_mta_sts(self) -> None:
        """Stop testing-mode checks and close the policy fetcher's HTTP client."""
        for task in list(self._sts_tasks):
            task.cancel()
        if self._sts_tasks:
            await asyncio.wait(self._sts_tasks, timeout=5)
        if self.mta_sts is not None:
            await self.mta_sts.close()

    def egress_sources(self, job: dict[str, Any] | None) -> list[tuple[str | None, str]]:
        """The (source IP, EHLO name) pairs a job may use: the one the manager chose for it
        (``job["source"]``: limits hold per source), else the whole egress pool."""
        chosen = job.get("source") if job is not None else None
        if chosen is not None:
            for pair in self.sources:
                if pair[0] == chosen:
                    return [pair]
        return self.sources

    def next_source(self, job: dict[str, Any] | None) -> tuple[str | None, str]:
        """The source of a new connection: the job's own, else the egress pool in turn."""
        allowed = self.egress_sources(job)
        if len(allowed) == 1:
            return allowed[0]
        pair = allowed[self._next_source % len(allowed)]
        self._next_source += 1
        return pair

    async def connect(self, job: dict[str, Any], idx: list[int]) -> tuple[SmtpSession | None, Endpoint | None,
                                                                          list[Outcome]]:
        """A session to one of the job's MX hosts, trying them in order (RFC 5321 §5.1)."""
        if str(job.get("site", "")).startswith(LMTP_SITE_PREFIX):
            return await self._connect_lmtp(job, idx)
        if str(job.get("site", "")).startswith(RELAY_SITE_PREFIX) and self.cfg.relay.host:
            return await self._connect_relay(idx, job)
        hosts = below_self(order_mx([MxHost(p, n) for p, n in job["mx"]], self.rng), self.own_names)
        if not hosts and job["mx"]:
            # RFC 5321 §5.1 (STANDARDS M05): we are this domain's best MX; sending would loop
            return None, None, local_failure(idx, 554, "5.4.6", f"mail for {job['domain']} loops back to "
                                             f"myself: this host is its most preferred MX", "connect")
        last: list[Outcome] = local_failure(idx, 451, "4.4.4", "no MX host could be resolved", "connect")
        tried = 0
        port = self.cfg.delivery.port
        tls = self.tls_policy(job["domain"])
        sts = await self.sts_policy(job["domain"])  # MTA-STS (RFC 8461): which hosts, which TLS
        enforce = sts is not None and sts.enforces
        job.pop("_sts", None)
        if sts is not None:
            tls = self.sts_apply(sts, job["domain"], hosts, tls)
        for host in hosts:
            try:
                ips = await self.resolver.resolve_addresses(host.name)
            except DnsError as exc:
                last = local_failure(idx, 451, "4.4.4", f"MX {host.name}: {exc}", "dns")
                continue
            host_tls, refused = await self.dane_policy(job["domain"], host.name, tls, idx)  # RFC 7672
            if refused:
                last = refused
                continue
            if enforce and not host_tls.dane and not sts.matches(host.name):  # type: ignore[union-attr]
                # RFC 8461 §4.1: not a policy MX; one with DANE TLSA records is still used (§2)
                last = self._sts_refused(job["domain"], host.name, sts, idx)  # type: ignore[arg-type]
                continue
            for ip in ips:
                # a verified session is only reused for the name it was verified against
                mode = (f"dane:{host.name}" if host_tls.dane else
                        f"verify:{host.name}" if host_tls.verifies else host_tls.mode)
                for src, _ in self.egress_sources(job):  # reuse only sessions of the job's source
                    ep = Endpoint(src, ip, port, mode)
                    cached = self.pool.take(ep, time.monotonic())
                    if cached is not None:
                        cached.mx_name = host.name  # the same endpoint may serve several MX names
                        if enforce and not host_tls.dane:
                            job["_sts"] = "enforce"  # for the accounting log (tls_info_of)
                        return cached, ep, []
                src, ehlo = self.next_source(job)  # the manager's choice, else the egress pool in turn
                ep = Endpoint(src, ip, port, mode)
                tried += 1
                try:
                    s = await SmtpSession.open(ip, port, ehlo_name=ehlo, timeouts=self.timeouts, source_ip=src,
                                               mx_name=host.name, tls=host_tls, chunking=self.cfg.delivery.chunking)
                    if enforce and not host_tls.dane:
                        job["_sts"] = "enforce"  # for the accounting log (tls_info_of)
                    return s, ep, []
                except SessionRefused as exc:
                    # A refused greeting/EHLO is about this host, not the recipients: try the next MX,
                    # and if all refuse, defer (as Postfix does) rather than bounce (RFC 5321 §3.1).
                    last = local_failure(idx, 451, "4.4.0", f"{host.name}[{ip}] refused the session: {exc.reply}",
                                         exc.phase)
                except (MtaError, OSError) as exc:
                    enhanced = "4.7.5" if host_tls.dane and isinstance(exc, TlsError) else "4.4.1"  # DANE failed
                    last = local_failure(idx, 451, enhanced, f"{host.name}[{ip}]: {error_text(exc)}", "connect")
                if tried >= self.cfg.delivery.max_mx_hosts_per_attempt:
                    return None, None, last
        return None, None, last

    async def dane_policy(self, domain: str, host: str, tls: TlsPolicy,
                          idx: list[int]) -> tuple[TlsPolicy, list[Outcome]]:
        """MX ``host``'s TLS policy under DANE (RFC 7672): ``tls`` when DANE does not apply; with
        usable TLSA records a DANE policy, which overrides MTA-STS (RFC 8461 §2); with only unusable
        records TLS required, unauthenticated; a failed TLSA lookup is a 451 4.7.5 failure for this
        host (§2.1: never fall back). An explicit ``[tls] per_domain`` entry or ``mode = "none"`` wins."""
        if self.dane is None or domain in self.cfg.tls.per_domain or self.cfg.tls.mode == "none":
            return tls, []
        try:
            target = await self.dane.lookup(host)
        except DnsError as exc:
            return tls, local_failure(idx, 451, exc.enhanced, f"MX {host}: {exc}", "dns")
        if target is None:
            return tls, []
        return (TlsPolicy.for_dane(target.records, target.names) if target.records else self._tls_required), []

    def relay_tls_policy(self) -> TlsPolicy:
        """The [relay] TLS policy: required or verify, STARTTLS or implicit (RFC 8314), or none."""
        relay = self.cfg.relay
        if relay.tls == "none":
            return TlsPolicy("none")
        return TlsPolicy("verify" if relay.verify else "required", implicit=relay.tls == "implicit",
                         ca_file=relay.ca_file or None)

    async def _connect_relay(self, idx: list[int], job: dict[str, Any] | None = None
                             ) -> tuple[SmtpSession | None, Endpoint | None, list[Outcome]]:
        """A session to the configured smarthost, with AUTH when a username is set (X10)."""
        relay = self.cfg.relay
        tls = self.relay_tls_policy()
        auth = relay.credentials()
        try:
            ips = await self.resolver.resolve_addresses(relay.host)
        except DnsError as exc:
            return None, None, local_failure(idx, 451, "4.4.4", f"relay {relay.host}: {exc}", "dns")
        mode = f"relay:{tls.mode}:{relay.host}"
        last: list[Outcome] = local_failure(idx, 451, "4.4.4", f"relay {relay.host} has no address", "connect")
        for ip in ips:
            for src, _ in self.egress_sources(job):
                ep = Endpoint(src, ip, relay.port, mode)
                cached = self.pool.take(ep, time.monotonic())
                if cached is not None:
                    return cached, ep, []
            src, ehlo = self.next_source(job)
            ep = Endpoint(src, ip, relay.port, mode)
            try:
                s = await SmtpSession.open(ip, relay.port, ehlo_name=ehlo, timeouts=self.timeouts, source_ip=src,
                                           mx_name=relay.host, tls=tls, tls_fallback=False,
                                           chunking=self.cfg.delivery.chunking, auth=auth,
                                           auth_without_tls=relay.auth_without_tls)
                return s, ep, []
            except SessionRefused as exc:  # AuthRefused included: the reply never holds credentials
                last = local_failure(idx, 451, "4.4.0" if exc.phase != "auth" else "4.7.0",
                                     f"relay {relay.host}[{ip}] refused the session: {exc.reply}", exc.phase)
            except (MtaError, OSError) as exc:
                last = local_failure(idx, 451, "4.4.1", f"relay {relay.host}[{ip}]: {error_text(exc)}", "connect")
        return None, None, last

    async def _connect_lmtp(self, job: dict[str, Any],
                            idx: list[int]) -> tuple[SmtpSession | None, Endpoint | None, list[Outcome]]:
        """An LMTP session (RFC 2033) to the endpoint the site names (``lmtp:<endpoint>``): a unix
        socket (never TLS) or host:port (the destination's [tls] policy; system resolver)."""
        endpoint = job["site"][len(LMTP_SITE_PREFIX):]
        try:
            where = parse_lmtp_endpoint(endpoint)
        except ValueError as exc:  # the config was validated; a site from an older config may not be
            return None, None, local_failure(idx, 451, "4.3.5", f"LMTP endpoint {endpoint}: {exc}", "connect")
        if isinstance(where, str):
            host, port, unix, tls, name = where, 0, True, _NO_TLS, endpoint
        else:
            (host, port), unix, tls = where, False, self.tls_policy(job["domain"])
            name = host
        ep = Endpoint(None, host, port, f"lmtp:{tls.mode}")
        cached = self.pool.take(ep, time.monotonic())
        if cached is not None:
            return cached, ep, []
        try:
            s = await SmtpSession.open(host, port, ehlo_name=self.ehlo_name, timeouts=self.timeouts, mx_name=name,
                                       tls=tls, chunking=self.cfg.delivery.chunking, lmtp=True, unix=unix)
            return s, ep, []
        except SessionRefused as exc:
            return None, None, local_failure(idx, 451, "4.4.0", f"LMTP {endpoint} refused the session: {exc.reply}",
                                             exc.phase)
        except (MtaError, OSError) as exc:
            return None, None, local_failure(idx, 451, "4.4.1", f"LMTP {endpoint}: {error_text(exc)}", "connect")

    def _fresh(self, session: SmtpSession | None, job: dict[str, Any]) -> SmtpSession | None:
        """The session if it may carry another transaction; else close it and return None."""
        cap = job.get("msgs_per_conn") or self.cfg.delivery.max_messages_per_connection
        if session is not None and (not session.usable or session.transactions >= cap):
            asyncio.get_running_loop().create_task(session.close())
            return None
        return session

    async def deliver(self, job: dict[str, Any], session: SmtpSession | None,
                      endpoint: Endpoint | None) -> tuple[SmtpSession | None, Endpoint | None]:
        """One job: one transaction with all recipients (shared body), or one transaction per
        recipient over the same session (rendered bodies). Reports one outcome per recipient."""
        domains = job.get("domains")
        if domains and len(domains) > 1 and not str(job.get("site", "")).startswith(_NO_MX_POLICY) \
                and not await self._one_policy(domains):
            return await self._deliver_by_domain(job, session, endpoint)
        try:
            body = self.body(job["msg"])
        except (SpoolCorrupt, MtaError) as exc:
            self.report(job, local_failure([r[0] for r in job["rcpts"]], 451, "4.3.0", str(exc), "queue"))
            return session, endpoint
        held: list[SmtpSession | None] = [session]
        try:
            return await self._deliver(job, body, held, endpoint)
        except BaseException:
            if held[0] is not None:  # never leak a connection on an unexpected error
                held[0].abort()
            raise

    async def _one_policy(self, domains: list[str]) -> bool:
        """Whether recipients at ``domains`` (one site: the same MX hosts) may share a session and a
        transaction: the same ``[tls]`` mode and no MTA-STS policy at any of them (a policy is per
        domain, RFC 8461 §4; a domain without one must not be refused by another's)."""
        if len({self.cfg.tls.mode_for(d) for d in domains}) > 1:
            return False
        for d in domains:
            try:
                if await self.sts_policy(d) is not None:
                    return False
            except MtaError:
                return False
        return True

    async def _deliver_by_domain(self, job: dict[str, Any], session: SmtpSession | None,
                                 endpoint: Endpoint | None) -> tuple[SmtpSession | None, Endpoint | None]:
        """A job whose domains need different policies: one part per domain, each under its own
        policy (and its own session); all parts but the last report as partials of the job."""
        parts: dict[str, list[Any]] = {}
        for r in job["rcpts"]:
            parts.setdefault(r[1].rpartition("@")[2].lower(), []).append(r)
        last = job["domain"]
        for n, (domain, rcpts) in enumerate(parts.items()):
            part = {**job, "domain": domain, "rcpts": rcpts, "domains": None, "_partial": n + 1 < len(parts)}
            session, endpoint = await self._for_domain(session, endpoint, last, domain)
            last = domain
            session, endpoint = await self.deliver(part, session, endpoint)
        self._park(session, endpoint)  # opened for the last part's domain, not the job's: pooled by mode
        return None, None

    async def _for_domain(self, session: SmtpSession | None, endpoint: Endpoint | None, last: str,
                          domain: str) -> tuple[SmtpSession | None, Endpoint | None]:
        """The held session, if it was opened under the same policy ``domain`` needs; else it goes
        back to the pool (keyed by its TLS mode), where ``connect`` finds it when that mode fits."""
        if session is None or domain == last or await self._one_policy([last, domain]):
            return session, endpoint
        self._park(session, endpoint)
        return None, None

    def _park(self, session: SmtpSession | None, endpoint: Endpoint | None) -> None:
        """Return a session to the pool (closing what the pool evicts)."""
        if session is not None and endpoint is not None:
            for s in self.pool.put(session, endpoint, time.monotonic()):
                asyncio.get_running_loop().create_task(s.close())

    async def _deliver(self, job: dict[str, Any], body: Body, held: list[SmtpSession | None],
                       endpoint: Endpoint | None) -> tuple[SmtpSession | None, Endpoint | None]:
        if job["per_rcpt"]:
            return await self._deliver_each(job, body, held, endpoint)
        # a shared body: one transaction for all the job's recipients (more only after 452 splits)
        rcpts = {r[0]: r for r in job["rcpts"]}
        session, endpoint, failed = await self._session(job, held, endpoint, list(rcpts))
        if session is None or endpoint is None:
            self.report(job, failed, None, None, _failed_kind(failed), None)
            return None, None
        results: list[Outcome] = []
        kind = await self._transactions(job, body, session, rcpts, list(rcpts), results)
        mx, ip, tls_info = session.mx_name, endpoint.ip, tls_info_of(job, session)
        if not session.usable:
            session.abort()
            session = endpoint = held[0] = None
        self.report(job, results, mx, ip, kind, tls_info)
        return session, endpoint

    async def _session(self, job: dict[str, Any], held: list[SmtpSession | None], endpoint: Endpoint | None,
                       pending: list[int]) -> tuple[SmtpSession | None, Endpoint | None, list[Outcome]]:
        """The held session if it may carry more, else a new one (``held[0]`` follows); with no
        session, the outcomes for ``pending`` say why."""
        session = held[0] = self._fresh(held[0], job)
        if session is not None:
            return session, endpoint, []
        session, endpoint, failed = await self.connect(job, pending)
        held[0] = session
        return session, endpoint, failed

    async def _deliver_each(self, job: dict[str, Any], body: Body, held: list[SmtpSession | None],
                            endpoint: Endpoint | None) -> tuple[SmtpSession | None, Endpoint | None]:
        """Rendered bodies: one transaction per recipient, ``PIPELINE_CHUNK`` at a time through
        ``SmtpSession.run_transactions`` (pipelined across transactions when the server offers
        PIPELINING), rendering only that many ahead; each chunk's outcomes are reported at once."""
        session: SmtpSession | None = held[0]
        rcpts = {r[0]: r for r in job["rcpts"]}
        todo = list(rcpts)
        cap = job.get("msgs_per_conn") or self.cfg.delivery.max_messages_per_connection
        results: list[Outcome] = []
        kind = "delivered"
        mx = ip = tls_info = None
        pos = 0
        while pos < len(todo):
            session, endpoint, failed = await self._session(job, held, endpoint, todo[pos:])
            if session is None:
                results.extend(failed)
                kind = _failed_kind(failed)
                break
            assert endpoint is not None
            mx, ip, tls_info = session.mx_name, endpoint.ip, tls_info_of(job, session)
            chunk = todo[pos:pos + max(1, min(PIPELINE_CHUNK, cap - session.transactions))]
            got = await session.run_transactions([self._item(job, body, rcpts, [i]) for i in chunk])
            if not got:
                raise MtaError(f"{session!r} carried none of {len(chunk)} transactions")
            chunk_kind = "delivered"
            for index, result in zip(chunk, got):
                # one recipient per transaction: a 452 is that recipient's deferral (nothing to split)
                out, _ = transaction_outcomes([index], result)
                results.extend(out)
                if result.error is not None and chunk_kind == "delivered":
                    chunk_kind = _error_kind(out, result.error)
            pos += len(got)
            if chunk_kind != "delivered":
                kind = chunk_kind
            if pos < len(todo) and results:
                self.report_partial(job, results, mx, ip, tls_info)
                results = []
            if not session.usable:
                session.abort()
                session = endpoint = held[0] = None
                if chunk_kind in ("closing_421", "timeout"):
                    # the site is pushing back: give the rest back to the manager's pacing
                    results.extend(local_failure(todo[pos:], 451, "4.4.2", "not attempted: the previous session "
                                                 "on this site was closed", "connect"))
                    break
        self.report(job, results, mx, ip, kind, tls_info)
        return session, endpoint

    def _item(self, job: dict[str, Any], body: Body, rcpts: dict[int, Any],
              pending: list[int]) -> TransactionItem:
        """(sender, recipient addresses, rendered message, DSN parameters) of one transaction."""
        payload = self.payload(job, body, rcpts[pending[0]])
        ret, envid = job.get("dsn") or (None, None)
        dsn = DsnParams(ret, envid, tuple((rcpts[i][4], rcpts[i][5]) if len(rcpts[i]) > 5 else (None, None)
                                          for i in pending))
        sender = job["sender"]
        if sender and self.cfg.delivery.verp_domain:  # VERP return path (dsn/verp.py, issue 5)
            sender = return_path(sender, job["msg"], pending, self.cfg.delivery.verp_domain, self.verp_key())
        return sender, [rcpts[i][1] for i in pending], payload, dsn

    async def _transactions(self, job: dict[str, Any], body: Body, session: SmtpSession, rcpts: dict[int, Any],
                            pending: list[int], results: list[Outcome]) -> str:
        """Send ``pending`` in as many transactions as 452 splits require; returns the session's kind."""
        while pending:
            sender, addresses, payload, dsn = self._item(job, body, rcpts, pending)
            result = await session.transaction(sender, addresses, payload, dsn=dsn)
            out, again = transaction_outcomes(pending, result)
            results.extend(out)
            if result.error is not None:
                return _error_kind(out, result.error)
            if not again:
                return "delivered"
            if not session.usable:
                results.extend(local_failure(again, 451, "4.4.2", "not attempted: the session closed before "
                                             "a new transaction for the remaining recipients", "rcpt"))
                return "delivered"
            pending = again
        return "delivered"

    # -- lifecycle ------------------------------------------------------------------------------
    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("worker_draining", shard=self.shard, active=self.active)
        for sq in self.sites.values():
            while sq.jobs:
                job = sq.jobs.popleft()
                self.report(job, [(r[0], 0, None, "returned: worker draining", "queue", False) for r in job["rcpts"]])
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.draining and self.active == 0:
            self.flush()
            if self.link is not None:
                self.link.send({"t": "drained"})
            self.done.set()

    async def expire_idle(self) -> None:
        while not self.done.is_set():
            await asyncio.sleep(1.0)
            for s in self.pool.expire(time.monotonic()):
                asyncio.get_running_loop().create_task(s.close())

    async def close_all(self) -> None:
        sessions = self.pool.drain()
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.close()) for s in sessions], timeout=5)


async def worker_main(cfg: Config, shard: int, ipc_path: str) -> int:
    loop = asyncio.get_running_loop()
    spool = await open_spool_readonly(cfg)
    deadline = time.monotonic() + 30  # for reaching the manager's ipc.sock
    ipv6 = cfg.dns.ipv6 == "yes" or (cfg.dns.ipv6 == "auto" and has_ipv6_route())
    resolver = Resolver(cfg.dns.nameservers or None, port=cfg.dns.port, timeout_s=cfg.dns.timeout_s, ipv6=ipv6)
    worker = Worker(cfg, shard, spool, resolver)
    while True:
        try:
            _, proto = await loop.create_unix_connection(lambda: FrameProtocol(worker.on_frame, worker.on_lost),
                                                         ipc_path)
            break
        except OSError:
            if time.monotonic() > deadline:
                log.error("manager_unreachable", path=ipc_path)
                return 1
            await asyncio.sleep(0.1)
    worker.link = proto  # type: ignore[assignment]
    proto.send({"t": "hello", "shard": shard, "pid": os.getpid()})  # type: ignore[attr-defined]
    loop.add_signal_handler(signal.SIGTERM, worker.drain)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides; ^C reaches it
    expiry = loop.create_task(worker.expire_idle())
    log.info("worker_started", shard=shard, pid=os.getpid())
    await worker.done.wait()
    expiry.cancel()
    worker.flush()
    await worker.close_all()
    await worker.close_mta_sts()
    if worker.link is not None:
        worker.link.close()
    log.info("worker_stopped", shard=shard)
    return 0


def main(cfg: Config, shard: int, ipc_path: str) -> int:
    from ..obs.log import configure

    configure(cfg, role=f"worker-{shard}")
    import uvloop

    return uvloop.run(worker_main(cfg, shard, ipc_path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(Config(), 0, "var/ipc.sock"))
