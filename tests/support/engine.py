"""Run the real engine (`mta-engine serve`) as a subprocess for integration tests and benchmarks.

Contract: writes a TOML config into its own directory (spool, sockets, logs all inside it),
starts the supervisor as a ManagedProcess, and waits until ingest answers and every worker is
connected. Talks to it only the way a user would: HTTP inject API, control socket, accounting log.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mta_engine.control.protocol import request

from .procs import ManagedProcess, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table: {key = value, ...}
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def child_pid(engine_pid: int, role: str) -> int | None:
    """The pid of the supervisor's child running ``_child <role>``, from /proc (Linux)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != engine_pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"_child" in argv and role.encode() in argv:
            return int(entry)
    return None


class Engine:
    def __init__(self, workdir: Path, *, dns_port: int, dns_host: str = "127.0.0.1", smtp_port: int,
                 workers: int = 2, extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.submission_port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "spool": {"path": str(self.dir / "spool")},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "submission": {"listen": f"127.0.0.1:{self.submission_port}"},
            "control": {"socket": str(self.dir / "control.sock")},
            "dns": {"nameservers": [dns_host], "port": dns_port, "timeout_s": 2.0},
            "delivery": {"workers": workers, "port": smtp_port, "ehlo_name": "mta.test"},
            "queue": {"retry_intervals_s": [1.0]},
            "log": {"accounting": str(self.dir / "accounting.jsonl")},
        }
        for name, body in (extra or {}).items():
            sections.setdefault(name, {}).update(body)
        self.config_path = self.dir / "engine.toml"
        self.config_path.write_text("".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items()) + "\n"
            for name, body in sections.items()))
        self.control_path = str(self.dir / "control.sock")
        self.accounting_path = self.dir / "accounting.jsonl"
        self.workers = workers
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> "Engine":
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = ManagedProcess([sys.executable, "-m", "mta_engine.cli", "serve", "--config", str(self.config_path)],
                                   self.dir / f"engine-{self.starts}.log", name="engine", env=env, cwd=str(self.dir))
        self.proc.start()
        wait_for(lambda: self._ready(), timeout_s, interval_s=0.05, what="engine ready (ingest up, workers connected)")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        self.proc.check_alive()
        try:
            st = self.status()
        except (OSError, ConnectionError):
            return False
        if len(st["workers"]) != self.workers:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        resp = request(self.control_path, {"cmd": "status"}, timeout_s=10)
        assert resp["ok"], resp
        return resp["status"]  # type: ignore[no-any-return]

    def inject(self, body: dict[str, Any], *, expect_status: int = 200) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/api/inject/v1",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        assert status == expect_status, (status, data[:2000])
        return json.loads(data)  # type: ignore[no-any-return]

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        if not self.accounting_path.exists():
            return []
        out = []
        data = self.accounting_path.read_bytes()
        # the accounting process may be half-way through a line: only whole lines are events yet
        for line in data[:data.rfind(b"\n") + 1].splitlines():
            if line.strip():
                ev = json.loads(line)
                if type_ is None or ev["type"] == type_:
                    out.append(ev)
        return out

    def final_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["type"] in ("Delivery", "Bounce", "Expiration", "AdminBounce")]

    def wait_final(self, n: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            assert self.proc is not None
            self.proc.check_alive()
            ev = self.final_events()
            return ev if len(ev) >= n else None

        return wait_for(enough, timeout_s, interval_s=0.1, what=f"{n} final outcomes in the accounting log")  # type: ignore[return-value]

    def pids(self) -> dict[str, int]:
        st = self.status()
        return {"manager": st["pid"], **{f"worker-{w['shard']}": w["pid"] for w in st["workers"]}}

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(timeout_s=timeout_s)
        return code

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
