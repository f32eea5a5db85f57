"""What a job frame carries per recipient: everything for a rendered body, only index and address
for a shared body unless the recipient has DSN parameters (the worker passes those on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mta_engine.ingest.commit import write_submissions
from mta_engine.ingest.inject import parse_request
from tests.unit.sched import fakes


def _jobs(tmp_path: Path, content: Any, recipients: list[Any]) -> list[dict[str, Any]]:
    mgr, spool, clock, link, acct = fakes.connected_manager(tmp_path)
    sub = parse_request({"envelope_sender": "s@x.test", "content": content, "recipients": recipients},
                        now_s=clock.now, boundary="b")
    write_submissions(spool, [sub], int(clock.now * 1000))
    asyncio.run(mgr.tick())
    acct.close()
    spool.close()
    return link.jobs()


def test_shared_body_jobs_carry_index_and_address_and_dsn_parameters_only(tmp_path: Path) -> None:
    (job,) = _jobs(tmp_path, "From: s@x.test\n\nsame for all",
                   ["a@y.test", {"email": "b@y.test", "notify": "failure", "orcpt": "rfc822;b@old.test"},
                    {"email": "c@y.test", "name": "C"}])
    assert job["per_rcpt"] is False
    assert job["rcpts"] == [[0, "a@y.test"], [1, "b@y.test", None, None, "FAILURE", "rfc822;b@old.test"],
                            [2, "c@y.test"]]


def test_rendered_body_jobs_carry_name_and_variables(tmp_path: Path) -> None:
    (job,) = _jobs(tmp_path, {"subject": "Hi {{ first }}", "from": "s@x.test", "text_body": "Dear {{ first }}"},
                   [{"email": "a@y.test", "name": "A", "substitutions": {"first": "Ann"}}])
    assert job["per_rcpt"] is True
    assert job["rcpts"] == [[0, "a@y.test", "A", {"first": "Ann"}, None, None]]
