"""A real validating resolver for DANE tests: unbound serving a zone signed at test time.

Contract: test code only. ``ValidatingResolver`` builds a zone (default origin ``test.``) from
record lines, signs it with a fresh ECDSA P-256 key (dnspython's signer over ``cryptography``;
NSEC chain, so NXDOMAIN and NODATA are provably secure), writes it and an ``unbound.conf`` into
its own temp dir, and runs ``/usr/sbin/unbound -d`` in the foreground as a ``ManagedProcess``
bound only to ``listen`` (127.0.0.0/8). Unbound loads the zone as an ``auth-zone`` *for
upstream* (used by its iterator, never answered as authoritative) and validates it against a
``trust-anchor`` of the zone's key, so a secure answer carries the AD bit for real, and a record
changed after signing (``tamper``) is bogus: SERVFAIL, as from any validating resolver.

Nothing leaves the machine: the only root hint is a loopback address, which unbound never
queries (``do-not-query-localhost`` defaults to yes), so a name outside the zone is SERVFAIL. ``start()`` returns once unbound answers the zone's SOA
with AD set, which is also the check that validation works at all. Stopped by PID.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import dns.dnssec
import dns.dnssectypes
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.procs import ServiceHarness, wait_for

__all__ = ["UNBOUND", "ValidatingResolver"]

UNBOUND = "/usr/sbin/unbound"


class ValidatingResolver(ServiceHarness):
    """unbound validating a zone signed at ``start()``; a context manager.

    ``records`` are zone-file lines with absolute owner names, e.g.
    ``"mx.dane.test. A 127.0.0.41"`` or ``"_25._tcp.mx.dane.test. TLSA 3 1 1 <hex>"``.
    ``tamper`` lines replace the signed RRset of the same name and type after signing (the old
    RRSIG stays): unbound then finds them bogus and answers SERVFAIL.
    """

    def __init__(
        self,
        records: Sequence[str],
        *,
        tamper: Sequence[str] = (),
        origin: str = "test.",
        ttl_s: int = 300,
        listen: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.records = list(records)
        self.tamper = list(tamper)
        self.origin = dns.name.from_text(origin)
        self.ttl_s = ttl_s
        self._host = listen
        self._port = port
        self.trust_anchor: str | None = None

    def _repr_extra(self) -> str:
        return f" zone={self.origin} records={len(self.records)}"

    # ------------------------------------------------------------------ zone

    def zone_text(self) -> str:
        """The unsigned zone: SOA, NS and the given records."""
        o = self.origin.to_text()
        lines = [
            f"$ORIGIN {o}",
            f"$TTL {self.ttl_s}",
            f"@ SOA ns.{o} hostmaster.{o} 1 3600 600 86400 {self.ttl_s}",
            f"@ NS ns.{o}",
            f"ns.{o} A 127.0.0.1",
            *self.records,
        ]
        return "\n".join(lines) + "\n"

    def signed_zone(self) -> str:
        """Sign the zone with a new key; set ``trust_anchor``; return the zone file text."""
        zone = dns.zone.from_text(self.zone_text(), origin=self.origin, relativize=False)
        private = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
        now = int(time.time())
        dns.dnssec.sign_zone(zone, keys=[(private, dnskey)], inception=now - 3600, expiration=now + 86400)
        for line in self.tamper:
            name, rdtype, rdata = _split(line, self.origin)
            with zone.writer() as txn:
                old = txn.get(name, rdtype)
                if old is None:
                    raise ValueError(f"tamper: {line!r} replaces nothing")
                txn.replace(name, old.ttl, rdata)
        self.trust_anchor = f"{self.origin.to_text()} DNSKEY {dnskey.to_text()}"
        return zone.to_text(relativize=False)  # type: ignore[no-any-return]

    def config_text(self, zonefile: Path) -> str:
        assert self._dir is not None and self.trust_anchor is not None
        o = self.origin.to_text()
        return f"""server:
    interface: {self._host}
    port: {self._port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{self._dir}"
    pidfile: "{self._dir / 'unbound.pid'}"
    logfile: ""
    use-syslog: no
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    root-hints: "{self._dir / 'root.hints'}"
    local-zone: "{o}" nodefault
    trust-anchor: "{self.trust_anchor}"
auth-zone:
    name: "{o}"
    zonefile: "{zonefile}"
    for-downstream: no
    for-upstream: yes
    fallback-enabled: no
"""

    # ------------------------------------------------------------------ process

    def start(self, timeout_s: float = 15.0) -> ValidatingResolver:
        """Sign, write the files, start unbound and wait for a validated (AD) SOA answer."""
        if not Path(UNBOUND).exists():
            raise RuntimeError(f"{UNBOUND} is missing: run scripts/bootstrap-system.sh")
        self._begin_start()
        self._dir = Path(tempfile.mkdtemp(prefix="unbound-"))
        zonefile = self._dir / "zone.db"
        zonefile.write_text(self.signed_zone())
        # The only root server is a loopback address that unbound refuses to query
        # (do-not-query-localhost defaults to yes): no query ever leaves the machine.
        (self._dir / "root.hints").write_text(". 3600000 NS root.invalid.\nroot.invalid. 3600000 A 127.0.0.254\n")
        conf = self._dir / "unbound.conf"
        conf.write_text(self.config_text(zonefile))
        proc = self._spawn([UNBOUND, "-d", "-c", str(conf)], self._dir / "unbound.log", name="unbound")
        try:
            wait_for(self._validated, timeout_s, interval_s=0.05, what=f"{self!r} answering with AD")
        except AssertionError as exc:
            tail = proc.log_tail()
            self.stop()
            raise AssertionError(f"{exc}; unbound log tail:\n{tail}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _validated(self) -> bool:
        assert self._proc is not None
        self._proc.check_alive()
        try:
            response = self.query(self.origin.to_text(), "SOA", timeout_s=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        return bool(response.flags & dns.flags.AD)

    def query(self, name: str, rdtype: str, *, timeout_s: float = 2.0) -> dns.message.Message:
        """One UDP query with DO and AD set (RFC 6840 §5.7), as the engine sends them."""
        q = dns.message.make_query(name, rdtype, want_dnssec=True)
        q.flags |= dns.flags.AD
        return dns.query.udp(q, self._host, timeout=timeout_s, port=self.port)


def _split(line: str, origin: dns.name.Name) -> tuple[dns.name.Name, dns.rdatatype.RdataType, dns.rdata.Rdata]:
    owner, rdtype_text, rest = line.split(None, 2)
    rdtype = dns.rdatatype.from_text(rdtype_text)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, rest, origin=origin)
    return dns.name.from_text(owner, origin), rdtype, rdata
