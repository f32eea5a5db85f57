"""Group commit: many submissions share one synced LMDB transaction.

Contract: ``GroupCommitter.submit()`` returns only after the transaction holding the message, its
recipients, their due-index entries and the Reception event has committed with sync. While one
commit runs, new submissions queue up and go into the next commit together, so durability costs
one fsync per batch, not per request. All LMDB writes happen on one dedicated thread (LMDB write
transactions are bound to their thread); the event loop never blocks on the disk.

``submit_op`` puts other work in the same commit: a function of ``(txn, now_ms)`` returning
accounting events (the inbound listener's OOB and Feedback records, ``ingest/inbound.py``).
With an ``OriginIndex``, each message's tenant, campaign, sender and addresses are also kept
for correlating later bounces and complaints (``spool/origin.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..spool import records, suppress
from ..spool.origin import OriginIndex
from ..spool.records import Message, Recipient, State
from ..spool.store import Spool
from .inject import Submission

TxnOp = Callable[[Any, int], list[dict[str, Any]]]
"""Work run inside a group commit's write transaction: ``op(txn, now_ms)`` -> events to append."""


def _reception(msg_id: int, sub: Submission, now_ms: int) -> dict[str, Any]:
    return {"type": "Reception", "timestamp": now_ms / 1000.0, "queue_id": records.queue_id(msg_id),
            "sender": sub.sender, "recipient_count": len(sub.recipients), "campaign": sub.campaign,
            "tenant": sub.tenant, "size": sub.size}


def _message_items(msg_id: int, sub: Submission, now_ms: int) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes],
                                                                      list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    mkey = records.u64(msg_id)
    msg = Message(sender=sub.sender, created_ms=now_ms, n_rcpt=len(sub.recipients), remaining=len(sub.recipients),
                  campaign=sub.campaign, tenant=sub.tenant, priority=sub.priority, size=sub.size,
                  template=sub.template, per_recipient=sub.per_recipient, dsn=sub.dsn, ret=sub.ret, envid=sub.envid)
    rcpts, due = [], []
    params = sub.dsn_params
    shared = not sub.per_recipient
    for i, (addr, name, variables) in enumerate(sub.recipients):
        rec = Recipient(addr, name, variables, State.QUEUED, 0, now_ms)
        if params is not None:
            rec.notify, rec.orcpt = params[i]
        rcpts.append((records.rcpt_key(msg_id, i), rec.encode()))
        # a shared body's recipient without DSN parameters: all a job needs is in its due entry
        fresh = shared and rec.notify is None and rec.orcpt is None
        due.append((records.due_key(now_ms, msg_id, i), addr.encode() if fresh else b""))
    return (mkey, msg.encode()), (mkey, records.encode_body(sub.spec)), rcpts, due


def spool_message(spool: Spool, txn: Any, sub: Submission, now_ms: int) -> tuple[int, dict[str, Any]]:
    """Queue one message inside the caller's write transaction (the manager uses it for DSNs)."""
    msg_id = spool.counter_take(txn, b"next_msg", 1)
    msg_item, body_item, rcpt_items, due_items = _message_items(msg_id, sub, now_ms)
    txn.put(*msg_item, db=spool.dbs["msg"])
    txn.put(*body_item, db=spool.dbs["body"])
    for k, v in rcpt_items:
        txn.put(k, v, db=spool.dbs["rcpt"])
    for k, v in due_items:
        txn.put(k, v, db=spool.dbs["due"])
    return msg_id, _reception(msg_id, sub, now_ms)


def _keep(sub: Submission, kept: list[int]) -> Submission:
    """A copy of ``sub`` with only the recipients at ``kept`` (DSN parameters kept in step)."""
    params = sub.dsn_params
    return dataclasses.replace(sub, recipients=[sub.recipients[i] for i in kept],
                               dsn_params=None if params is None else [params[i] for i in kept])


