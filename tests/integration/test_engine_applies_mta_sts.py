"""The engine applies MTA-STS end to end (RFC 8461): dnsmasq serves MX, A and `_mta-sts` TXT records,
a local HTTPS server the policies, and two STARTTLS receivers take the mail, one with a certificate
valid for its MX names and one with a certificate for another name."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import make_certs
from tests.support.dns_txt import TxtDnsServer
from tests.support.engine import REPO, Engine
from tests.support.faultserver import Script
from tests.support.https_server import CannedResponse, HttpsServer
from tests.support.procs import ManagedProcess, free_port, wait_for, wait_port

pytestmark = pytest.mark.integration

DNS_IP, GOOD_MX_IP, BAD_MX_IP, WEB_IP = "127.0.0.170", "127.0.0.171", "127.0.0.172", "127.0.0.173"
PATH = "/.well-known/mta-sts.txt"
GOOD_MX = ["mx.enforce.test", "mx.unlisted.test", "mx.plain.test", "mx.cached.test",  # on GOOD_MX_IP
           "mx.override.test", "mx.mixed.test", "rogue.mixed.test", "mx.testmx.test"]
BAD_MX = ["mx.badcert.test", "mx.testing.test"]  # on BAD_MX_IP, whose certificate names wrong.test
POLICIES = {
    "enforce.test": "mode: enforce\nmx: mx.enforce.test",
    "unlisted.test": "mode: enforce\nmx: mx.other.test",  # its real MX is not in the policy
    "badcert.test": "mode: enforce\nmx: *.badcert.test",
    "testing.test": "mode: testing\nmx: mx.testing.test",
    "cached.test": "mode: enforce\nmx: mx.cached.test",
    "override.test": "mode: enforce\nmx: mx.other.test",  # but [tls] per_domain names it: that wins
    "mixed.test": "mode: enforce\nmx: mx.mixed.test",  # its preferred MX (rogue.mixed.test) is not listed
    "testmx.test": "mode: testing\nmx: mx.other.test",
}


@dataclass
class World:
    engine: Engine
    web: HttpsServer
    records: dict[str, Path]  # receiver IP -> its JSON-lines record of accepted messages

    def arrived(self, ip: str) -> list[str]:
        return [r for rcpts in self.transactions(ip) for r in rcpts]

    def transactions(self, ip: str) -> list[list[str]]:
        """The recipients of each message the receiver at ``ip`` accepted."""
        path = self.records[ip]
        if not path.exists():
            return []
        return [json.loads(line)["rcpts"] for line in path.read_text().splitlines() if line]

    def send(self, *rcpts: str) -> None:
        """One message to ``rcpts``."""
        self.engine.inject({"envelope_sender": "a@sender.test", "recipients": list(rcpts),
                            "content": f"From: a@sender.test\nTo: {rcpts[0]}\nSubject: sts\n\nhello\n"})

    def events(self, rcpt: str) -> list[dict[str, Any]]:
        return [e for e in self.engine.events() if e.get("recipient") == rcpt]

    def first_outcome(self, rcpt: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            assert self.engine.proc is not None
            self.engine.proc.check_alive()
            outcomes = [e for e in self.events(rcpt) if e["type"] in ("Delivery", "TransientFailure", "Bounce")]
            return outcomes[0] if outcomes else None

        return wait_for(found, 60, interval_s=0.05, what=f"an outcome for {rcpt}")  # type: ignore[return-value]


def _receiver(tmp: Path, ip: str, port: int, cert_file: str, key_file: str) -> tuple[ManagedProcess, Path]:
    record = tmp / f"received-{ip}.jsonl"
    script = Script(certfile=cert_file, keyfile=key_file)
    proc = ManagedProcess([sys.executable, "-m", "tests.support.faultserver", "--host", ip, "--port", str(port),
                           "--script", script.to_json(), "--record", str(record)],
                          tmp / f"receiver-{ip}.log", name=f"receiver-{ip}", cwd=str(REPO)).start()
    wait_port(ip, port, 10, proc=proc)
    return proc, record


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("engine-sts")
    good = make_certs(tmp / "good", GOOD_MX)
    wrong = make_certs(tmp / "wrong", ["wrong.test"])
    web_certs = make_certs(tmp / "web", [f"mta-sts.{d}" for d in POLICIES])
    smtp_cas = tmp / "smtp-cas.pem"  # both chains verify; only the names differ
    smtp_cas.write_text(Path(good.ca_file).read_text() + Path(wrong.ca_file).read_text())

    domains = [*POLICIES, "plain.test"]
    mx = {d: [(10, f"mx.{d}")] for d in domains}
    mx["mixed.test"] = [(5, "rogue.mixed.test"), (10, "mx.mixed.test")]
    mx["mate.test"] = [(10, "mx.plain.test")]  # no policy, the MX host (site) of plain.test
    mx["enforcemate.test"] = [(10, "mx.enforce.test")]  # no policy, the MX host of enforce.test
    a = {**{n: GOOD_MX_IP for n in GOOD_MX}, **{n: BAD_MX_IP for n in BAD_MX},
         **{f"mta-sts.{d}": WEB_IP for d in POLICIES}}
    txt = {f"_mta-sts.{d}": [f"v=STSv1; id={d.split('.')[0]}2024"] for d in POLICIES}
    dns = TxtDnsServer(mx=mx, a=a, txt=txt, listen=DNS_IP, ttl_s=300).start()
    web = HttpsServer(WEB_IP, web_certs.cert_file, web_certs.key_file).start()
    for domain, body in POLICIES.items():
        web.set(f"mta-sts.{domain}", PATH, CannedResponse(f"version: STSv1\n{body}\nmax_age: 86400\n".encode()))
    port = free_port(GOOD_MX_IP)
    good_proc, good_record = _receiver(tmp, GOOD_MX_IP, port, good.cert_file, good.key_file)
    bad_proc, bad_record = _receiver(tmp, BAD_MX_IP, port, wrong.cert_file, wrong.key_file)
    extra = {"tls": {"ca_file": str(smtp_cas), "per_domain": {"override.test": "required"}},
             "mta_sts": {"ca_file": web_certs.ca_file, "port": web.port, "fetch_timeout_s": 5.0}}
    engine = Engine(tmp / "engine", dns_port=dns.port, dns_host=dns.host, smtp_port=port, workers=1, extra=extra)
    try:
        engine.start()
        yield World(engine, web, {GOOD_MX_IP: good_record, BAD_MX_IP: bad_record})
    finally:
        engine.stop()
        bad_proc.stop()
        good_proc.stop()
        web.stop()
        dns.stop()


def _logged(world: World, event: str) -> list[dict[str, Any]]:
    """The engine's JSON log lines (all processes) whose event is ``event``."""
    lines = [json.loads(line) for line in world.engine.log_text().splitlines() if event in line]
    return [e for e in lines if e.get("event") == event]


