"""The layering rule of STYLE.md: pure cores import no I/O; library code never installs uvloop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "mta_engine"
IO_MODULES = {"asyncio", "socket", "ssl", "uvloop", "lmdb", "time", "random", "structlog", "subprocess"}
PURE = ["smtp/reply.py", "smtp/body.py", "smtp/events.py", "smtp/_state.py", "smtp/connection.py",
        "sched/backoff.py", "delivery/outcome.py", "routing/mx.py", "spool/records.py", "model.py",
        "template/render.py", "ingest/inject.py", "dsn/status.py", "dsn/report.py", "sched/retry.py",
        "sched/throttle.py", "sched/window.py", "sched/site.py", "sched/limits.py", "sched/fairness.py",
        "sched/signals.py", "sched/ready.py", "smtp/address.py", "smtp/transaction.py", "routing/wire.py"]


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checking only do no I/O at run time
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_core_does_no_io(module: str) -> None:
    """Pure modules take bytes, values and `now` as inputs and import nothing that does I/O."""
    bad = imported(PKG / module) & IO_MODULES
    assert not bad, f"{module} imports {sorted(bad)}"


def test_only_process_mains_install_uvloop() -> None:
    """uvloop is chosen by proc/* entry points only; library code runs on any asyncio loop."""
    users = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "uvloop" in imported(p)
             or "import uvloop" in p.read_text()}
    assert users and all(u.startswith("proc/") for u in users), users