def write_submissions(spool: Spool, subs: list[Submission], now_ms: int, *, origin: OriginIndex | None = None,
                      ops: list[TxnOp] | None = None) -> list[int | None]:
    """Write submissions in one synced transaction; returns their message ids (None: nothing written).

    Recipients on their tenant's suppression list are refused inside the same transaction, so an
    address the manager suppressed a moment ago is never queued. After the commit, each refused
    recipient moves from ``sub.recipients`` to ``sub.failed``, with its reason in ``sub.errors``.
    A submission whose recipients are all suppressed writes nothing and gets None.
    ``ops`` run in the same transaction, after the submissions; an op that raises fails the batch.
    """
    dbs = spool.dbs
    ids: list[int | None] = []
    refusals: list[tuple[Submission, Submission | None, list[tuple[int, suppress.Entry]]]] = []
    with spool.write() as txn:
        plan: list[Submission | None] = []
        for sub in subs:
            kept, refused = suppress.filter_recipients(txn, spool, sub.tenant, [a for a, _, _ in sub.recipients])
            todo = sub if not refused else (_keep(sub, kept) if kept else None)
            if refused:
                refusals.append((sub, todo, refused))
            plan.append(todo)
        n_write = sum(todo is not None for todo in plan)
        msg_id = spool.counter_take(txn, b"next_msg", n_write) if n_write else 0
        events = []
        msg_items, body_items, rcpt_items, due_items = [], [], [], []
        origin_items: list[tuple[bytes, bytes]] = []
        for todo in plan:
            if todo is None:
                ids.append(None)
                continue
            ids.append(msg_id)
            m, b, r, d = _message_items(msg_id, todo, now_ms)
            msg_items.append(m)
            body_items.append(b)
            rcpt_items.extend(r)
            due_items.extend(d)
            events.append(_reception(msg_id, todo, now_ms))
            if origin is not None:
                origin_items.extend(origin.items(msg_id, tenant=todo.tenant, campaign=todo.campaign,
                                                 sender=todo.sender, created_ms=now_ms,
                                                 addresses=[a for a, _, _ in todo.recipients]))
            msg_id += 1
        # Message ids only grow, so msg/body/rcpt keys are appends (cheap B-tree inserts).
        with txn.cursor(db=dbs["msg"]) as cur:
            cur.putmulti(msg_items, append=True)
        with txn.cursor(db=dbs["body"]) as cur:
            cur.putmulti(body_items, append=True)
        with txn.cursor(db=dbs["rcpt"]) as cur:
            cur.putmulti(rcpt_items, append=True)
        with txn.cursor(db=dbs["due"]) as cur:
            cur.putmulti(due_items)
        if origin is not None:
            origin.put(txn, origin_items)
            origin.trim(txn, now_ms, n_write + 8)  # a little more than added: the index stays bounded
        for op in ops or ():
            events.extend(op(txn, now_ms))
        spool.events_append(txn, events)
    for sub, todo, refused in refusals:  # committed: now tell the submitter (HTTP answer)
        sub.failed.extend(sub.recipients[i][0] for i, _ in refused)
        sub.errors.extend(entry.refusal(sub.recipients[i][0]) for i, entry in refused)
        sub.recipients = todo.recipients if todo is not None else []
        sub.dsn_params = todo.dsn_params if todo is not None else None
    return ids


class GroupCommitter:
    """Batches concurrent submissions into shared synced commits."""

    def __init__(self, spool: Spool, *, batch_max: int = 256, clock: Callable[[], float] = time.time,
                 on_commit: Callable[[], None] | None = None, origin: OriginIndex | None = None) -> None:
        self.spool = spool
        self.origin = origin
        self.batch_max = batch_max
        self.clock = clock
        self._pending: list[tuple[Submission | TxnOp, asyncio.Future[int | None]]] = []
        self._running = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        self.commits = 0
        self.submissions = 0
        self.on_commit = on_commit

    def __repr__(self) -> str:
        return f"<GroupCommitter pending={len(self._pending)} commits={self.commits} submissions={self.submissions}>"

    async def submit(self, sub: Submission) -> int | None:
        """Queue ``sub``; its message id once synced, or None when every recipient was suppressed
        (then ``sub.failed``/``sub.errors`` say why, see ``write_submissions``)."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append((sub, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def submit_op(self, op: TxnOp) -> None:
        """Run ``op`` inside the next group commit; returns once that commit is synced (or raises)."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.batch_max], self._pending[self.batch_max:]
                now_ms = int(self.clock() * 1000)
                subs = [s for s, _ in batch if isinstance(s, Submission)]
                ops = [s for s, _ in batch if not isinstance(s, Submission)] or None
                try:
                    ids = await loop.run_in_executor(self._executor, functools.partial(
                        write_submissions, self.spool, subs, now_ms, origin=self.origin, ops=ops))
                except Exception as exc:  # the whole batch failed: nothing of it was committed
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.commits += 1
                self.submissions += len(subs)
                if self.on_commit is not None:
                    self.on_commit()
                found = iter(ids)
                for item, fut in batch:
                    msg_id = next(found) if isinstance(item, Submission) else None
                    if not fut.done():
                        fut.set_result(msg_id)
        finally:
            self._running = False

    def close(self) -> None:
        self._executor.shutdown(wait=True)
