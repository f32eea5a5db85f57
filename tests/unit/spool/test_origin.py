"""The origin index keeps a message's tenant, campaign and addresses for correlation, and trims by age."""
from __future__ import annotations

from pathlib import Path

import pytest

from mta_engine.spool.origin import BLOCK, OriginIndex
from mta_engine.spool.store import Spool

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool", map_size_mb=64)
    yield s
    s.close()


def put(spool: Spool, idx: OriginIndex, msg_id: int, n: int, created_ms: int = T0, tenant: str | None = "acme") -> None:
    with spool.write() as txn:
        idx.put(txn, idx.items(msg_id, tenant=tenant, campaign="spring", sender="news@s.test", created_ms=created_ms,
                               addresses=[f"u{i}@d.test" for i in range(n)]))


def test_message_and_addresses_read_back(spool: Spool) -> None:
    """A message's labels and any recipient's address (across blocks) are found by id and index."""
    idx = OriginIndex(spool, retention_s=86400)
    put(spool, idx, 7, BLOCK + 5)
    with spool.read() as txn:
        o = idx.get(txn, 7)
        assert (o.tenant, o.campaign, o.sender, o.created_ms, o.n_rcpt) == ("acme", "spring", "news@s.test", T0,
                                                                           BLOCK + 5)
        assert idx.address(txn, 7, 0) == "u0@d.test" and idx.address(txn, 7, BLOCK + 4) == f"u{BLOCK + 4}@d.test"
        assert idx.address(txn, 7, BLOCK + 5) is None and idx.get(txn, 8) is None
        assert idx.contains(txn, o, "U3@D.test") is True and idx.contains(txn, o, "x@d.test") is False
        assert idx.contains(txn, o, "u3@d.test", max_blocks=1) is None


def test_trim_removes_only_expired_messages_and_is_bounded(spool: Spool) -> None:
    """Trim deletes the oldest messages past retention (with their blocks), at most max_messages per call."""
    idx = OriginIndex(spool, retention_s=86400)
    for m in range(1, 5):
        put(spool, idx, m, 3 if m != 2 else BLOCK * 2, created_ms=T0 + m)
    put(spool, idx, 5, 2, created_ms=T0 + 2 * DAY_MS)
    with spool.write() as txn:
        assert idx.trim(txn, T0 + DAY_MS + 10, max_messages=2) == 2
    with spool.read() as txn:
        assert idx.get(txn, 1) is None and idx.get(txn, 2) is None and idx.address(txn, 2, BLOCK) is None
        assert idx.get(txn, 3) is not None
    with spool.write() as txn:
        assert idx.trim(txn, T0 + DAY_MS + 10, max_messages=100) == 2
    with spool.read() as txn:
        assert idx.get(txn, 4) is None and idx.get(txn, 5) is not None
        assert txn.stat(idx.db)["entries"] == 2  # message 5: header + one block


def test_undecodable_record_reads_as_absent_and_is_trimmed(spool: Spool) -> None:
    """A corrupt header is treated as unknown, never raises, and trim removes it."""
    idx = OriginIndex(spool, retention_s=86400)
    with spool.write() as txn:
        txn.put((9).to_bytes(8, "big"), b"\xc1garbage", db=idx.db)
    with spool.read() as txn:
        assert idx.get(txn, 9) is None
    with spool.write() as txn:
        assert idx.trim(txn, T0, max_messages=5) == 1
