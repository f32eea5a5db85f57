"""Postfix ``pipe(8)`` delivery target that keeps each delivered message as two files.

Invoked by a ``PostfixInstance(role="receiver")`` as an unprivileged user (pipe refuses root
and the mail owner), with the interpreter ``/usr/bin/python3`` and a copy of this file in the
instance's temp dir, so it must stay standard-library only and import nothing from the repo::

    postfix_store.py OUT_DIR from=${sender} to=${recipient}...

(pipe expands an argument containing ``${recipient}`` into one argument per recipient.) It
writes ``OUT_DIR/<ns>-<pid>.eml`` (the message exactly as pipe passed it on stdin: LF line ends,
the queue file's content including the ``Received:`` header Postfix's smtpd prepended) and then
``OUT_DIR/<ns>-<pid>.json`` (``mail_from``, ``rcpts``), each by rename, so a reader that sees the
``.json`` sees a complete ``.eml``. Exit 0 on success, 75 (EX_TEMPFAIL: Postfix defers and
retries) on any failure.
"""

from __future__ import annotations

import json
import os
import sys
import time

EX_USAGE = 64
EX_TEMPFAIL = 75


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: postfix_store.py OUT_DIR from=SENDER to=RCPT...", file=sys.stderr)
        return EX_USAGE
    out_dir = argv[0]
    mail_from = ""
    rcpts: list[str] = []
    for arg in argv[1:]:
        if arg.startswith("from="):
            mail_from = arg[5:]
        elif arg.startswith("to="):
            rcpts.append(arg[3:])
    stem = f"{time.time_ns():020d}-{os.getpid()}"
    try:
        data = sys.stdin.buffer.read()
        for suffix, payload in (
            (".eml", data),
            (".json", json.dumps({"mail_from": mail_from, "rcpts": rcpts}).encode()),
        ):
            final = os.path.join(out_dir, stem + suffix)
            tmp = final + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(payload)
            os.rename(tmp, final)
    except OSError as exc:
        print(f"postfix_store: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
