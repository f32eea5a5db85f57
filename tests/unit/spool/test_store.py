"""Spool environment options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mta_engine.spool.store import Spool

READ = """
import sys
from mta_engine.spool.store import Spool
s = Spool(sys.argv[1], map_size_mb=64, readonly=True)
with s.read() as txn:
    print(txn.get(b"k", db=s.dbs["meta"]))
"""


def test_relaxed_spool_skips_fsync_but_commits_are_visible_to_other_processes(tmp_path: Path) -> None:
    """[spool] sync = false: LMDB opened without sync/metasync; a commit is seen at once by another process."""
    relaxed = Spool(tmp_path / "s", map_size_mb=64, sync=False)
    flags = relaxed.env.flags()
    assert flags["sync"] is False and flags["metasync"] is False and relaxed.synced is False
    with relaxed.write() as txn:
        txn.put(b"k", b"v", db=relaxed.dbs["meta"])
    out = subprocess.run([sys.executable, "-c", READ, str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "b'v'"
    relaxed.close()
    durable = Spool(tmp_path / "s", map_size_mb=64)
    assert durable.env.flags()["sync"] is True and durable.synced is True
    durable.close()
