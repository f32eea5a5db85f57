"""The whole exception tree of mta-engine.

Contract: every error the engine raises on purpose is a subclass of ``MtaError``. OS, ssl,
lmdb and DNS library exceptions are translated once, at the adapter boundary, with
``raise ... from exc``. An SMTP *rejection* is not an exception: it is a ``Reply`` value.
"""

from __future__ import annotations


class MtaError(Exception):
    """Base of every error raised by mta-engine on purpose."""


class ConfigError(MtaError):
    """The configuration is invalid; the message names the key and the file."""


class ProtocolError(MtaError):
    """An SMTP protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol state does not allow (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid SMTP (bad code, mixed codes, oversize line)."""


class DeliveryTimeout(MtaError):
    """A per-phase SMTP timeout expired."""


class ConnectTimeout(DeliveryTimeout):
    """The TCP connection (or greeting) did not complete in time."""


class ReplyTimeout(DeliveryTimeout):
    """A command's reply did not arrive in time."""


class DataTimeout(DeliveryTimeout):
    """Writing the message data, or waiting for the final reply, took too long."""


class NetworkError(MtaError):
    """The transport failed (refused, reset, unreachable)."""


class ConnectError(NetworkError):
    """The TCP connection could not be established."""


class TlsError(NetworkError):
    """The TLS handshake failed."""


class DnsError(MtaError):
    """A DNS lookup failed. ``permanent`` tells NXDOMAIN/null MX from SERVFAIL/timeout."""

    def __init__(self, message: str, *, permanent: bool, enhanced: str = "4.4.3") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.enhanced = enhanced


class SpoolError(MtaError):
    """The spool could not be read or written."""


class SpoolCorrupt(SpoolError):
    """A spool record could not be decoded."""


class SpoolFull(SpoolError):
    """The spool's map size is exhausted."""


class InjectError(MtaError):
    """A submission is malformed; ``errors`` maps field paths to reasons."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
