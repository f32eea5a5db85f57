"""The next transaction may follow the end of the data before its reply (RFC 2920 §3.1, RFC 3030 §4.2).

Sans-IO: a ScriptedServer answers; the replies are matched in order across transaction boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import ScriptedServer

from mta_engine.errors import LocalProtocolError
from mta_engine.smtp._state import State
from mta_engine.smtp.connection import LmtpConnection
from mta_engine.smtp.events import (
    BdatLast,
    Command,
    Data,
    Lhlo,
    MailFrom,
    Payload,
    Quit,
    RcptTo,
    Replied,
    Rset,
)

BODY = Payload(b"Subject: x\r\n\r\nhi\r\n.\r\n")


def at_354(server: ScriptedServer, k: int = 0) -> None:
    server.send_pipelined([MailFrom(f"s{k}@x.example"), RcptTo(f"r{k}@y.example"), Data()])
    server.reply(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert server.conn.state is State.DATA_READY
    server.wire.clear()


def test_content_and_next_transaction_go_in_one_group() -> None:
    """After a 354: [content, MAIL, RCPT, DATA] in one write; replies matched in order across both."""
    server = ScriptedServer().ready("PIPELINING")
    at_354(server)
    wire = server.send_pipelined([BODY, MailFrom("s1@x.example"), RcptTo("r1@y.example"), Data()])
    assert wire == BODY.to_bytes() + b"MAIL FROM:<s1@x.example>\r\nRCPT TO:<r1@y.example>\r\nDATA\r\n"
    assert server.conn.state is State.DATA_SENT and len(server.conn.pending) == 4
    replies = server.replies(b"250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert replies == [("Payload", 250), ("MailFrom", 250), ("RcptTo", 250), ("Data", 354)]
    assert server.conn.state is State.DATA_READY and not server.conn.pending


def test_next_group_may_follow_an_unanswered_dot() -> None:
    """With PIPELINING, MAIL may be sent while the reply to the dot is still pending."""
    server = ScriptedServer().ready("PIPELINING")
    at_354(server)
    server.send(BODY)
    server.send_pipelined([MailFrom("s1@x.example"), RcptTo("r1@y.example"), Data()])
    assert [type(c) for c in server.conn.pending] == [Payload, MailFrom, RcptTo, Data]


def test_nothing_follows_the_dot_without_pipelining() -> None:
    """Without PIPELINING the dot's reply comes first (X03), alone or as a group."""
    server = ScriptedServer().ready()
    server.send(MailFrom("s@x.example"))
    server.reply(b"250 ok\r\n")
    server.send(RcptTo("r@y.example"))
    server.reply(b"250 ok\r\n")
    server.send(Data())
    server.reply(b"354 go\r\n")
    server.wire.clear()
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        server.send_pipelined([BODY, MailFrom("s1@x.example")])
    assert server.conn.state is State.DATA_READY and not server.wire
    server.send(BODY)
    with pytest.raises(LocalProtocolError):
        server.send(MailFrom("s1@x.example"))


@pytest.mark.parametrize("follower", [RcptTo("r@y.example"), Data(), Quit(), BdatLast(b"")])
def test_only_rset_or_mail_follows_the_end_of_data(follower: Command) -> None:
    """The table allows only the next transaction's RSET or MAIL after the content or BDAT LAST."""
    server = ScriptedServer().ready("PIPELINING")
    at_354(server)
    with pytest.raises(LocalProtocolError):
        server.send_pipelined([BODY, follower])
    assert server.conn.state is State.DATA_READY and not server.conn.pending and not server.wire
    server = ScriptedServer().ready("PIPELINING", "CHUNKING")
    server.send_pipelined([MailFrom("s@x.example"), RcptTo("r@y.example"), BdatLast(b"hi\r\n")])
    with pytest.raises(LocalProtocolError):
        server.send(follower)


def test_bdat_transactions_two_deep_in_one_group() -> None:
    """[MAIL RCPT BDAT LAST][RSET MAIL RCPT BDAT LAST] in one write; READY after the last reply."""
    server = ScriptedServer().ready("PIPELINING", "CHUNKING")
    group: list[Command] = [MailFrom("s0@x.example"), RcptTo("r0@y.example"), BdatLast(b"a\r\n"),
                            Rset(), MailFrom("s1@x.example"), RcptTo("r1@y.example"), BdatLast(b"b\r\n")]
    server.send_pipelined(group)
    assert server.conn.state is State.PAYLOAD_SENT
    replies = server.replies(b"250 ok\r\n250 ok\r\n250 queued\r\n250 reset\r\n250 ok\r\n550 no\r\n554 none\r\n")
    assert [name for name, _ in replies] == ["MailFrom", "RcptTo", "BdatLast", "Rset", "MailFrom", "RcptTo",
                                             "BdatLast"]
    assert server.conn.state is State.READY and not server.conn.pending


