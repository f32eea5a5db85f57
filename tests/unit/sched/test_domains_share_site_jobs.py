"""One message's recipients at domains that share an MX farm (a site) travel in the same jobs, as
Postfix groups per next hop; a suspended domain, or one with its own [tls] policy, keeps jobs of its
own. Real LMDB, a fake worker link and a resolver that puts two domains on one site."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from mta_engine.routing.mx import MxHost, MxPlan
from mta_engine.sched.ready import StagedJob
from tests.unit.sched.fakes import connected_manager

SHARED = "mx.farm.test"


class FarmResolver:
    """a.test, b.test and c.test share one MX host (one site); every other domain has its own."""

    def cached_plan(self, domain: str) -> MxPlan:
        host = SHARED if domain in ("a.test", "b.test", "c.test") else f"mx.{domain}"
        return MxPlan(domain, (MxHost(10, host),), False, host, 300.0)

    async def resolve_mx(self, domain: str) -> MxPlan:
        return self.cached_plan(domain)


def jobs_for(tmp: Path, rcpts: list[str], *, suspend: str | None = None, **sections: Any) -> list[dict[str, Any]]:
    mgr, spool, clock, link, acct = connected_manager(tmp, **sections)
    mgr.resolver = FarmResolver()
    if suspend:
        mgr.suspend("domain", suspend)
    sub = parse_request({"envelope_sender": "s@x.test", "content": "From: s@x.test\n\nx", "recipients": rcpts},
                        now_s=clock.now, boundary="b")
    write_submissions(spool, [sub], int(clock.now * 1000))
    try:
        asyncio.run(mgr.tick())
        return link.jobs()
    finally:
        acct.close()
        spool.close()


def shape(jobs: list[dict[str, Any]]) -> list[tuple[str, list[str] | None, list[str]]]:
    return sorted((j["domain"], j.get("domains"), [r[1] for r in j["rcpts"]]) for j in jobs)


def test_domains_of_one_site_share_a_job(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path, ["1@a.test", "2@b.test", "3@a.test", "4@other.test"])
    assert shape(jobs) == [("a.test", ["a.test", "b.test"], ["1@a.test", "3@a.test", "2@b.test"]),
                           ("other.test", None, ["4@other.test"])]
    assert {j["site"] for j in jobs} == {SHARED, "mx.other.test"}


def test_a_job_names_only_the_domains_of_its_own_recipients(tmp_path: Path) -> None:
    """Two recipients per transaction: the jobs split inside the site, each listing its domains."""
    jobs = jobs_for(tmp_path, ["1@a.test", "2@a.test", "3@b.test", "4@c.test"],
                    delivery={"max_recipients_per_transaction": 2})
    assert shape(jobs) == [("a.test", None, ["1@a.test", "2@a.test"]),
                           ("b.test", ["b.test", "c.test"], ["3@b.test", "4@c.test"])]


def test_suspended_domain_keeps_its_own_job_and_the_others_go(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path, ["1@a.test", "2@b.test", "3@c.test"], suspend="b.test")
    assert shape(jobs) == [("a.test", ["a.test", "c.test"], ["1@a.test", "3@c.test"])]


def test_domain_with_its_own_tls_policy_is_not_merged(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path, ["1@a.test", "2@b.test", "3@c.test"], tls={"per_domain": {"b.test": "verify"}})
    assert shape(jobs) == [("a.test", ["a.test", "c.test"], ["1@a.test", "3@c.test"]),
                           ("b.test", None, ["2@b.test"])]


def test_a_split_job_keeps_its_domains() -> None:
    job = StagedJob(1, "a.test", SHARED, (0, None, None), False, [(b"k1", 0, None), (b"k2", 1, None)],
                    ("a.test", "b.test"))
    rest = job.split(1)
    assert rest.all_domains == job.all_domains == ("a.test", "b.test")
    assert StagedJob(1, "a.test", SHARED, (0, None, None), False).all_domains == ("a.test",)
