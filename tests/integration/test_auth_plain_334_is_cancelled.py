"""A server that answers AUTH PLAIN's initial response with 334 gets "*", not a dropped connection (RFC 4954 §4)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from mta_engine.delivery.session import AuthRefused, SmtpSession, SmtpTimeouts
from tests.support.procs import free_port

pytestmark = pytest.mark.integration

TIMEOUTS = SmtpTimeouts(connect_s=5, greeting_s=5, ehlo_s=5, mail_s=5, rcpt_s=5, data_s=5, block_s=5,
                        final_s=5, quit_s=5, tls_s=5)


class _AskingController(Controller):
    """aiosmtpd whose PLAIN ignores the initial response and asks for it with 334."""

    def __init__(self, seen: list[str], port: int) -> None:
        self.seen = seen
        super().__init__(object(), hostname="127.0.0.1", port=port, auth_require_tls=False,
                         authenticator=lambda *a: AuthResult(success=True))

    def factory(self) -> SMTP:
        seen = self.seen

        class AskingSMTP(SMTP):
            async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
                blob = await self.challenge_auth("")  # aiosmtpd answers "*" with 501 itself
                seen.append("cancelled" if blob is MISSING else "answered")
                if blob is MISSING:
                    return AuthResult(success=False, handled=True)
                return AuthResult(success=True, auth_data=LoginPassword(b"", b""))

            async def smtp_QUIT(self, arg: str) -> None:
                seen.append("QUIT")
                await super().smtp_QUIT(arg)

        return AskingSMTP(self.handler, **self.SMTP_kwargs)


def test_plain_334_is_cancelled_with_star() -> None:
    """AUTH PLAIN → 334 → "*" → 501: AuthRefused with the 501, then QUIT on the same connection."""
    seen: list[str] = []
    port = free_port()
    controller = _AskingController(seen, port)
    controller.start()
    try:
        async def run() -> AuthRefused:
            with pytest.raises(AuthRefused) as info:
                await SmtpSession.open("127.0.0.1", port, ehlo_name="mta.test", timeouts=TIMEOUTS,
                                       auth=("user", "pass"), auth_without_tls=True)
            return info.value

        refused = asyncio.run(run())
    finally:
        controller.stop()
    assert refused.phase == "auth" and refused.reply.code == 501
    assert seen == ["cancelled", "QUIT"]
    assert "pass" not in str(refused)