def test_enforce_delivers_to_matching_mx_with_verified_tls(world: World) -> None:
    """enforce + an MX in the policy with a valid certificate: delivered over verified TLS."""
    world.send("x@enforce.test")
    outcome = world.first_outcome("x@enforce.test")
    assert outcome["type"] == "Delivery", outcome
    assert outcome["mx"] == "mx.enforce.test" and outcome["tls_verified"] is True, outcome
    assert outcome["tls_mta_sts"] == "enforce", outcome
    assert "x@enforce.test" in world.arrived(GOOD_MX_IP)


def test_enforce_defers_when_no_mx_matches_the_policy(world: World) -> None:
    """enforce + an MX outside the policy: deferred with 451 4.7.5, and nothing is sent anywhere."""
    world.send("x@unlisted.test")
    outcome = world.first_outcome("x@unlisted.test")
    assert (outcome["type"], outcome["code"], outcome["enhanced"]) == ("TransientFailure", 451, "4.7.5"), outcome
    assert "MTA-STS" in outcome["response"]
    assert "x@unlisted.test" not in world.arrived(GOOD_MX_IP) + world.arrived(BAD_MX_IP)


def test_enforce_defers_when_the_mx_certificate_does_not_name_the_host(world: World) -> None:
    """enforce + a certificate for another name: deferred, no plaintext fallback, nothing arrives."""
    world.send("x@badcert.test")
    outcome = world.first_outcome("x@badcert.test")
    assert (outcome["type"], outcome["code"]) == ("TransientFailure", 451), outcome
    assert "Hostname mismatch" in outcome["response"], outcome
    assert "x@badcert.test" not in world.arrived(BAD_MX_IP)


