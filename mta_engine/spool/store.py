"""The LMDB environment of the spool and its named databases.

Contract: the only module that opens LMDB. Writers are the ingest process (new messages only)
and the manager (all state transitions); LMDB serialises them. Workers open the spool
read-only to read bodies. Commits are synced (``sync=True``): a commit that returned is on disk; ``[spool] sync = false``
(relaxed, for benchmarks and throwaway mail) leaves the flush to the OS.
lmdb errors are translated here into ``SpoolError``/``SpoolFull``.

Named databases:
    meta     counters (next message id, next event sequence) and schema version
    msg      message id -> Message record
    body     message id -> content spec (raw message or builder fields, template flag)
    rcpt     recipient key -> Recipient record (removed when the recipient reaches a final state)
    due      due key (due ms + recipient key) -> b"", or the address of a recipient queued by ingest
             for a shared body without DSN parameters: the scheduler's work list, ordered by time
    inflight recipient key -> u64 lease expiry ms: leases written by versions before leases moved to
             the manager's memory; emptied at manager start (their recipients made due now)
    outbox   last event sequence of a batch -> the batch of accounting events (one record per
             transaction), written in the same transaction as the change it reports
    corrupt  undecodable records moved aside, keyed by "<db>:<hex key>"
    suppress "<tenant>\0<address>" -> suppression entry (spool/suppress.py)
    origin   message id (+ block) -> who sent it and to whom, kept after delivery for OOB/FBL
             correlation when [inbound] is on (spool/origin.py)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lmdb

from ..errors import SpoolCorrupt, SpoolError, SpoolFull
from . import records

VERP_KEY = b"verp_key"
DB_NAMES = ("meta", "msg", "body", "rcpt", "due", "inflight", "outbox", "corrupt", "suppress", "origin")


class Spool:
    """An open spool. ``readonly`` for workers; one instance per process."""

    def __init__(self, path: str | os.PathLike[str], *, map_size_mb: int = 16384, readonly: bool = False,
                 sync: bool = True) -> None:
        """``sync=False`` is the relaxed mode (``[spool] sync = false``): commits reach the OS page
        cache but are not fsynced, so a killed process loses nothing and a machine crash may lose
        the last seconds of commits."""
        self.path = Path(path)
        self.readonly = readonly
        self.synced = sync
        try:
            if not readonly:
                self.path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(
                str(self.path), map_size=map_size_mb << 20, max_dbs=len(DB_NAMES) + 2,
                readonly=readonly, sync=sync, metasync=sync, readahead=False, max_readers=512,
                subdir=True, create=not readonly,
            )
            self.dbs: dict[str, Any] = {}
            for name in DB_NAMES:
                self.dbs[name] = self.env.open_db(name.encode(), create=not readonly)
            if not readonly and self.verp_key() is None:
                with self.env.begin(write=True) as txn:  # made once per spool; see verp_key
                    txn.put(VERP_KEY, os.urandom(32), db=self.dbs["meta"], overwrite=False)
        except lmdb.Error as exc:
            raise SpoolError(f"cannot open spool at {self.path}: {exc}") from exc

    def verp_key(self) -> bytes | None:
        """This spool's secret for signing VERP addresses and Message-IDs (``dsn/verp.py``): 32
        random bytes made by the first writer that opens the spool, so it lives and is backed up
        with the spool, and bounces of mail sent before a restart still verify."""
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(VERP_KEY, db=self.dbs["meta"])
        return bytes(raw) if raw is not None else None

    def __repr__(self) -> str:
        return f"<Spool {self.path} readonly={self.readonly}>"

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed (and synced) on normal exit, aborted on error."""
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except lmdb.MapFullError as exc:
            raise SpoolFull(f"spool {self.path} is full: raise [spool] map_size_mb") from exc
        except lmdb.Error as exc:
            raise SpoolError(f"spool write failed: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(buffers=False) as txn:
            yield txn

    def counter_take(self, txn: lmdb.Transaction, name: bytes, n: int) -> int:
        """Reserve ``n`` consecutive values of a meta counter; returns the first."""
        raw = txn.get(name, db=self.dbs["meta"])
        first = records.from_u64(raw) if raw else 1
        txn.put(name, records.u64(first + n), db=self.dbs["meta"])
        return first

    def events_append(self, txn: lmdb.Transaction, events: list[dict[str, Any]]) -> None:
        """Append accounting events to the outbox, each with a unique increasing ``event_seq``.

        One record per call (keyed by its last sequence number): a tick's 10,000 outcomes cost one
        put, not 10,000.
        """
        if not events:
            return
        seq = self.counter_take(txn, b"next_event", sum(map(records.event_count, events)))
        for ev in events:
            ev["event_seq"] = seq
            seq += records.event_count(ev)  # a grouped event takes one number per recipient
        txn.put(records.u64(seq - 1), records.encode_events(events), db=self.dbs["outbox"])

    def events_after(self, txn: lmdb.Transaction, seq: int, *, skip_key: int | None = None,
                     limit: int | None = None, expand: bool = True) -> list[dict[str, Any]]:
        """Outbox events with ``event_seq`` > seq, in order (undecodable batches are skipped);
        ``skip_key`` names a batch (by its last sequence number) the caller already has. With
        ``limit``, whole batches are read until at least ``limit`` events are in hand. Grouped
        events (``records.GROUP_MEMBERS``) come one per recipient, or as stored with
        ``expand=False`` (then a group may start at or before ``seq``: the caller skips members)."""
        out: list[dict[str, Any]] = []
        skip = records.u64(skip_key) if skip_key is not None else None
        with txn.cursor(db=self.dbs["outbox"]) as cur:
            if not cur.set_range(records.u64(seq + 1)):
                return out
            for key, raw in cur:
                if key == skip:
                    continue
                try:
                    batch = records.decode_events(raw)
                except SpoolCorrupt:
                    continue
                out.extend(records.events_after_seq(batch, seq) if expand else
                           [ev for ev in batch if ev.get("event_seq", 0) + records.event_count(ev) - 1 > seq])
                if limit is not None and len(out) >= limit:
                    break
        return out

    def events_pending(self, txn: lmdb.Transaction, seq: int) -> bool:
        with txn.cursor(db=self.dbs["outbox"]) as cur:
            return bool(cur.set_range(records.u64(seq + 1)))

    def events_trim(self, txn: lmdb.Transaction, upto: int) -> None:
        """Drop outbox batches whose events are all written (last sequence <= upto)."""
        with txn.cursor(db=self.dbs["outbox"]) as cur:
            if not cur.first():
                return
            while cur.key() and records.from_u64(cur.key()) <= upto:
                if not cur.delete():
                    break

    def move_aside(self, txn: lmdb.Transaction, db: str, key: bytes) -> None:
        """Move an undecodable record to ``corrupt`` so it never stops the engine again."""
        value = txn.get(key, db=self.dbs[db])
        if value is not None:
            txn.put(f"{db}:{key.hex()}".encode(), value, db=self.dbs["corrupt"])
            txn.delete(key, db=self.dbs[db])

    def stat(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: txn.stat(db)["entries"] for name, db in self.dbs.items()}

    def close(self) -> None:
        self.env.close()
