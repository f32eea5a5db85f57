"""POST /api/inject/bsmtp queues every message of a good batch file, and nothing of a bad one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mta_engine.ingest.bsmtp import inject_bsmtp_file
from tests.support.submission_server import SubmissionServer

pytestmark = pytest.mark.integration

GOOD = ("EHLO batch.test\r\n"
        "MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@rcpt.test>\r\nRCPT TO:<c@rcpt.test> NOTIFY=NEVER\r\nDATA\r\n"
        "From: a@sender.test\r\nSubject: one\r\n\r\n..leading dot\r\n.\r\n"
        "\r\n"
        "MAIL FROM:<>\r\nRCPT TO:<d@rcpt.test>\r\nDATA\r\nFrom: mailer@sender.test\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
BAD = GOOD.replace("RCPT TO:<d@rcpt.test>", "RCPT TO:<not-an-address>")


def _post(srv: SubmissionServer, body: str, query: str = "") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.http_port}/api/inject/bsmtp{query}", data=body.encode(),
                                 headers={"Content-Type": "application/batch-SMTP"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_good_batch_is_queued_in_file_order(tmp_path: Path) -> None:
    """Both transactions are queued (unstuffed, for the given tenant) and their ids returned in order."""
    with SubmissionServer(tmp_path, bsmtp_http=True) as srv:
        status, answer = _post(srv, GOOD, "?tenant=acme")
        assert status == 200 and answer["messages"] == 2, answer
        first, second = (srv.queued(q) for q in answer["queue_ids"])
        assert first is not None and second is not None
        assert [r.address for r in first.recipients] == ["b@rcpt.test", "c@rcpt.test"]
        assert first.recipients[1].notify == "NEVER"
        assert first.body == {"v": 1, "raw": "From: a@sender.test\r\nSubject: one\r\n\r\n.leading dot\r\n",
                              "template": False}
        assert second.message.sender == "" and first.message.tenant == "acme"


def test_bad_batch_is_400_with_line_number_and_queues_nothing(tmp_path: Path) -> None:
    """One bad RCPT in the second block rejects the whole file (line 13 named); the first block is not queued."""
    with SubmissionServer(tmp_path, bsmtp_http=True) as srv:
        status, answer = _post(srv, BAD)
        assert status == 400, answer
        assert answer["lines"][0]["line"] == 13 and "RCPT" in answer["lines"][0]["reason"]
        assert answer["errors"][0].startswith("line 13: ")
        assert srv.message_count() == 0


def test_cli_helper_posts_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """inject_bsmtp_file returns 0 and prints the queue ids for a good file, 1 for a bad one."""
    (tmp_path / "good.bsmtp").write_text(GOOD)
    (tmp_path / "bad.bsmtp").write_text(BAD)
    with SubmissionServer(tmp_path, bsmtp_http=True) as srv:
        url = f"http://127.0.0.1:{srv.http_port}/api/inject/bsmtp"
        assert inject_bsmtp_file(url, str(tmp_path / "good.bsmtp")) == 0
        assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["queue_ids"]) == 2
        assert inject_bsmtp_file(url, str(tmp_path / "bad.bsmtp")) == 1
        assert "line 13" in capsys.readouterr().err
        assert srv.message_count() == 2
