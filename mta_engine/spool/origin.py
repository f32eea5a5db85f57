"""The origin index: who sent a message and to whom, kept after the spool has forgotten it (issue 5).

Contract: one LMDB named database, ``origin``, written by ingest in the same group commit as the
message (``ingest/commit.py``), read by the inbound listener's commits to correlate out-of-band
bounces and feedback reports with the tenant, campaign and recipient they are about. The queue
deletes a message as soon as its last recipient is final (docs/architecture.md), but bounces
and complaints arrive minutes to weeks later. Only kept when ``[inbound] listen`` is set (no
cost otherwise), and only for ``[inbound] origin_retention_days``: each commit trims at most a
few more messages than it adds, from the oldest, so the index does not grow without bound and
no commit does unbounded work.

Keys (fixed-width big-endian, so they sort by message id, and a message's header sorts before
its blocks): ``u64 msg id`` → ``[1, tenant, campaign, sender, created_ms, n_rcpt]`` and
``u64 msg id + u32 block`` → the recipient addresses ``BLOCK * block`` to ``BLOCK * block + BLOCK - 1``
(one put per 1,024 recipients, so a lookup decodes at most 1,024 addresses).

Failure: an undecodable record reads as absent (the report is then logged uncorrelated) and is
trimmed like any other. No asyncio; every function takes the caller's write or read transaction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import msgpack

if TYPE_CHECKING:
    import lmdb

    from .store import Spool

__all__ = ["DB_NAME", "BLOCK", "Origin", "OriginIndex"]

DB_NAME = b"origin"
BLOCK = 1024
VERSION = 1
_HEAD = struct.Struct(">Q")
_BLOCK = struct.Struct(">QI")


@dataclass(frozen=True, slots=True)
class Origin:
    """What a message was, as ingest accepted it."""

    msg_id: int
    tenant: str | None
    campaign: str | None
    sender: str
    created_ms: int
    n_rcpt: int


class OriginIndex:
    """The ``origin`` database of one spool, with its retention."""

    def __init__(self, spool: Spool, *, retention_s: float) -> None:
        self.spool = spool
        self.db = spool.dbs[DB_NAME.decode()]  # opened with the others in spool/store.py
        self.retention_ms = int(retention_s * 1000)

    def __repr__(self) -> str:
        return f"<OriginIndex {self.spool.path} retention_s={self.retention_ms / 1000:g}>"

    @staticmethod
    def items(msg_id: int, *, tenant: str | None, campaign: str | None, sender: str, created_ms: int,
              addresses: Sequence[str]) -> list[tuple[bytes, bytes]]:
        """The records for one message, in key order (for ``putmulti``)."""
        out = [(_HEAD.pack(msg_id), msgpack.packb([VERSION, tenant, campaign, sender, created_ms, len(addresses)],
                                                   use_bin_type=True))]
        for n, start in enumerate(range(0, len(addresses), BLOCK)):
            out.append((_BLOCK.pack(msg_id, n), msgpack.packb(list(addresses[start:start + BLOCK]),
                                                               use_bin_type=True)))
        return out

    def put(self, txn: lmdb.Transaction, items: list[tuple[bytes, bytes]]) -> None:
        if items:
            with txn.cursor(db=self.db) as cur:
                cur.putmulti(items)

    def get(self, txn: lmdb.Transaction, msg_id: int) -> Origin | None:
        raw = txn.get(_HEAD.pack(msg_id), db=self.db)
        if raw is None:
            return None
        try:
            v, tenant, campaign, sender, created_ms, n_rcpt, *_ = msgpack.unpackb(raw, raw=False)
            if v != VERSION:
                return None
            return Origin(msg_id, tenant, campaign, str(sender), int(created_ms), int(n_rcpt))
        except Exception:  # undecodable: as if absent (module contract)
            return None

    def address(self, txn: lmdb.Transaction, msg_id: int, index: int) -> str | None:
        """The address of recipient ``index`` of ``msg_id``, or None when unknown."""
        if index < 0:
            return None
        raw = txn.get(_BLOCK.pack(msg_id, index // BLOCK), db=self.db)
        if raw is None:
            return None
        try:
            block: Any = msgpack.unpackb(raw, raw=False)
            value = block[index % BLOCK]
        except Exception:
            return None
        return value if isinstance(value, str) else None

    def contains(self, txn: lmdb.Transaction, origin: Origin, address: str, *, max_blocks: int = 4) -> bool | None:
        """Whether ``address`` (case-insensitive) was a recipient of the message; None when the
        message has more than ``max_blocks`` blocks (too many to read for one report)."""
        if origin.n_rcpt > max_blocks * BLOCK:
            return None
        want = address.strip().lower()
        for n in range((origin.n_rcpt + BLOCK - 1) // BLOCK):
            raw = txn.get(_BLOCK.pack(origin.msg_id, n), db=self.db)
            try:
                block = msgpack.unpackb(raw, raw=False) if raw is not None else []
            except Exception:
                return None
            if any(isinstance(a, str) and a.lower() == want for a in block):
                return True
        return False

    def trim(self, txn: lmdb.Transaction, now_ms: int, max_messages: int) -> int:
        """Delete up to ``max_messages`` of the oldest messages past retention; returns how many."""
        cutoff = now_ms - self.retention_ms
        removed = 0
        with txn.cursor(db=self.db) as cur:
            ok = cur.first()
            while ok and removed < max_messages:
                key = cur.key()
                prefix = key[:8]
                if len(key) == 8:
                    try:
                        created_ms = int(msgpack.unpackb(cur.value(), raw=False)[4])
                    except Exception:
                        created_ms = 0  # undecodable: trim it
                    if created_ms >= cutoff:
                        break
                while ok and cur.key()[:8] == prefix:
                    ok = cur.delete()  # moves to the next record; False at the end
                    if ok and not cur.key():
                        ok = False
                removed += 1
        return removed
