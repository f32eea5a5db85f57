"""The suppression list: per tenant, the addresses the engine must not send to again (issue 5).

Contract: one LMDB named database, ``suppress``, keyed ``<tenant> NUL <address>`` (UTF-8). The
value is a versioned msgpack list ``[1, reason, source, added_at_s]``. The default tenant (a
submission without ``tenant``) is ``""``. Every function takes the caller's transaction, except
the CSV import/export and the control handlers (``handle_suppress_*``), which open their own.
No asyncio: the manager runs the handlers on its spool-writer thread and ingest runs
``filter_recipients`` inside its group-commit transaction.

What adds an address (STANDARDS B03/B04): ``note_bounce`` adds it only after a *permanent*
failure whose category is ``invalid_recipient`` or ``inactive_mailbox``. Reputation, blocklist,
policy, auth/DMARC and TLS failures are the sender's problem and never suppress. "Mailbox full" is
a soft bounce and never suppresses either. The same rule applies to out-of-band bounces (the
inbound listener, ``ingest/inbound.py``). ``note_complaint`` adds an address whose owner sent a
feedback-loop abuse report (reason ``complaint: ...``). Operators add and remove addresses over the control
socket, and can import or export a whole list as CSV.

Case: addresses are stored and looked up lower-cased, the local part included, and IDN domains
are stored as A-labels. RFC 5321 §2.4 allows a server to treat local parts as case-sensitive, but
almost no real mailbox provider does. For list hygiene, a false "suppressed" costs less than
mailing an address that already bounced as invalid under other casing.

Failure: an entry whose value cannot be decoded still suppresses its address. The key is the
fact and the value is only detail, so ``Entry.reason`` reads "(undecodable entry)". Bad operator
input raises ``ValueError`` naming the field or the CSV line. The control server turns that into
``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import msgpack

from ..model import address_problem

if TYPE_CHECKING:
    import lmdb

    from .store import Spool

__all__ = [
    "Entry", "CsvRow", "ImportResult", "SUPPRESSING_CATEGORIES", "normalize", "is_suppressed", "add", "remove",
    "iterate", "filter_recipients", "note_bounce", "note_complaint", "parse_csv", "import_csv", "entries_csv", "export_csv",
    "handle_suppress_add", "handle_suppress_remove", "handle_suppress_list", "handle_suppress_import",
    "handle_suppress_export",
]

ENTRY_VERSION = 1
SUPPRESSING_CATEGORIES = frozenset({"invalid_recipient", "inactive_mailbox"})
"""``dsn.classify.BounceClass`` values whose permanent failures suppress the address (STANDARDS B04)."""
MAX_KEY_BYTES = 511
"""LMDB's compiled-in MDB_MAXKEYSIZE. A tenant plus an address longer than this cannot be stored."""
MAX_TENANT_CHARS = 200
"""The same limit as the inject request's ``tenant`` label (ingest/inject.py)."""
MAX_REASON_CHARS = 300
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
DEFAULT_EXPORT_LIMIT = 50_000
"""Entries per export page. At about 100 bytes a row this is far below the 16 MiB control frame."""
MAX_IMPORT_ERRORS_SHOWN = 20
CSV_COLUMNS = ("address", "tenant", "reason", "source", "added_at")
_HEADER_FIRST = frozenset({"address", "email"})


# -- keys and values ---------------------------------------------------------------------------
def normalize(address: str) -> str:
    """The form an address is stored under: stripped, lower-cased, domain as A-labels, no final dot."""
    a = address.strip().lower()
    if a.isascii() and not a.endswith("."):
        return a  # the common case, on ingest's hot path
    local, at, domain = a.rpartition("@")
    if not at:
        return a
    domain = domain.rstrip(".")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")  # same codec as model.domain_to_ascii
        except UnicodeError:
            pass  # not a valid IDN: keep the lower-cased U-label; it is still a stable key
    return f"{local}@{domain}"


def _tenant_bytes(tenant: str | None) -> bytes:
    return (tenant or "").encode("utf-8")


def _key(tenant: str | None, address: str) -> bytes:
    return _tenant_bytes(tenant) + b"\0" + normalize(address).encode("utf-8")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One suppressed address of one tenant."""

    tenant: str
    address: str
    """Normalized (see ``normalize``)."""
    reason: str
    source: str
    """What added it: a recipient's queue id (``<queue id>.<index>``), "control", or "import"."""
    added_at_s: int
    """Wall-clock epoch seconds."""

    @property
    def cursor(self) -> str:
        """Opaque pagination token: pass it as ``after`` to continue listing after this entry."""
        return _key(self.tenant, self.address).hex()

    def refusal(self, submitted: str) -> str:
        """The per-recipient reason a submission gets back."""
        return (f"{submitted!r}: on the suppression list since {_iso(self.added_at_s)} ({self.reason}); "
                "not queued")

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "address": self.address, "reason": self.reason, "source": self.source,
                "added_at": _iso(self.added_at_s), "added_at_s": self.added_at_s}


