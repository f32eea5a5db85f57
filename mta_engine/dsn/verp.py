"""VERP return paths and engine Message-IDs: encode a recipient id into an address, read it back.

Contract: pure (no I/O). With ``[delivery] verp_domain`` set, a transaction's envelope sender
(RFC 5321 reverse-path) becomes ``bounces+<queue_id>.<index>@<verp_domain>`` when the
transaction carries one recipient, and ``bounces+<queue_id>@<verp_domain>`` when it carries
several (a shared body sent to many recipients in one transaction). The null sender (DSNs we
send) is never rewritten. The encoding uses only lower-case hex digits, decimal digits and one
dot, so it survives case folding, needs no quoting (RFC 5321 §4.1.2 Dot-string) and stays
under the 64-octet local-part limit (RFC 5321 §4.5.3.1.1): 8 + 16 + 1 + 10 = 35 octets at most.

It carries no tenant, campaign or address: those come from the origin index
(``spool/origin.py``). Queue ids are sequential, so each reference is signed: ``-<tag>`` follows
it, ten hex digits of HMAC-SHA256 under the spool's own key (``Spool.verp_key``), and the inbound
listener trusts only references whose tag verifies (``RecipientRef.signed_by``). A forged bounce
or complaint that guesses a queue id can then not suppress anyone. 8 + 16 + 1 + 10 + 1 + 10 = 46
octets at most.

Engine Message-IDs (``Worker.payload`` for rendered bodies) have the same shape and tag:
``<queue_id>.<index>-<tag>@<ehlo_name>``; ``parse_message_id`` reads them back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["VERP_PREFIX", "RecipientRef", "message_id", "parse_message_id", "parse_verp", "return_path", "sign"]

VERP_PREFIX = "bounces"
TAG_HEX = 10
_REF = re.compile(r"([0-9a-f]{16})(?:\.(\d{1,10}))?(?:-([0-9a-f]{%d}))?" % TAG_HEX)


def sign(key: bytes, ref: str) -> str:
    """The tag of reference ``ref`` (``<queue_id>`` or ``<queue_id>.<index>``) under ``key``."""
    return hmac.new(key, ref.encode("ascii"), hashlib.sha256).hexdigest()[:TAG_HEX]


def _tagged(ref: str, key: bytes | None) -> str:
    return f"{ref}-{sign(key, ref)}" if key else ref


@dataclass(frozen=True, slots=True)
class RecipientRef:
    """A reference to one of our messages, and to one of its recipients when ``index`` is set."""

    msg_id: int
    index: int | None
    via: str
    """How it was found: ``verp``, ``message_id`` or ``return_path`` (a returned Return-Path field)."""
    tag: str | None = None
    """The signature that came with it (unverified until ``signed_by``)."""

    def signed_by(self, key: bytes) -> bool:
        """True if the reference carries the tag ``key`` gives it: it was made by this engine."""
        return self.tag is not None and hmac.compare_digest(self.tag, sign(key, self.queue_id))

    @property
    def queue_id(self) -> str:
        """``<queue_id>.<index>`` when the recipient is known, else the message's ``<queue_id>``."""
        qid = f"{self.msg_id:016x}"
        return qid if self.index is None else f"{qid}.{self.index}"


def return_path(sender: str, msg_id: int, indexes: list[int], domain: str, key: bytes | None = None) -> str:
    """The VERP reverse-path for a transaction carrying ``indexes`` of message ``msg_id``, signed
    with ``key`` when given. ``sender`` is returned unchanged when it is the null sender or
    ``domain`` is empty.
    """
    if not sender or not domain:
        return sender
    ref = f"{msg_id:016x}.{indexes[0]}" if len(indexes) == 1 else f"{msg_id:016x}"
    return f"{VERP_PREFIX}+{_tagged(ref, key)}@{domain}"


def message_id(msg_id: int, index: int, host: str, key: bytes | None = None) -> str:
    """The engine's Message-ID (without angle brackets) for one recipient's rendered message."""
    return f"{_tagged(f'{msg_id:016x}.{index}', key)}@{host}"


def _ref(text: str, via: str) -> RecipientRef | None:
    m = _REF.fullmatch(text)
    if m is None:
        return None
    msg_id = int(m.group(1), 16)
    if msg_id == 0:
        return None
    return RecipientRef(msg_id, None if m.group(2) is None else int(m.group(2)), via, m.group(3))


def _strip_angles(text: str) -> str:
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.strip()


def parse_verp(address: str, domains: frozenset[str] | None = None, via: str = "verp") -> RecipientRef | None:
    """The reference in a VERP address (``bounces+<ref>@domain``), or None.

    ``domains`` (lower-case), when given, restricts the accepted domains.
    """
    local, at, domain = _strip_angles(address).rpartition("@")
    if not at:
        return None
    if domains is not None and domain.lower().rstrip(".") not in domains:
        return None
    prefix, plus, ref = local.lower().partition("+")
    if not plus or prefix != VERP_PREFIX:
        return None
    return _ref(ref, via)


def parse_message_id(value: str) -> RecipientRef | None:
    """The reference in an engine Message-ID (``<queue_id>.<index>@host``), or None."""
    local, at, _ = _strip_angles(value).partition("@")
    if not at:
        return None
    ref = _ref(local.lower(), "message_id")
    return ref if ref is not None and ref.index is not None else None
