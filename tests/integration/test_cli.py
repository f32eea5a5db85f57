"""The command line as a user meets it: config errors, `inject FILE.json`, `ctl status`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.engine import Engine

pytestmark = pytest.mark.integration


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mta_engine.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_serve_with_unknown_key_exits_naming_key_and_file(tmp_path: Path) -> None:
    """`serve --config` with a typo stops at once with exit 2, naming the key and the file."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[delivery]\nwokers = 2\n")
    res = run_cli("serve", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "delivery.wokers" in res.stderr and str(cfg) in res.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or created


def test_ctl_without_engine_says_what_to_do(tmp_path: Path) -> None:
    """`ctl status` with no engine running explains how to start one."""
    res = run_cli("ctl", "status", cwd=tmp_path)
    assert res.returncode != 0
    assert "no engine is listening" in res.stderr and "make run" in res.stderr


def test_inject_file_and_ctl_status(mail, tmp_path: Path) -> None:
    """`mta-engine inject FILE.json` queues a campaign; `ctl status` shows it delivered."""
    with Engine(tmp_path / "engine", dns_port=mail.dns.port, dns_host=mail.dns.host, smtp_port=mail.port,
                workers=1) as eng:
        req = tmp_path / "campaign.json"
        req.write_text(json.dumps({"envelope_sender": "a@sender.test", "content": "From: a@sender.test\n\nhi\n",
                                   "recipients": ["x@d000.test", "y@d001.test", "broken"]}))
        res = run_cli("inject", "--config", str(eng.config_path), str(req), cwd=eng.dir)
        assert res.returncode == 0, res.stderr
        answer = json.loads(res.stdout)
        assert answer["success_count"] == 2 and answer["failed_recipients"] == ["broken"]
        eng.wait_final(2)
        res = run_cli("ctl", "--config", str(eng.config_path), "status", cwd=eng.dir)
        assert res.returncode == 0, res.stderr
        assert "delivered 2" in res.stdout and "workers     1/1 connected" in res.stdout
        res = run_cli("ctl", "--config", str(eng.config_path), "status", "--json", cwd=eng.dir)
        assert json.loads(res.stdout)["status"]["since_start"]["delivered"] == 2
