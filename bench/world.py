"""The bench world: a real dnsmasq serving MX for every domain of the shared domain mix, eight Postfix
smtp-sink listeners on 127.0.0.10-17 (one port), and a seeded recipient generator.

Everything listens on 127.0.0.0/8 only and is stopped by PID (``World.stop`` is idempotent).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tests.support.dnsmasq import DnsServer, spread_sites
from tests.support.procs import free_port
from tests.support.sinks import SmtpSink

DATA = Path("/work/shared/data")
DOMAIN_MIX = DATA / "domain-mix.csv"
NEWSLETTER_TXT = DATA / "newsletter.txt"
NEWSLETTER_HTML = DATA / "newsletter.html"

DNS_HOST = "127.0.0.9"
SINK_HOSTS = [f"127.0.0.{i}" for i in range(10, 18)]
SENDER = "bounces@news.sender.test"
FROM = {"email": "letters@news.sender.test", "name": "Orchard Letter"}
SUBJECT = "Orchard Letter — November"

FIRST_NAMES = ["Ada", "Ben", "Chloé", "Dmitri", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas",
               "Kofi", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tomás"]


def load_mix(path: Path = DOMAIN_MIX) -> list[tuple[str, str, float]]:
    with open(path, newline="") as fh:
        return [(r["domain"], r["site"], float(r["share"])) for r in csv.DictReader(fh)]


@dataclass
class RecipientGenerator:
    """Seeded recipients: domain drawn by ``share``; ``u<N>@domain``; a first name; an unsubscribe URL."""

    seed: int = 1
    mix: list[tuple[str, str, float]] = field(default_factory=load_mix)

    def __post_init__(self) -> None:
        self.domains = [d for d, _, _ in self.mix]
        self.site_of = {d: s for d, s, _ in self.mix}
        self._cum = list(itertools.accumulate(s for _, _, s in self.mix))

    def generate(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        rng = random.Random(self.seed)
        total = self._cum[-1]
        out = []
        for i in range(start, start + n):
            domain = self.domains[min(bisect.bisect_right(self._cum, rng.random() * total), len(self.domains) - 1)]
            email = f"u{i}@{domain}"
            token = f"{rng.getrandbits(64):016x}"
            out.append({"email": email,
                        "substitutions": {"first_name": rng.choice(FIRST_NAMES), "email": email,
                                          "unsubscribe_url": f"https://news.sender.test/unsubscribe/{i}/{token}"}})
        return out


def personalised_content() -> dict[str, Any]:
    """W1 content: the object form, rendered per recipient (Jinja placeholders stay in)."""
    return {"subject": SUBJECT, "from": FROM, "text_body": NEWSLETTER_TXT.read_text(),
            "html_body": NEWSLETTER_HTML.read_text()}


def shared_raw_message() -> str:
    """W2 content: one ~10 KB multipart/alternative raw message, placeholders filled with fixed values."""
    fixed = {"{{ first_name }}": "Reader", "{{ email }}": "subscriber@news.sender.test",
             "{{ unsubscribe_url }}": "https://news.sender.test/unsubscribe"}

    def fill(text: str) -> str:
        for k, v in fixed.items():
            text = text.replace(k, v)
        return text

    boundary = "=_bench_shared_body_0001"
    txt, html = fill(NEWSLETTER_TXT.read_text()), fill(NEWSLETTER_HTML.read_text())
    msg = (f'From: "Orchard Letter" <{FROM["email"]}>\n'
           "To: Subscribers <subscribers@news.sender.test>\n"
           "Subject: =?utf-8?q?Orchard_Letter_=E2=80=94_November?=\n"
           "Date: Fri, 28 Nov 2025 09:00:00 +0000\n"
           "Message-ID: <bench-shared-0001@news.sender.test>\n"
           "MIME-Version: 1.0\n"
           f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
           f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
           f"{txt}\n--{boundary}\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
           f"{html}\n--{boundary}--\n")
    assert "{{" not in msg and "{%" not in msg
    return msg


class QuietDnsServer(DnsServer):
    """The tests' dnsmasq without ``log-queries``: logging every query to a file makes dnsmasq slow
    enough that a burst of lookups overflows its UDP receive buffer (RcvbufErrors) and queries are lost."""

    def config_text(self) -> str:
        return "\n".join(line for line in super().config_text().splitlines() if line != "log-queries") + "\n"


def common_port(hosts: list[str]) -> int:
    """A TCP port free on every one of ``hosts`` (the sinks of a world share one port)."""
    import socket

    for _ in range(20):
        port = free_port(hosts[0])
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError(f"no TCP port free on all of {hosts[0]}..{hosts[-1]}")


def start_all(dns: Any, services: list[Any]) -> None:
    """Start DNS then every service; on any failure stop what started and re-raise."""
    try:
        dns.start()
        for s in services:
            s.start()
    except BaseException:
        stop_all(dns, services)
        raise


def stop_all(dns: Any, services: list[Any]) -> None:
    for s in services:
        try:
            s.stop()
        except Exception:  # keep stopping the others
            pass
    dns.stop()


class World:
    """dnsmasq on 127.0.0.9 + 8 smtp-sinks on 127.0.0.10-17 (same port). A context manager."""

    def __init__(self, ttl_s: int = 3600, log_queries: bool = False) -> None:
        self.port = common_port(SINK_HOSTS)
        cls = DnsServer if log_queries else QuietDnsServer
        self.dns = cls.from_domain_mix(DOMAIN_MIX, site_ips=spread_sites(SINK_HOSTS), listen=DNS_HOST,
                                             ttl_s=ttl_s)
        self.sinks = [SmtpSink(h, self.port) for h in SINK_HOSTS]

    def start(self) -> "World":
        start_all(self.dns, self.sinks)
        return self

    def stop(self) -> None:
        stop_all(self.dns, self.sinks)

    def counters(self) -> dict[str, int]:
        tot = {"sess": 0, "quit": 0, "mesg": 0}
        for s in self.sinks:
            for k, v in s.counters().items():
                tot[k] += v
        return tot

    def __enter__(self) -> "World":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