def _encode(reason: str, source: str, added_at_s: float) -> bytes:
    return msgpack.packb([ENTRY_VERSION, reason, source, int(added_at_s)], use_bin_type=True)


def _decode(key: bytes, raw: bytes) -> Entry:
    tenant_b, _, address_b = key.partition(b"\0")
    tenant, address = tenant_b.decode("utf-8", "replace"), address_b.decode("utf-8", "replace")
    try:
        v, reason, source, added_at_s, *_ = msgpack.unpackb(raw, raw=False)
        if v != ENTRY_VERSION:
            raise ValueError(f"version {v}")
        return Entry(tenant, address, str(reason), str(source), int(added_at_s))
    except Exception:  # the key alone still suppresses (module contract)
        return Entry(tenant, address, "(undecodable entry)", "", 0)


def _check_tenant(tenant: Any, where: str = "tenant") -> str:
    if tenant is None:
        return ""
    if not isinstance(tenant, str) or len(tenant) > MAX_TENANT_CHARS or (tenant and not tenant.isprintable()):
        raise ValueError(f"{where} must be a printable string of at most {MAX_TENANT_CHARS} characters")
    return tenant


def _check_address(tenant: str, address: Any, where: str = "address") -> str:
    if not isinstance(address, str):
        raise ValueError(f"{where} is required (a string)")
    problem = address_problem(address.strip())
    if problem:
        raise ValueError(f"{where} {address!r}: {problem}")
    if len(_key(tenant, address)) > MAX_KEY_BYTES:
        raise ValueError(f"{where} {address!r}: tenant and address together exceed {MAX_KEY_BYTES} bytes")
    return address.strip()


def _check_reason(reason: Any, default: str, where: str = "reason") -> str:
    if reason is None or reason == "":
        return default
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ValueError(f"{where} must be a printable string of at most {MAX_REASON_CHARS} characters")
    return reason


# -- the list ----------------------------------------------------------------------------------
def is_suppressed(txn: lmdb.Transaction, spool: Spool, tenant: str | None, address: str) -> Entry | None:
    """The entry suppressing ``address`` for ``tenant`` (None = the default tenant), or None."""
    key = _key(tenant, address)
    if len(key) > MAX_KEY_BYTES:
        return None  # add() refuses such keys, so it cannot be listed
    raw = txn.get(key, db=spool.dbs["suppress"])
    return None if raw is None else _decode(key, raw)


def add(txn: lmdb.Transaction, spool: Spool, tenant: str | None, address: str, *, reason: str, source: str,
        added_at_s: float) -> bool:
    """Suppress ``address`` for ``tenant``. True if newly added; an existing entry is kept as it is
    (its first reason and date are the history that matters)."""
    key = _key(tenant, address)
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"{address!r}: tenant and address together exceed {MAX_KEY_BYTES} bytes")
    return bool(txn.put(key, _encode(reason, source, added_at_s), db=spool.dbs["suppress"], overwrite=False))


def remove(txn: lmdb.Transaction, spool: Spool, tenant: str | None, address: str) -> bool:
    """Stop suppressing ``address`` for ``tenant``. True if it was on the list."""
    key = _key(tenant, address)
    return len(key) <= MAX_KEY_BYTES and bool(txn.delete(key, db=spool.dbs["suppress"]))


