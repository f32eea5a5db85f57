"""Bounce and feedback-loop report samples in the shape real providers send, written for these tests.

Each builder returns the raw message (bytes, CRLF) as a remote MTA would send it to the bounce
domain. ``original`` is the header section of our message being reported on (see
``original_headers``), so tests can point a report at a message the engine really delivered.
"""

from __future__ import annotations


def original_headers(*, message_id: str, return_path: str | None = None, to: str = "someone@example.net",
                     from_: str = "news@sender.test", subject: str = "Spring sale") -> str:
    """The header section of our original message as the receiving side returns it."""
    lines = []
    if return_path is not None:
        lines.append(f"Return-Path: <{return_path}>")
    lines += ["Received: from mta.test (mta.test [192.0.2.10]) by mx.example.net; Tue, 7 May 2024 10:00:00 +0000",
              f"From: {from_}", f"To: {to}", f"Subject: {subject}", f"Message-ID: {message_id}",
              "Date: Tue, 7 May 2024 10:00:00 +0000", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    return "\r\n".join(lines) + "\r\n"


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def gmail_dsn(recipient: str, original: str, *, to: str = "bounces@bounce.test") -> bytes:
    """Google-style DSN: human text, delivery-status, the full original returned as message/rfc822."""
    return _crlf(f"""Return-Path: <>
Received: from mail-sor-f69.google.example (mail-sor-f69.google.example [203.0.113.69])
\tby inbound.test; Tue, 7 May 2024 10:00:05 +0000
From: Mail Delivery Subsystem <mailer-daemon@googlemail.example>
To: {to}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
Message-ID: <6638aa05.bounce.1@mx.google.example>
Date: Tue, 7 May 2024 10:00:05 +0000
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000gmailb01"; report-type=delivery-status

--000000000000gmailb01
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {recipient} because the address couldn't be found,
or is unable to receive mail.

The response from the remote server was:
550 5.1.1 The email account that you tried to reach does not exist.

--000000000000gmailb01
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.example
Received-From-MTA: dns; mta.test
Arrival-Date: Tue, 07 May 2024 03:00:01 -0700 (PDT)

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.example. (2001:db8::1b, the server for the
 domain example.net.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does
 not exist. Please try 550-5.1.1 double-checking the recipient's email address for typos or
 550-5.1.1 unnecessary spaces. 550 5.1.1  d2-20020a05 - gsmtp
Last-Attempt-Date: Tue, 07 May 2024 03:00:05 -0700 (PDT)

--000000000000gmailb01
Content-Type: message/rfc822

{original}
Hello, this is the spring sale.

--000000000000gmailb01--
""")


def outlook_ndr(recipient: str, original: str, *, to: str = "bounces@bounce.test") -> bytes:
    """Exchange Online-style NDR: multipart/alternative human part, DSN, headers-only original."""
    return _crlf(f"""From: postmaster@outlook.example
To: {to}
Date: Tue, 7 May 2024 10:01:00 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="b_exo_7f3a"
Content-Language: en-US
Message-ID: <8a1e3c2a-91d7-4c55-bd0e-1f2f03a0a001@DM6PR.prod.outlook.example>
In-Reply-To: <00000000000000a1.0@mta.test>
Subject: Undeliverable: Spring sale
Auto-Submitted: auto-replied
MIME-Version: 1.0

--b_exo_7f3a
Content-Type: multipart/alternative; boundary="b_exo_alt"

--b_exo_alt
Content-Type: text/plain; charset="us-ascii"

Your message to {recipient} couldn't be delivered.
{recipient.split("@")[0]} wasn't found at {recipient.split("@")[1]}.

--b_exo_alt
Content-Type: text/html; charset="us-ascii"

<html><body><p>Your message to {recipient} couldn't be delivered.</p></body></html>

--b_exo_alt--

--b_exo_7f3a
Content-Type: message/delivery-status

Reporting-MTA: dns;DM6PR.prod.outlook.example
Received-From-MTA: dns;mta.test
Arrival-Date: Tue, 7 May 2024 10:00:58 +0000

Final-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup
X-Display-Name: {recipient}

--b_exo_7f3a
Content-Type: text/rfc822-headers

{original}
--b_exo_7f3a--
""")


def postfix_dsn(recipient: str, original: str, *, action: str = "failed", status: str = "5.1.1",
                diagnostic: str = "smtp; 550 5.1.1 <{r}>: Recipient address rejected: User unknown in local "
                                  "recipient table", to: str = "bounces@bounce.test") -> bytes:
    """Postfix bounce(8) style: the same report for a failure or (action=delayed) a delay warning."""
    diag = diagnostic.format(r=recipient)
    subject = "Undelivered Mail Returned to Sender" if action == "failed" else \
        "Delayed Mail (still being retried)"
    return _crlf(f"""Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: {subject}
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="3F1A2B0C11.1715076000/mx.example.net"
Message-Id: <20240507100000.3F1A2B0C11@mx.example.net>

This is a MIME-encapsulated message.

--3F1A2B0C11.1715076000/mx.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: host mailstore.example.net[198.51.100.4] said: {diag.split("; ", 1)[-1]}
    (in reply to RCPT TO command)

--3F1A2B0C11.1715076000/mx.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
X-Postfix-Queue-ID: 3F1A2B0C11
X-Postfix-Sender: rfc822; bounces@bounce.test
Arrival-Date: Tue,  7 May 2024 09:59:58 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mailstore.example.net
Diagnostic-Code: {diag}

--3F1A2B0C11.1715076000/mx.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original}
--3F1A2B0C11.1715076000/mx.example.net--
""")


def exim_text_bounce(recipient: str, original: str, *, to: str = "bounces@bounce.test") -> bytes:
    """Classic Exim plain-text failure report (no multipart/report)."""
    return _crlf(f"""Return-path: <>
From: Mail Delivery System <Mailer-Daemon@mx.exim.example>
To: {to}
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1s4Qx1-0003Ab-Cd@mx.exim.example>
Date: Tue, 07 May 2024 10:02:00 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    host mailbox.exim.example [192.0.2.77]
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    550 5.2.1 Mailbox disabled, not accepting messages

------ This is a copy of the message, including all the headers. ------

{original}
Hello, this is the spring sale.
""")


def qmail_failure_notice(recipient: str, original: str, *, to: str = "bounces@bounce.test") -> bytes:
    """qmail's "failure notice": an address line, then the reason with a #-code, then the original."""
    return _crlf(f"""From: MAILER-DAEMON@qmail.example
To: {to}
Subject: failure notice
Date: 7 May 2024 10:03:00 -0000

Hi. This is the qmail-send program at qmail.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{original}
Hello.
""")


def yahoo_arf(rcpt_to: str | None, original: str, *, mail_from: str, to: str = "fbl@bounce.test",
              feedback_type: str = "abuse") -> bytes:
    """Yahoo/AOL complaint feedback loop report (ARF, RFC 5965) with the full original attached."""
    rcpt_line = f"Original-Rcpt-To: {rcpt_to}\n" if rcpt_to else ""
    return _crlf(f"""From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.example>
To: {to}
Subject: FW: Spring sale
Date: Tue, 7 May 2024 11:00:00 +0000
Message-ID: <cfl.1715079600.42@arf.mail.yahoo.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="----=_Part_yfbl_42"

------=_Part_yfbl_42
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP 192.0.2.10 on
Tue, 7 May 2024 10:00:00 +0000. For more information about this format please see
the ARF specification.

------=_Part_yfbl_42
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <{mail_from}>
{rcpt_line}Received-Date: Tue, 7 May 2024 10:00:00 +0000
Source-IP: 192.0.2.10
Reported-Domain: sender.test
Authentication-Results: mta1001.mail.yahoo.example; dkim=pass header.d=sender.test

------=_Part_yfbl_42
Content-Type: message/rfc822
Content-Disposition: inline

{original}
Hello, this is the spring sale.

------=_Part_yfbl_42--
""")


def jmrp_arf(original: str, *, to: str = "fbl@bounce.test") -> bytes:
    """Outlook.com JMRP-style complaint: the complainer is redacted, only the original's headers lead back."""
    return _crlf(f"""From: staff@hotmail.example
To: {to}
Subject: complaint about message from 192.0.2.10
Date: Tue, 7 May 2024 11:05:00 -0700
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="jmrp_boundary_9d2"

--jmrp_boundary_9d2
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.10.

--jmrp_boundary_9d2
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Microsoft-JMRP/1.0
Version: 1
Source-IP: 192.0.2.10
Arrival-Date: Tue, 7 May 2024 10:00:00 -0700

--jmrp_boundary_9d2
Content-Type: message/rfc822
Content-Disposition: inline

{_redact_to(original)}
Body removed by the reporter.

--jmrp_boundary_9d2--
""")


def _redact_to(original: str) -> str:
    return "\r\n".join("To: [redacted]" if line.startswith("To: ") else line for line in original.split("\r\n"))


def comcast_arf(rcpt_to: str, original: str, *, mail_from: str, to: str = "fbl@bounce.test",
                feedback_type: str = "abuse") -> bytes:
    """Comcast-style feedback loop report: ARF with Arrival-Date and a headers-only original."""
    return _crlf(f"""From: feedbackloop@comcast.example
To: {to}
Subject: Comcast Feedback Loop Report
Date: Tue, 7 May 2024 12:00:00 -0400
MIME-Version: 1.0
Content-Type: multipart/report; report-type="feedback-report"; boundary="ccfbl-0042"

--ccfbl-0042
Content-Type: text/plain

Comcast has received the attached message from your network.

--ccfbl-0042
Content-Type: message/feedback-report

Version: 1
Feedback-Type: {feedback_type}
User-Agent: Comcast Feedback Loop (V0.01)
Original-Mail-From: {mail_from}
Original-Rcpt-To: {rcpt_to}
Arrival-Date: Tue, 7 May 2024 10:00:00 -0400
Source-IP: 192.0.2.10
Incidents: 1

--ccfbl-0042
Content-Type: text/rfc822-headers

{original}
--ccfbl-0042--
""")
