"""A real dnsmasq serving a test zone on loopback, built from a Python description.

Contract: writes a dnsmasq config into its own temp dir and runs dnsmasq in the foreground as a
``ManagedProcess`` bound only to ``listen`` (127.0.0.0/8). It never reads /etc/resolv.conf or
/etc/hosts and never forwards to the network: names under ``.test`` that are not configured
answer NXDOMAIN at once (``local=/test/``). ``start()`` returns once dnsmasq answers a query.

Record mapping (dnsmasq 2.90):
- ``mx``       -> ``mx-host=<domain>,<exchange>,<preference>``
- ``a``        -> ``host-record=<name>,<address>`` (one line per address, IPv4 or IPv6)
- ``null_mx``  -> ``dns-rr=<domain>,15,000000`` (raw MX rdata: preference 0, root label)
- ``servfail`` -> ``server=/<domain>/#`` with no upstream; dnsmasq answers REFUSED, which
  dnspython treats exactly like SERVFAIL (``NoNameservers``)
All local answers carry ``ttl_s`` (``local-ttl``). NXDOMAIN answers carry no SOA.
"""

from __future__ import annotations

import csv
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.support.procs import ServiceHarness, wait_for

__all__ = ["DNSMASQ", "DnsServer", "spread_sites"]

DNSMASQ = "/usr/sbin/dnsmasq"
_PROBE_NAME = "dnsmasq-probe.test."


def spread_sites(addresses: Sequence[str]) -> Callable[[str], str]:
    """Return a stable site -> address map (crc32, not ``hash``, so it is the same every run)."""
    if not addresses:
        raise ValueError("spread_sites needs at least one address")

    def pick(site: str) -> str:
        return addresses[zlib.crc32(site.encode()) % len(addresses)]

    return pick


class DnsServer(ServiceHarness):
    """dnsmasq with MX, A/AAAA, null MX and failing names; a context manager."""

    def __init__(
        self,
        mx: Mapping[str, Sequence[tuple[int, str]]],
        a: Mapping[str, str | Sequence[str]],
        null_mx: Iterable[str] = (),
        servfail: Iterable[str] = (),
        ttl_s: int = 60,
        listen: str = "127.0.0.1",
        port: int | None = None,
        raw: Iterable[tuple[str, int, bytes]] = (),
    ) -> None:
        self.raw = list(raw)
        """Records given as (owner, type, rdata wire bytes): shapes the other arguments cannot make."""
        self.mx = {d: list(hosts) for d, hosts in mx.items()}
        self.a = {n: [v] if isinstance(v, str) else list(v) for n, v in a.items()}
        self.null_mx = list(null_mx)
        self.servfail = list(servfail)
        self.ttl_s = ttl_s
        self._host = listen
        self._port = port

    @classmethod
    def from_domain_mix(
        cls,
        csv_path: str | os.PathLike[str],
        site_ips: Mapping[str, str] | Callable[[str], str],
        **kwargs: object,
    ) -> DnsServer:
        """One ``MX 10 mx.<site>.test`` per domain of the CSV (domain,site,share), and an A for
        every ``mx.<site>.test`` from ``site_ips`` (a dict or a callable, e.g. ``spread_sites``).
        """
        pick = site_ips if callable(site_ips) else site_ips.__getitem__
        mx: dict[str, list[tuple[int, str]]] = {}
        a: dict[str, str] = {}
        with open(csv_path, newline="") as fh:
            for row in csv.DictReader(fh):
                exchange = f"mx.{row['site']}.test"
                mx[row["domain"]] = [(10, exchange)]
                a.setdefault(exchange, pick(row["site"]))
        return cls(mx=mx, a=a, **kwargs)  # type: ignore[arg-type]

    def _repr_extra(self) -> str:
        return f" mx={len(self.mx)} a={len(self.a)} null_mx={len(self.null_mx)} servfail={len(self.servfail)}"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise RuntimeError(f"{type(self).__name__} has no log until start()")
        return self._dir / "dnsmasq.log"

    def config_text(self) -> str:
        lines = [
            "no-resolv",
            "no-hosts",
            "local=/test/",
            f"local-ttl={self.ttl_s}",
            "log-queries",
            f"host-record={_PROBE_NAME.rstrip('.')},127.0.0.1",
        ]
        for domain, hosts in self.mx.items():
            lines += [f"mx-host={domain},{name},{pref}" for pref, name in hosts]
        for name, addrs in self.a.items():
            lines += [f"host-record={name},{addr}" for addr in addrs]
        # RFC 7505 null MX: rdata = 16-bit preference 0 + the root name (a single zero octet).
        lines += [f"dns-rr={domain},15,000000" for domain in self.null_mx]
        lines += [f"server=/{domain}/#" for domain in self.servfail]
        lines += [f"dns-rr={owner},{rtype},{rdata.hex()}" for owner, rtype, rdata in self.raw]
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> DnsServer:
        """Write the config, start dnsmasq and wait until it answers a query."""
        self._begin_start()
        self._dir = Path(tempfile.mkdtemp(prefix="dnsmasq-"))
        conf = self._dir / "dnsmasq.conf"
        conf.write_text(self.config_text())
        argv = [
            DNSMASQ,
            "--keep-in-foreground",
            f"--conf-file={conf}",
            f"--listen-address={self._host}",
            "--bind-interfaces",
            f"--port={self._port}",
            "--pid-file=",
            f"--log-facility={self.log_path}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")  # else it drops to "nobody" and cannot write the log
        self._spawn(argv, self._dir / "stdout.log", name="dnsmasq")
        wait_for(self._answers, timeout_s, what=f"dnsmasq on {self._host}:{self._port}")
        return self

    def _answers(self) -> bool:
        assert self._proc is not None
        self._proc.check_alive()
        query = dns.message.make_query(_PROBE_NAME, dns.rdatatype.A)
        try:
            dns.query.udp(query, self._host, port=self.port, timeout=0.2)
        except (OSError, dns.exception.Timeout):
            return False
        return True

    def queries(self, name: str | None = None) -> list[tuple[str, str]]:
        """(type, name) of each query dnsmasq logged, optionally only for ``name``."""
        found: list[tuple[str, str]] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return found
        for line in text.splitlines():
            marker = line.find(": query[")
            if marker < 0:
                continue
            rest = line[marker + len(": query[") :]
            qtype, _, tail = rest.partition("] ")
            qname = tail.split(" ", 1)[0]
            if qname == _PROBE_NAME.rstrip("."):
                continue
            if name is None or qname == name.rstrip("."):
                found.append((qtype, qname))
        return found