def iterate(txn: lmdb.Transaction, spool: Spool, tenant: str | None = None, prefix: str = "",
            after: str | None = None, limit: int | None = DEFAULT_LIST_LIMIT) -> Iterator[Entry]:
    """Entries in key order (tenant, then address): one tenant, or all when ``tenant`` is None.

    ``prefix`` matches the start of the normalized address. ``after`` is an ``Entry.cursor``, and
    listing resumes just past it. ``limit`` None means no limit. Consume the iterator inside ``txn``.
    With ``tenant`` None and a prefix, the scan jumps from tenant to tenant, so it stays cheap.
    """
    pfx = prefix.strip().lower().encode("utf-8")
    fixed = None if tenant is None else _tenant_bytes(tenant) + b"\0" + pfx
    seek = fixed or b""
    after_key = bytes.fromhex(after) if after else None
    if after_key is not None and after_key > seek:
        seek = after_key
    n = 0
    with txn.cursor(db=spool.dbs["suppress"]) as cur:
        ok = cur.set_range(seek) if seek else cur.first()
        if ok and after_key is not None and cur.key() == after_key:
            ok = cur.next()
        while ok and (limit is None or n < limit):
            key = cur.key()
            if fixed is not None:
                if not key.startswith(fixed):
                    return
            elif pfx:
                tenant_b, _, address_b = key.partition(b"\0")
                if not address_b.startswith(pfx):
                    # before the prefix: jump to it; past it: jump to the next tenant ("\1" > "\0")
                    ok = cur.set_range(tenant_b + (b"\0" + pfx if address_b < pfx else b"\1"))
                    continue
            yield _decode(key, cur.value())
            n += 1
            ok = cur.next()


def filter_recipients(txn: lmdb.Transaction, spool: Spool, tenant: str | None,
                      addresses: Sequence[str]) -> tuple[list[int], list[tuple[int, Entry]]]:
    """Split a submission's addresses into kept and suppressed ones, in order, with one LMDB get each.

    Returns indexes (``kept``) and ``(index, entry)`` pairs (``refused``), so the caller can keep
    parallel lists (names, DSN parameters) in step.
    """
    db = spool.dbs["suppress"]
    head = _tenant_bytes(tenant) + b"\0"
    get = txn.get
    kept: list[int] = []
    refused: list[tuple[int, Entry]] = []
    for i, address in enumerate(addresses):
        key = head + normalize(address).encode("utf-8")
        raw = get(key, db=db) if len(key) <= MAX_KEY_BYTES else None
        if raw is None:
            kept.append(i)
        else:
            refused.append((i, _decode(key, raw)))
    return kept, refused


def bounce_reason(category: str, code: int, enhanced: str | None, text: str) -> str:
    """``"invalid_recipient: 550 5.1.1 user unknown"``, on one line, at most MAX_REASON_CHARS."""
    reply = " ".join(str(part) for part in (code, enhanced, " ".join(text.split())) if part)
    return f"{category}: {reply}"[:MAX_REASON_CHARS]


def note_bounce(txn: lmdb.Transaction, spool: Spool, *, tenant: str | None, address: str, category: str,
                permanent: bool, code: int, enhanced: str | None, text: str, source: str,
                now_ms: int) -> dict[str, Any] | None:
    """Suppress after a failure if STANDARDS B04 says so. Returns the ``Suppressed`` accounting event
    to append, or None: the failure does not suppress, or the address was already on the list.

    Only permanent ``invalid_recipient`` and ``inactive_mailbox`` failures suppress. Reputation,
    policy, auth and TLS failures (B03) do not, and neither does ``mailbox_full`` (a soft bounce).
    """
    if not permanent or category not in SUPPRESSING_CATEGORIES:
        return None
    reason = bounce_reason(category, code, enhanced, text)
    if not add(txn, spool, tenant, address, reason=reason, source=source, added_at_s=now_ms / 1000):
        return None
    return {"type": "Suppressed", "timestamp": now_ms / 1000.0, "tenant": tenant, "recipient": address,
            "reason": reason, "source": source}


def note_complaint(txn: lmdb.Transaction, spool: Spool, *, tenant: str | None, address: str, feedback_type: str,
                   reporter: str | None, source: str, now_ms: int) -> dict[str, Any] | None:
    """Suppress after a feedback-loop complaint. Returns the ``Suppressed`` event, or None when
    the address was already listed or cannot be stored."""
    reason = " ".join(f"complaint: {feedback_type} report{f' from {reporter}' if reporter else ''}".split())
    reason = reason[:MAX_REASON_CHARS]
    try:
        if not add(txn, spool, tenant, address, reason=reason, source=source, added_at_s=now_ms / 1000):
            return None
    except ValueError:  # tenant and address exceed the key size: nothing to store
        return None
    return {"type": "Suppressed", "timestamp": now_ms / 1000.0, "tenant": tenant, "recipient": address,
            "reason": reason, "source": source}


# -- CSV -----------------------------------------------------------------------------------------
class ImportResult(NamedTuple):
    added: int
    unchanged: int
    """Rows already on the list (or repeated in the file): left as they were."""
    errors: list[str]
    """``"line N: ..."``. Any error means nothing was imported."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One valid line of an import file."""

    tenant: str
    address: str
    reason: str
    source: str
    added_at_s: float | None


