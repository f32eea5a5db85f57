"""Sans-IO SMTP client core: reply parsing, DATA preparation, commands, and the state machine.

Contract: nothing under ``mta_engine.smtp`` does I/O, reads a clock or logs; it turns commands
into bytes and bytes into events. ``LocalProtocolError`` means the caller misused it,
``RemoteProtocolError`` means the server broke SMTP.
"""

from mta_engine.smtp._state import State
from mta_engine.smtp.address import envelope_needs_smtputf8, wire_address
from mta_engine.smtp.body import PreparedMessage, data_payload, dot_stuff, has_8bit, normalize_crlf, unstuff
from mta_engine.smtp.connection import ClientConnection, LmtpConnection
from mta_engine.smtp.events import (
    NEED_DATA,
    Bdat,
    BdatLast,
    Closed,
    Command,
    Data,
    Ehlo,
    Event,
    Helo,
    Lhlo,
    MailFrom,
    Noop,
    Payload,
    Quit,
    RcptTo,
    Replied,
    Rset,
    StartTls,
)
from mta_engine.smtp.reply import Reply, ReplyParser

__all__ = [
    "NEED_DATA",
    "Bdat",
    "BdatLast",
    "ClientConnection",
    "Closed",
    "Command",
    "Data",
    "Ehlo",
    "Event",
    "Helo",
    "Lhlo",
    "LmtpConnection",
    "MailFrom",
    "Noop",
    "Payload",
    "PreparedMessage",
    "Quit",
    "RcptTo",
    "Replied",
    "Reply",
    "ReplyParser",
    "Rset",
    "StartTls",
    "State",
    "data_payload",
    "dot_stuff",
    "envelope_needs_smtputf8",
    "has_8bit",
    "normalize_crlf",
    "unstuff",
    "wire_address",
]