def test_refused_next_rcpt_while_dot_pending_sends_no_content() -> None:
    """550 to the next RCPT and 554 to its DATA, after the previous dot's 250: no content may follow."""
    server = ScriptedServer().ready("PIPELINING")
    at_354(server)
    server.send_pipelined([BODY, MailFrom("s1@x.example"), RcptTo("r1@y.example"), Data()])
    replies = server.replies(b"250 queued\r\n250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert replies == [("Payload", 250), ("MailFrom", 250), ("RcptTo", 550), ("Data", 554)]
    assert server.conn.state is State.READY
    with pytest.raises(LocalProtocolError):
        server.send(BODY)  # D07


def test_421_to_the_dot_drops_the_next_transaction() -> None:
    """A 421 to the dot closes the session: the next transaction's commands are no longer pending."""
    server = ScriptedServer().ready("PIPELINING")
    at_354(server)
    server.send_pipelined([BODY, MailFrom("s1@x.example"), RcptTo("r1@y.example"), Data()])
    assert server.replies(b"421 4.3.2 closing\r\n") == [("Payload", 421)]
    assert server.conn.state is State.CLOSED and not server.conn.pending


def test_lmtp_never_follows_the_end_of_data() -> None:
    """LMTP answers the data once per accepted recipient: nothing follows it unanswered (RFC 2033 §4.2)."""
    server = ScriptedServer(LmtpConnection())
    server.reply(b"220 lmtp ready\r\n")
    server.send(Lhlo("client.example"))
    server.reply(b"250-lmtp\r\n250 PIPELINING\r\n")
    at_354(server)
    with pytest.raises(LocalProtocolError):
        server.send_pipelined([BODY, MailFrom("s1@x.example")])
    server.send(BODY)
    with pytest.raises(LocalProtocolError):
        server.send(MailFrom("s1@x.example"))


# -- ordering, with random outcomes and random reply segmentation ------------------------------


@dataclass(frozen=True)
class Fate:
    """How the model server answers one transaction."""

    mail: int
    rcpt: int
    dot: int


FATES = st.builds(Fate, st.sampled_from([250, 250, 250, 451, 550]), st.sampled_from([250, 250, 250, 452, 550]),
                  st.sampled_from([250, 250, 250, 451, 554]))


def model_reply(command: Command, fate: Fate, state: dict[str, bool]) -> int:
    """The model server's reply code for ``command`` of the transaction answered by ``fate``."""
    if isinstance(command, Rset):
        state.update(mail=False, rcpt=False)
        return 250
    if isinstance(command, MailFrom):
        state.update(mail=fate.mail == 250, rcpt=False)
        return fate.mail
    if isinstance(command, RcptTo):
        if not state["mail"]:
            return 503
        state["rcpt"] = fate.rcpt == 250
        return fate.rcpt
    if isinstance(command, Data):
        return 354 if state["rcpt"] else 554
    assert isinstance(command, (Payload, BdatLast))
    ok = state["rcpt"]
    state.update(mail=False, rcpt=False)
    return fate.dot if ok else 554


def feed(server: ScriptedServer, sent: list[tuple[Command, Fate]], state: dict[str, bool],
         cuts: list[int]) -> list[tuple[Command, int]]:
    """Answer ``sent`` in order, split at ``cuts``; return (command, code) pairs as matched."""
    codes = [(command, model_reply(command, fate, state)) for command, fate in sent]
    data = b"".join(b"%d x\r\n" % code for _, code in codes)
    events = server.reply(data, cuts)
    matched = []
    for event in events:
        assert isinstance(event, Replied)
        matched.append((event.command, event.reply.code))
    assert len(matched) == len(codes)
    assert all(m[0] is c[0] and m[1] == c[1] for m, c in zip(matched, codes))  # same objects, in order
    return matched


def head(k: int, last: Command) -> list[Command]:
    return [MailFrom(f"s{k}@x.example"), RcptTo(f"r{k}@y.example"), last]


@settings(max_examples=150, deadline=None)
@given(fates=st.lists(FATES, min_size=1, max_size=6), cuts=st.lists(st.integers(1, 40), max_size=30))
def test_data_mode_replies_match_commands_across_transactions(fates: list[Fate], cuts: list[int]) -> None:
    """DATA mode as the session drives it: content only after a 354, RSET after a refused DATA, and
    every reply matched to its own command however the replies are segmented."""
    server = ScriptedServer().ready("PIPELINING")
    state = {"mail": False, "rcpt": False}
    group = head(0, Data())
    sent = [(c, fates[0]) for c in group]
    server.send_pipelined(group)
    feed(server, sent, state, cuts)
    for k, fate in enumerate(fates):
        got_354 = server.conn.state is State.DATA_READY
        assert got_354 == (fate.mail == 250 and fate.rcpt == 250)
        nxt = head(k + 1, Data()) if k + 1 < len(fates) else []
        if got_354:
            group = [BODY, *nxt]
        else:
            group = [Rset(), *nxt] if nxt else []
        if not group:
            break
        sent = [(BODY, fate)] if got_354 else []
        sent += [(c, fates[k + 1]) for c in group if c is not BODY]
        server.send_pipelined(group)
        feed(server, sent, state, cuts)
    assert server.conn.state is State.READY and not server.conn.pending


@settings(max_examples=150, deadline=None)
@given(fates=st.lists(FATES, min_size=1, max_size=6), cuts=st.lists(st.integers(1, 40), max_size=30))
def test_bdat_mode_two_unanswered_transactions(fates: list[Fate], cuts: list[int]) -> None:
    """BDAT mode: whole transactions, at most two unanswered, each later group led by RSET."""
    server = ScriptedServer().ready("PIPELINING", "CHUNKING")
    state = {"mail": False, "rcpt": False}
    unanswered: list[list[tuple[Command, Fate]]] = []
    k = 0
    while k < len(fates) or unanswered:
        group: list[Command] = []
        while k < len(fates) and len(unanswered) < 2:
            cmds = ([Rset()] if k else []) + head(k, BdatLast(b"m%d\r\n" % k))
            group += cmds
            unanswered.append([(c, fates[k]) for c in cmds])
            k += 1
        if group:
            server.send_pipelined(group)
        feed(server, unanswered.pop(0), state, cuts)
    assert server.conn.state is State.READY and not server.conn.pending
