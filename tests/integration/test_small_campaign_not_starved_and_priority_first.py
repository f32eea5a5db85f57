"""Fairness: a small campaign is not starved by a big one on the same site; higher priority goes first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Mail
from tests.support.engine import Engine

pytestmark = pytest.mark.integration


def test_small_campaign_and_priority_are_served_early(mail: Mail, tmp_path: Path) -> None:
    """One connection to the site: a 5-recipient campaign and a priority-9 campaign injected after a
    300-recipient campaign are delivered long before the big one is through."""
    site_domain = mail.domains[0]
    extra = {"sched": {"messages_per_job": 5,
                       "site": [{"domain": site_domain, "max_connections": 1, "initial_connections": 1}]}}
    body = "From: a@sender.test\nSubject: {{ n }}\n\nx\n"
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                workers=1, extra=extra) as eng:
        eng.inject({"envelope_sender": "a@sender.test", "campaign": "big", "dsn": False, "content": body,
                    "recipients": [{"email": f"big{i}@{site_domain}", "substitutions": {"n": str(i)}}
                                   for i in range(300)]})
        eng.inject({"envelope_sender": "a@sender.test", "campaign": "small", "dsn": False, "content": body,
                    "recipients": [{"email": f"small{i}@{site_domain}", "substitutions": {"n": str(i)}}
                                   for i in range(5)]})
        eng.inject({"envelope_sender": "a@sender.test", "campaign": "urgent", "priority": 9, "dsn": False,
                    "content": body, "recipients": [{"email": f"urgent{i}@{site_domain}",
                                                     "substitutions": {"n": str(i)}} for i in range(5)]})
        finals = eng.wait_final(310, timeout_s=120)
    assert {e["type"] for e in finals} == {"Delivery"}
    order = [e["recipient"] for e in sorted(finals, key=lambda e: e["event_seq"])]
    last_small = max(i for i, r in enumerate(order) if r.startswith("small"))
    last_urgent = max(i for i, r in enumerate(order) if r.startswith("urgent"))
    assert last_urgent < 100, order[:120]  # priority 9 overtakes the queued priority-0 jobs
    assert last_small < 150, order[:160]  # round robin: not behind all 300 of the big campaign
