"""Plan one transaction from the server's EHLO extensions: parameters, addresses, DATA or BDAT.

Contract: pure. ``plan_transaction`` decides, before anything is sent, what a transaction will
look like on the wire, or that it must not be attempted at all. It uses an extension only when
EHLO advertised it (STANDARDS S06), and never sends what the server cannot take:

- SIZE (RFC 1870): ``SIZE=<octets>`` on MAIL when advertised; a message over a positive
  advertised limit is refused locally with ``552 5.3.4`` (RFC 1870 §4, §7; STANDARDS X04);
- 8BITMIME (RFC 6152): ``BODY=8BITMIME`` for 8-bit content when advertised, else the 7-bit form,
  else ``554 5.6.3`` locally (RFC 6152 §3, §5; X06);
- SMTPUTF8 (RFC 6531): the ``SMTPUTF8`` parameter only when needed and advertised; needed but not
  advertised gives ``553 5.6.7`` for the message, or for just the recipients whose address has
  no ASCII form (RFC 6531 §3.2, §3.4; X08); ASCII-only envelopes get A-label domains;
- CHUNKING (RFC 3030): ``BDAT`` chunks instead of DATA when advertised and enabled (X07).

A locally made refusal is a ``Reply`` like any other, so the outcome code treats it the same way.
Raises ``LocalProtocolError`` only for addresses that can never be sent (control characters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mta_engine.smtp.address import address_needs_smtputf8, wire_address
from mta_engine.smtp.body import DEFAULT_CHUNK_OCTETS, PreparedMessage
from mta_engine.smtp.connection import parse_size_limit
from mta_engine.smtp.events import Bdat, BdatLast, MailFrom, Payload, RcptTo
from mta_engine.smtp.reply import Reply

__all__ = ["TransactionPlan", "plan_legacy", "plan_transaction"]

_SIZE = "SIZE"  # RFC 1870 §3
_8BITMIME = "8BITMIME"  # RFC 6152 §2
_SMTPUTF8 = "SMTPUTF8"  # RFC 6531 §3.1
_CHUNKING = "CHUNKING"  # RFC 3030 §2
_DSN = "DSN"  # RFC 3461 §4


@dataclass(frozen=True, slots=True)
class DsnParams:
    """RFC 3461 parameters to pass on when the server advertises DSN: RET and ENVID on MAIL,
    NOTIFY and ORCPT per recipient (index -> (notify, orcpt)). Values are as stored (not xtext)."""

    ret: str | None = None
    envid: str | None = None
    rcpts: tuple[tuple[str | None, str | None], ...] = ()


def _xtext(value: str) -> str:
    """RFC 3461 §4: '+', '=' and characters outside '!'..'~' become '+XX'."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
                   for c in value)


def _rcpt_params(dsn: DsnParams | None, i: int, wire_address: str) -> tuple[str, ...]:
    if dsn is None or i >= len(dsn.rcpts):
        return ()
    notify, orcpt = dsn.rcpts[i]
    out = []
    if notify:
        out.append(f"NOTIFY={notify}")
    if orcpt:
        kind, _, addr = orcpt.partition(";")
        param = f"ORCPT={kind.strip() or 'rfc822'};{_xtext(addr.strip())}"
        # RFC 5321 §4.5.3.1.4 limits a command line to 512 octets (RFC 3461 §5 allows 500 more, which
        # not every server does): an ORCPT that would not fit is left out rather than risking the RCPT
        if len(wire_address) + len(param) + sum(len(p) + 1 for p in out) + 16 <= 512:
            out.append(param)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TransactionPlan:
    """What to send: MAIL, the RCPTs (with the caller's recipient indexes) and the body commands.

    ``refused`` holds locally made replies for recipients that are not sent (index → reply).
    ``body`` is one ``Payload`` (DATA) or BDAT chunks, the last one ``BdatLast``.
    """

    mail: MailFrom
    rcpts: tuple[tuple[int, RcptTo], ...]
    body: Payload | tuple[Bdat | BdatLast, ...]
    refused: Mapping[int, Reply] = field(default_factory=dict)

    @property
    def uses_bdat(self) -> bool:
        """True if the body goes as BDAT chunks (RFC 3030), not DATA."""
        return isinstance(self.body, tuple)


