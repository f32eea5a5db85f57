"""`mta-engine ctl suppress add|remove|list|import|export`: the suppression list (issue 5).

Contract: a thin client. It builds one control request per call, using the ``suppress_*`` commands
of spool/suppress.py, and prints the answer. It never opens the spool, and it imports only the
standard library, so `mta-engine ctl` stays fast. ``export`` and ``list --all`` follow ``next``
page by page. Exit status: 0 done, 1 the engine refused (message on stderr), 2 usage or local
file error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

Control = Callable[[dict[str, Any]], dict[str, Any]]

__all__ = ["register", "run"]

MAX_IMPORT_BYTES = 15 << 20
"""Below the control frame limit (control/protocol.MAX_BYTES, 16 MiB) with room for the envelope."""


def register(ctl_subparsers: Any, *, func: Callable[[argparse.Namespace], int]) -> None:
    """Add ``suppress`` with its subcommands to ``mta-engine ctl``; ``func`` runs them (it calls ``run``)."""
    p = ctl_subparsers.add_parser("suppress", help="manage the per-tenant suppression list",
                                  description="Addresses on a tenant's list are refused at submission.")
    p.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="suppress_command", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_)
        a.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        a.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON answer")
        a.set_defaults(func=func)
        return a

    a = action("add", "suppress an address")
    a.add_argument("address")
    a.add_argument("--tenant", default="", help="tenant (default: the default tenant)")
    a.add_argument("--reason", help='why (default: "added by operator")')
    r = action("remove", "stop suppressing an address")
    r.add_argument("address")
    r.add_argument("--tenant", default="", help="tenant (default: the default tenant)")
    ls = action("list", "list suppressed addresses (one page unless --all)")
    ls.add_argument("--tenant", help='only this tenant ("" = the default tenant; default: all tenants)')
    ls.add_argument("--prefix", default="", help="only addresses starting with this text")
    ls.add_argument("--limit", type=int, default=1000, help="entries per page (1-10000, default 1000)")
    ls.add_argument("--after", metavar="CURSOR", help="continue after this cursor (printed at the end of a page)")
    ls.add_argument("--all", action="store_true", help="follow the cursor to the end")
    im = action("import", "import a CSV file: address[,tenant[,reason]], all or nothing")
    im.add_argument("file", help="CSV file, or - for stdin; a header line is optional")
    im.add_argument("--tenant", default="", help="tenant for lines that name none (default: the default tenant)")
    ex = action("export", "export as CSV (address,tenant,reason,source,added_at)")
    ex.add_argument("--tenant", help='only this tenant ("" = the default tenant; default: all tenants)')
    ex.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")


def _fail(resp: dict[str, Any]) -> int:
    print(f"mta-engine: {resp.get('error')}", file=sys.stderr)
    return 1


def _print_entries(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        tenant = e["tenant"] or "-"
        print(f"{e['address']:40} {tenant:16} {e['added_at']}  {e['source']:22} {e['reason']}")


def run(args: argparse.Namespace, control: Control) -> int:
    """Run one ``ctl suppress`` action through ``control`` (one request -> one answer)."""
    as_json = getattr(args, "json", False)
    what = args.suppress_command
    if what in ("add", "remove"):
        req: dict[str, Any] = {"cmd": f"suppress_{what}", "address": args.address, "tenant": args.tenant}
        if what == "add" and args.reason:
            req["reason"] = args.reason
        resp = control(req)
        if not resp.get("ok"):
            return _fail(resp)
        print(json.dumps({k: v for k, v in resp.items() if k != "ok"}, indent=2) if as_json else resp["message"])
        return 0
    if what == "import":
        try:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8-sig") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"mta-engine: cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
        if len(text.encode("utf-8")) > MAX_IMPORT_BYTES:
            print(f"mta-engine: {args.file} is over {MAX_IMPORT_BYTES >> 20} MiB; split it into smaller files "
                  "(each file is imported all or nothing)", file=sys.stderr)
            return 2
        resp = control({"cmd": "suppress_import", "csv": text, "tenant": args.tenant})
        if not resp.get("ok"):
            return _fail(resp)
        print(json.dumps({k: v for k, v in resp.items() if k != "ok"}, indent=2) if as_json else resp["message"])
        return 0
    # list and export: page through `next`
    cmd = "suppress_list" if what == "list" else "suppress_export"
    req = {"cmd": cmd}
    if args.tenant is not None:
        req["tenant"] = args.tenant
    if what == "list":
        req.update(prefix=args.prefix, limit=args.limit)
        if args.after:
            req["after"] = args.after
    out = sys.stdout
    try:
        if what == "export" and args.output:
            out = open(args.output, "w", encoding="utf-8", newline="")
    except OSError as exc:
        print(f"mta-engine: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        collected: list[dict[str, Any]] = []
        while True:
            resp = control(req)
            if not resp.get("ok"):
                return _fail(resp)
            if what == "export":
                out.write(resp["csv"])
            elif as_json:
                collected.extend(resp["entries"])
            else:
                _print_entries(resp["entries"])
            follow = what == "export" or args.all
            if resp.get("next") is None or not follow:
                break
            req["after"] = resp["next"]
        if what == "list":
            if as_json:
                print(json.dumps({"entries": collected, "next": resp.get("next")}, indent=2))
            elif resp.get("next") is not None:
                print(f"more: --after {resp['next']}  (or --all)", file=sys.stderr)
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