def _parse_added_at(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"added_at {text!r} is not ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp()
    if not 0 <= seconds < 2**32:
        raise ValueError(f"added_at {text!r} is out of range")
    return seconds


def parse_csv(text: str, default_tenant: str = "") -> tuple[list[CsvRow], list[str]]:
    """Parse ``address[,tenant[,reason]]`` lines into rows, plus errors as ``"line N: ..."``.

    A first row starting with ``address`` (or ``email``) is a header. It then names the columns,
    any of ``address, tenant, reason, source, added_at`` (the ``export_csv`` header). Blank lines
    and lines starting with ``#`` are skipped. An empty tenant cell means ``default_tenant``.
    """
    default_tenant = _check_tenant(default_tenant, "default tenant")
    rows: list[CsvRow] = []
    errors: list[str] = []
    columns: tuple[str, ...] | None = None
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")), strict=True)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(f"line {reader.line_num}: {exc}")
            break  # the reader cannot resync after a CSV syntax error
        line = reader.line_num
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if columns is None and not rows and cells[0].lower() in _HEADER_FIRST:
            names = tuple("address" if c.lower() == "email" else c.lower() for c in cells)
            unknown = [n for n in names if n not in CSV_COLUMNS]
            if unknown or len(set(names)) != len(names):
                errors.append(f"line {line}: header must name distinct columns among {', '.join(CSV_COLUMNS)}"
                              f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
                break  # every later line would be misread
            columns = names
            continue
        if columns is None and len(cells) > 3:
            errors.append(f"line {line}: expected address[,tenant[,reason]], got {len(cells)} fields")
            continue
        if columns is not None and len(cells) > len(columns):
            errors.append(f"line {line}: {len(cells)} fields but the header names {len(columns)}")
            continue
        row = dict(zip(columns or ("address", "tenant", "reason"), cells))
        try:
            tenant = _check_tenant(row.get("tenant") or default_tenant)
            address = _check_address(tenant, row.get("address", ""))
            reason = _check_reason(row.get("reason"), "imported")
            source = _check_reason(row.get("source"), "import", "source")
            added_at_s = _parse_added_at(row["added_at"]) if row.get("added_at") else None
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        rows.append(CsvRow(tenant, address, reason, source, added_at_s))
    return rows, errors


def import_csv(spool: Spool, text: str, default_tenant: str = "", *, now_s: float) -> ImportResult:
    """Import a CSV list in one write transaction: all or nothing.

    If any line is bad, nothing is written and every bad line is reported by number. A script can
    fix the file and run the same import again without ending up with half a list.
    """
    rows, errors = parse_csv(text, default_tenant)
    if errors:
        return ImportResult(0, 0, errors)
    added = 0
    with spool.write() as txn:
        for r in rows:
            added += add(txn, spool, r.tenant, r.address, reason=r.reason, source=r.source,
                         added_at_s=now_s if r.added_at_s is None else r.added_at_s)
    return ImportResult(added, len(rows) - added, [])


def entries_csv(entries: Iterator[Entry] | Sequence[Entry], *, header: bool = True) -> str:
    """Entries as CSV with the ``CSV_COLUMNS`` header, which ``import_csv`` reads back unchanged."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow((e.address, e.tenant, e.reason, e.source, _iso(e.added_at_s)))
    return out.getvalue()


def export_csv(spool: Spool, tenant: str | None = None) -> str:
    """The whole list (one tenant, or all when None) as CSV. For big lists, page through
    ``handle_suppress_export`` instead. The default tenant is an empty cell: importing the file
    with a ``default_tenant`` moves those rows to that tenant."""
    with spool.read() as txn:
        return entries_csv(iterate(txn, spool, tenant, limit=None))


# -- control socket handlers (run them on the manager's spool-writer thread) -------------------
def _req_limit(req: dict[str, Any], default: int, maximum: int) -> int:
    limit = req.get("limit", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ValueError(f"limit must be an integer 1-{maximum}")
    return limit


def _req_after(req: dict[str, Any]) -> str | None:
    after = req.get("after")
    if after is None:
        return None
    try:
        bytes.fromhex(after)
    except (TypeError, ValueError):
        raise ValueError("after must be a cursor returned as `next` by the previous page") from None
    return after  # type: ignore[no-any-return]


def _req_tenant_filter(req: dict[str, Any]) -> str | None:
    """``tenant`` absent or null: all tenants; ``""``: the default tenant only."""
    return None if req.get("tenant") is None else _check_tenant(req["tenant"])


def _page(txn: lmdb.Transaction, spool: Spool, req: dict[str, Any], limit: int) -> tuple[list[Entry], str | None]:
    prefix = req.get("prefix") or ""
    if not isinstance(prefix, str):
        raise ValueError("prefix must be a string")
    found = list(iterate(txn, spool, _req_tenant_filter(req), prefix, _req_after(req), limit + 1))
    more = len(found) > limit
    return found[:limit], (found[limit - 1].cursor if more else None)


def handle_suppress_add(spool: Spool, req: dict[str, Any], *, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """``{"cmd": "suppress_add", "address", "tenant"?, "reason"?}``"""
    tenant = _check_tenant(req.get("tenant"))
    address = _check_address(tenant, req.get("address"))
    reason = _check_reason(req.get("reason"), "added by operator")
    now_s = clock()
    with spool.write() as txn:
        added = add(txn, spool, tenant, address, reason=reason, source="control", added_at_s=now_s)
        entry = is_suppressed(txn, spool, tenant, address)
        assert entry is not None
        if added:
            spool.events_append(txn, [{"type": "Suppressed", "timestamp": now_s, "tenant": tenant or None,
                                       "recipient": address, "reason": reason, "source": "control"}])
    where = f" for tenant {tenant!r}" if tenant else ""
    message = (f"{entry.address} suppressed{where}" if added else
               f"{entry.address} was already suppressed{where} since {_iso(entry.added_at_s)} ({entry.reason})")
    return {"added": added, "entry": entry.as_dict(), "message": message}


def handle_suppress_remove(spool: Spool, req: dict[str, Any], *,
                           clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """``{"cmd": "suppress_remove", "address", "tenant"?}``"""
    tenant = _check_tenant(req.get("tenant"))
    address = req.get("address")
    if not isinstance(address, str) or not address.strip():
        raise ValueError("address is required (a string)")
    with spool.write() as txn:
        entry = is_suppressed(txn, spool, tenant, address)
        removed = remove(txn, spool, tenant, address)
        if removed and entry is not None:
            spool.events_append(txn, [{"type": "Unsuppressed", "timestamp": clock(), "tenant": tenant or None,
                                       "recipient": address.strip(), "reason": entry.reason,
                                       "source": "control"}])
    where = f" for tenant {tenant!r}" if tenant else ""
    norm = normalize(address)
    return {"removed": removed,
            "message": f"{norm} removed from the suppression list{where}" if removed
            else f"{norm} is not on the suppression list{where}"}


def handle_suppress_list(spool: Spool, req: dict[str, Any]) -> dict[str, Any]:
    """``{"cmd": "suppress_list", "tenant"?, "prefix"?, "limit"?, "after"?}`` → entries and ``next``."""
    limit = _req_limit(req, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
    with spool.read() as txn:
        entries, next_after = _page(txn, spool, req, limit)
    return {"entries": [e.as_dict() for e in entries], "next": next_after}


def handle_suppress_import(spool: Spool, req: dict[str, Any], *,
                           clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """``{"cmd": "suppress_import", "csv": text, "tenant"?}``. All or nothing; a bad line is an error."""
    text = req.get("csv")
    if not isinstance(text, str):
        raise ValueError("csv is required (the file's text)")
    result = import_csv(spool, text, _check_tenant(req.get("tenant"), "tenant"), now_s=clock())
    if result.errors:
        shown = result.errors[:MAX_IMPORT_ERRORS_SHOWN]
        more = len(result.errors) - len(shown)
        raise ValueError(f"nothing imported: {len(result.errors)} bad line(s)\n" + "\n".join(shown)
                         + (f"\n... and {more} more" if more else ""))
    return {"added": result.added, "unchanged": result.unchanged,
            "message": f"{result.added} address(es) added, {result.unchanged} already suppressed"}


def handle_suppress_export(spool: Spool, req: dict[str, Any]) -> dict[str, Any]:
    """``{"cmd": "suppress_export", "tenant"?, "prefix"?, "limit"?, "after"?}`` → one CSV page and ``next``.

    The first page (no ``after``) carries the header line, so concatenating the pages gives one file.
    """
    limit = _req_limit(req, DEFAULT_EXPORT_LIMIT, DEFAULT_EXPORT_LIMIT)
    with spool.read() as txn:
        entries, next_after = _page(txn, spool, req, limit)
    return {"csv": entries_csv(entries, header=req.get("after") is None), "count": len(entries),
            "next": next_after}
