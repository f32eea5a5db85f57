"""`mta-engine` command line: serve, inject, ctl, config.

Contract: thin. Parses arguments, loads config, and hands over to ``proc/*`` or talks to the
control socket / HTTP API. Heavy imports happen inside the subcommand that needs them, so
`mta-engine --help` and `mta-engine ctl` start fast. Errors say what to do, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .config import Config, load
from .errors import ConfigError


def _load(args: argparse.Namespace) -> Config:
    return load(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from .proc.supervisor import main

    return main(_load(args), args.config)


def cmd_child(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.role == "manager":
        from .proc.manager import main as manager_main

        return manager_main(cfg)
    if args.role == "webhooks":
        from .proc.webhooks import main as webhooks_main

        return webhooks_main(cfg)
    if args.role == "accounting":
        from .proc.accounting import main as accounting_main

        return accounting_main(cfg)
    if args.role == "ingest":
        from .proc.ingest import main as ingest_main

        return ingest_main(cfg)
    from .proc.worker import main as worker_main

    return worker_main(cfg, args.shard, cfg.ipc_path)


def _control(cfg: Config, req: dict[str, Any]) -> dict[str, Any]:
    from .control.protocol import request

    try:
        return request(cfg.control.socket, req)
    except PermissionError:
        raise SystemExit(f"mta-engine: no permission to use {cfg.control.socket} (mode 0600): run as the engine's user")
    except (FileNotFoundError, ConnectionRefusedError):
        raise SystemExit(f"mta-engine: no engine is listening on {cfg.control.socket}; "
                         "start it with `make run` or `mta-engine serve`, or pass the --config it runs with")


def _print_status(st: dict[str, Any]) -> None:
    q, s = st["queue"], st["since_start"]
    print(f"engine pid {st['pid']}  up {st['uptime_s']}s  {'DRAINING' if st['draining'] else 'running'}")
    print(f"queue       messages {q['messages']}  recipients {q['recipients']}  queued {q['queued']}  "
          f"in-flight {q['in_flight']}  corrupt {q['corrupt']}")
    print(f"since start delivered {s['delivered']}  deferred {s['deferred']}  bounced {s['bounced']}  "
          f"expired {s['expired']}  unknown {s['unknown']}")
    print(f"workers     {len(st['workers'])}/{st['workers_expected']} connected")
    for w in st["workers"]:
        print(f"  shard {w['shard']}  pid {w['pid']}  jobs {w['jobs']}  in-flight {w['in_flight']}"
              f"{'  draining' if w['draining'] else ''}")
    if st["sites_top10"]:
        print("top sites   delivered  deferred  bounced  in-flight  ready  mode      window")
        for site in st["sites_top10"]:
            print(f"  {site['site'][:40]:40} {site['delivered']:9} {site['deferred']:9} {site['bounced']:8} "
                  f"{site['in_flight']:9} {site['ready']:6}  {site.get('mode', '-'):9} "
                  f"{site.get('window', '-')}/{site.get('window_limit', '-')}")
    for site in st.get("sites_not_normal", []):
        print(f"  not normal: {site['site']} {site['mode']} window {site['window']}/{site['window_limit']}")
    for kind, values in st.get("suspended", {}).items():
        print(f"suspended {kind}: {', '.join(values)}")


def cmd_ctl(args: argparse.Namespace) -> int:
    cfg = _load(args)
    req: dict[str, Any] = {"cmd": args.command}
    for key in ("site", "domain", "campaign", "tenant"):
        if getattr(args, key, None):
            req[key] = getattr(args, key)
    resp = _control(cfg, req)
    if not resp.get("ok"):
        print(f"mta-engine: {resp.get('error')}", file=sys.stderr)
        return 1
    if args.json:
        resp.pop("ok")
        print(json.dumps(resp, indent=2))
    elif args.command == "status":
        _print_status(resp["status"])
    else:
        print(resp.get("message", "ok"))
    return 0


def cmd_ctl_suppress(args: argparse.Namespace) -> int:
    from .control.suppress_cli import run

    cfg = _load(args)
    return run(args, lambda req: _control(cfg, req))


def cmd_inject(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    cfg = _load(args)
    if args.bsmtp:
        from .ingest.bsmtp import BSMTP_PATH, inject_bsmtp_file

        return inject_bsmtp_file(args.url or f"http://{cfg.http.listen}{BSMTP_PATH}", args.bsmtp,
                                 timeout_s=args.timeout)
    if not args.file:
        raise SystemExit("mta-engine: inject needs a JSON FILE or --bsmtp FILE")
    url = args.url or f"http://{cfg.http.listen}/api/inject/v1"
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SystemExit(f"mta-engine: cannot read {args.file}: {exc.strerror}")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        raise SystemExit(f"mta-engine: cannot reach {url}: {exc.reason}; is the engine running?")


def cmd_config(args: argparse.Namespace) -> int:
    from .config import to_dict

    print(json.dumps(to_dict(_load(args)), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mta-engine", description="Outbound mail delivery engine.")
    p.add_argument("--version", action="version", version=f"mta-engine {__import__('mta_engine').__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", metavar="FILE", default=os.environ.get("MTA_ENGINE_CONFIG"),
                        help="TOML config file (default: embedded defaults; env MTA_ENGINE_CONFIG)")
        return sp

    s = with_config(sub.add_parser("serve", help="run the engine in the foreground"))
    s.set_defaults(func=cmd_serve)
    c = with_config(sub.add_parser("_child", help=argparse.SUPPRESS))
    c.add_argument("role", choices=["manager", "ingest", "worker", "webhooks", "accounting"])
    c.add_argument("--shard", type=int, default=0)
    c.set_defaults(func=cmd_child)
    i = with_config(sub.add_parser("inject", help="submit a JSON inject request (KumoMTA shape)"))
    i.add_argument("file", nargs="?", help="JSON file with the inject request")
    i.add_argument("--bsmtp", metavar="FILE", help="submit a batch-SMTP file instead (MAIL/RCPT/DATA blocks)")
    i.add_argument("--url", help="inject URL (default: from [http] listen)")
    i.add_argument("--timeout", type=float, default=300.0)
    i.set_defaults(func=cmd_inject)
    k = with_config(sub.add_parser("ctl", help="operate a running engine over its control socket"))
    k.add_argument("--json", action="store_true", help="print the raw JSON answer")
    ctl = k.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in (("status", "queue, workers and sites at a glance"),
                        ("shutdown", "drain in-flight deliveries and stop the engine"),
                        ("suspend", "stop dispatching one --site, --domain, --campaign or --tenant"),
                        ("resume", "undo suspend for one --site, --domain, --campaign or --tenant")):
        c = ctl.add_parser(name, help=help_)
        # SUPPRESS: an option given before the command (`ctl --config F status`) is not reset here
        c.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON answer")
        if name in ("suspend", "resume"):
            for key in ("site", "domain", "campaign", "tenant"):
                c.add_argument(f"--{key}", help=f"the {key} to {name}")
        c.set_defaults(func=cmd_ctl)
    from .control.suppress_cli import register as register_suppress

    register_suppress(ctl, func=cmd_ctl_suppress)
    from .dsn.classify_cli import register as register_classify

    register_classify(sub)
    from .obs.csv_export import register as register_csv

    register_csv(sub)
    g = with_config(sub.add_parser("config", help="print the effective configuration"))
    g.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"mta-engine: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