def plan_legacy(
    sender: str, recipients: Sequence[str], payload: bytes, mail_params: tuple[str, ...] = ()
) -> TransactionPlan:
    """The plan for a payload already in ``data_payload`` form: plain DATA, no extension use."""
    return TransactionPlan(
        mail=MailFrom(sender, mail_params),
        rcpts=tuple((i, RcptTo(address)) for i, address in enumerate(recipients)),
        body=Payload(payload),
    )


def _bdat_commands(message: PreparedMessage, chunk_octets: int) -> tuple[Bdat | BdatLast, ...]:
    chunks = message.chunks(chunk_octets)
    return (*(Bdat(c) for c in chunks[:-1]), BdatLast(chunks[-1]))


def plan_transaction(
    extensions: Mapping[str, str],
    sender: str,
    recipients: Sequence[str],
    message: PreparedMessage,
    *,
    server: str,
    chunking: bool = False,
    chunk_octets: int = DEFAULT_CHUNK_OCTETS,
    mail_params: tuple[str, ...] = (),
    dsn: DsnParams | None = None,
) -> TransactionPlan | Reply:
    """Plan a transaction for ``message``, or return the local reply that refuses all of it.

    ``extensions`` are the upper-cased EHLO keywords; ``server`` names the host in refusals.
    """
    has_utf8 = _SMTPUTF8 in extensions
    smtputf8 = False
    if message.needs_smtputf8 or address_needs_smtputf8(sender):
        if not has_utf8:
            return Reply(553, (f"5.6.7 message needs SMTPUTF8, which {server} does not advertise",))
        smtputf8 = True
    refused: dict[int, Reply] = {}
    accepted: list[tuple[int, str]] = []
    for i, address in enumerate(recipients):
        if not smtputf8 and not address.isascii() and address_needs_smtputf8(address):
            if has_utf8:
                smtputf8 = True  # one UTF-8 recipient turns SMTPUTF8 on for the transaction
            else:
                refused[i] = Reply(
                    553, (f"5.6.7 recipient address needs SMTPUTF8, which {server} does not advertise",)
                )
                continue
        accepted.append((i, address))
    if not accepted:
        return next(iter(refused.values()))
    params: list[str] = []
    if message.is_8bit:
        if _8BITMIME in extensions:
            params.append("BODY=8BITMIME")
        else:
            seven = message.seven_bit()
            if seven is None:
                return Reply(
                    554,
                    (f"5.6.3 8-bit message cannot be sent as 7-bit to {server}, which does not "
                     "advertise 8BITMIME",),
                )
            message = seven
    if _SIZE in extensions:
        limit = parse_size_limit(extensions[_SIZE])
        if limit is not None and message.size > limit:
            return Reply(
                552, (f"5.3.4 message size {message.size} exceeds the limit {limit} advertised by {server}",)
            )
        params.insert(0, f"SIZE={message.size}")
    if smtputf8:
        params.append("SMTPUTF8")
    params.extend(mail_params)
    use_dsn = dsn is not None and _DSN in extensions
    if use_dsn and dsn is not None:
        if dsn.ret:
            params.append(f"RET={dsn.ret}")
        if dsn.envid:
            params.append(f"ENVID={_xtext(dsn.envid)}")
    mail = MailFrom(_wire(sender, smtputf8), tuple(params))
    rcpt_dsn = dsn if use_dsn else None
    commands = tuple((i, RcptTo(w := address if address.isascii() else _wire(address, smtputf8),
                                _rcpt_params(rcpt_dsn, i, w) if rcpt_dsn is not None else ()))
                     for i, address in accepted)
    body: Payload | tuple[Bdat | BdatLast, ...]
    if chunking and _CHUNKING in extensions:
        body = _bdat_commands(message, chunk_octets)
    else:
        body = message.payload
    return TransactionPlan(mail=mail, rcpts=commands, body=body, refused=refused)


def _wire(address: str, smtputf8: bool) -> str:
    wire = wire_address(address, smtputf8=smtputf8)
    assert wire is not None, "checked by address_needs_smtputf8"
    return wire
