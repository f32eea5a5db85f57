"""dnsmasq with TXT records as well: ``DnsServer`` plus ``txt={name: [record, ...]}``.

Contract: test code only; everything else is ``tests.support.dnsmasq.DnsServer`` (loopback only,
no forwarding, stopped by PID). Each record becomes ``txt-record=<name>,"<text>"`` (one string per
record; a record text must not hold a double quote). Names may carry underscore labels
(``_mta-sts.example.test``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.support.dnsmasq import DnsServer

__all__ = ["TxtDnsServer"]


class TxtDnsServer(DnsServer):
    """``DnsServer`` that also answers TXT queries from ``txt``."""

    def __init__(self, *args: Any, txt: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.txt = {name: list(texts) for name, texts in (txt or {}).items()}
        for texts in self.txt.values():
            for text in texts:
                if '"' in text or "\n" in text:
                    raise ValueError(f"TXT text {text!r} cannot be written to a dnsmasq config")

    def config_text(self) -> str:
        lines = [f'txt-record={name},"{text}"' for name, texts in self.txt.items() for text in texts]
        return super().config_text() + "".join(line + "\n" for line in lines)