def test_testing_mode_delivers_despite_a_bad_certificate_and_logs_it(world: World) -> None:
    """testing + a certificate for another name: delivered as before, and the failure is logged."""
    world.send("x@testing.test")
    outcome = world.first_outcome("x@testing.test")
    assert outcome["type"] == "Delivery" and outcome["tls_verified"] is False, outcome
    assert "x@testing.test" in world.arrived(BAD_MX_IP)

    (event,) = wait_for(lambda: _logged(world, "mta_sts_testing_tls_failed"), 30,  # type: ignore[misc]
                        what="the testing-mode TLS failure in the log")
    assert (event["domain"], event["mx"]) == ("testing.test", "mx.testing.test")
    assert "Hostname mismatch" in event["error"]


def test_enforce_skips_a_preferred_mx_outside_the_policy(world: World) -> None:
    """enforce: the lower-preference MX in the policy is used, not the preferred one outside it."""
    world.send("x@mixed.test")
    outcome = world.first_outcome("x@mixed.test")
    assert outcome["type"] == "Delivery" and outcome["mx"] == "mx.mixed.test", outcome
    assert outcome["tls_verified"] is True


def test_testing_mode_logs_an_mx_outside_the_policy_and_delivers(world: World) -> None:
    """testing + an MX the policy does not list: delivered to it, and the mismatch is logged."""
    world.send("x@testmx.test")
    outcome = world.first_outcome("x@testmx.test")
    assert outcome["type"] == "Delivery" and outcome["mx"] == "mx.testmx.test", outcome
    (event,) = wait_for(lambda: _logged(world, "mta_sts_testing_mx_mismatch"), 30,  # type: ignore[misc]
                        what="the testing-mode MX mismatch in the log")
    assert (event["domain"], event["mx"], event["policy_mx"]) == ("testmx.test", "mx.testmx.test", ["mx.other.test"])


def test_domain_without_policy_is_delivered_as_before(world: World) -> None:
    """No `_mta-sts` record: opportunistic TLS as before, no HTTPS request."""
    world.send("x@plain.test")
    outcome = world.first_outcome("x@plain.test")
    assert outcome["type"] == "Delivery" and outcome["tls_verified"] is False, outcome
    assert "tls_mta_sts" not in outcome, outcome
    assert world.web.count("mta-sts.plain.test") == 0


def test_explicit_tls_setting_for_the_domain_wins_over_its_policy(world: World) -> None:
    """[tls] per_domain names the domain: its policy is not even fetched, and mail goes per that setting."""
    world.send("x@override.test")
    outcome = world.first_outcome("x@override.test")
    assert outcome["type"] == "Delivery" and outcome["mx"] == "mx.override.test", outcome
    assert outcome["tls_verified"] is False and outcome["tls_version"], outcome  # "required": TLS, unverified
    assert world.web.count("mta-sts.override.test") == 0


def test_policy_is_fetched_once_for_many_messages(world: World) -> None:
    """Two messages, one after the other, to an enforce domain: one policy fetch."""
    for n in (1, 2):
        world.send(f"m{n}@cached.test")
        outcome = world.first_outcome(f"m{n}@cached.test")
        assert outcome["type"] == "Delivery" and outcome["tls_verified"] is True, outcome
    assert world.web.count("mta-sts.cached.test", PATH) == 1


def test_domains_sharing_an_mx_without_policies_share_one_transaction(world: World) -> None:
    """plain.test and mate.test have the same MX host and no policy: one message carries both
    recipients, as Postfix does per next hop."""
    world.send("one@plain.test", "two@mate.test")
    for rcpt in ("one@plain.test", "two@mate.test"):
        assert world.first_outcome(rcpt)["type"] == "Delivery"
    assert ["one@plain.test", "two@mate.test"] in [sorted(t) for t in world.transactions(GOOD_MX_IP)]


def test_a_domain_with_a_policy_is_not_sent_with_its_mx_mate(world: World) -> None:
    """enforce.test has an MTA-STS policy and enforcemate.test, on the same MX host, none: each
    recipient goes in its own transaction under its own domain's policy."""
    world.send("three@enforce.test", "four@enforcemate.test")
    enforced, mate = world.first_outcome("three@enforce.test"), world.first_outcome("four@enforcemate.test")
    assert enforced["type"] == mate["type"] == "Delivery", (enforced, mate)
    assert enforced["tls_mta_sts"] == "enforce" and "tls_mta_sts" not in mate, (enforced, mate)
    sent = world.transactions(GOOD_MX_IP)
    assert ["three@enforce.test"] in sent and ["four@enforcemate.test"] in sent
