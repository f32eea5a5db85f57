"""`mta-engine classify`: classify bounce replies read as JSON lines on stdin (issue 5).

Contract: an operator tool. Each input line is a JSON object, either ``{"reply": "550-5.1.1 ...",
"phase": "rcpt"}`` (``phase`` optional) or ``{"code": 550, "enhanced": "5.1.1", "text": "..."}``,
or ``{"local_cause": "timeout"}``; an ``id`` field is echoed. Each output line is
``{"category", "permanence", "rule"}`` plus the ``id``. A malformed line gives
``{"error": "line N: ..."}`` and processing continues; blank lines are skipped. Exit status is 0
once the input is read, 2 if a rule file is unusable. Reads only stdin and the named rule files.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from mta_engine.dsn.classify import Classification, Classifier
from mta_engine.errors import ConfigError

__all__ = ["register", "run", "main"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", action="append", default=[], metavar="FILE",
                        help="extra TOML rule file, tried before the shipped rules (repeatable; "
                             "earlier files win)")
    parser.add_argument("--no-default-rules", action="store_true",
                        help="use only the --rules files (plus the RFC 3463 and reply-class fallbacks)")


def register(subparsers: Any) -> None:
    """Add the ``classify`` subcommand to ``mta-engine``'s subparsers."""
    parser = subparsers.add_parser(
        "classify",
        help="classify bounce replies (JSON lines on stdin -> JSON lines on stdout)",
        description='Reads {"reply": "550-5.1.1 ...", "phase": "rcpt"} lines on stdin and writes '
                    '{"category": ..., "permanence": ..., "rule": ...} lines on stdout.',
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"`{key}` must be a string or null")
    return value


def classify_object(classifier: Classifier, obj: Any) -> Classification:
    """Classify one decoded input object; ValueError says what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    phase = _optional_str(obj, "phase")
    local_cause = _optional_str(obj, "local_cause")
    if local_cause is not None:
        return classifier.classify(None, None, _optional_str(obj, "text") or "", phase, local_cause)
    if "reply" in obj:
        reply = _optional_str(obj, "reply")
        if not reply:
            raise ValueError("`reply` must be a non-empty string")
        return classifier.classify_reply(reply, phase)
    if "code" in obj or "text" in obj:
        code = obj.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599):
            raise ValueError("`code` must be an integer reply code 200-599 or null")
        return classifier.classify(code, _optional_str(obj, "enhanced"), _optional_str(obj, "text") or "", phase)
    raise ValueError("expected a `reply` field (or `code`/`enhanced`/`text`, or `local_cause`)")


def classify_stream(classifier: Classifier, lines: IO[str], out: IO[str]) -> int:
    """Classify every line of ``lines`` onto ``out``; return the number of malformed lines."""
    errors = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        result: dict[str, Any]
        obj: Any = None
        try:
            obj = json.loads(line)
            found = classify_object(classifier, obj)
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            errors += 1
            result = {"error": f"line {number}: {exc}"}
        else:
            result = {"category": found.category.value, "permanence": found.permanence.value,
                      "rule": found.rule}
        if isinstance(obj, dict) and "id" in obj:
            result = {"id": obj["id"], **result}
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    out.flush()
    return errors


def run(args: argparse.Namespace, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Entry point for ``mta-engine classify``; returns the exit status."""
    try:
        if args.no_default_rules or args.rules:
            classifier = Classifier.from_files(*args.rules, include_default=not args.no_default_rules)
        else:
            classifier = Classifier.default()
    except ConfigError as exc:
        print(f"mta-engine classify: {exc}", file=sys.stderr)
        return 2
    classify_stream(classifier, stdin if stdin is not None else sys.stdin,
                    stdout if stdout is not None else sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m mta_engine.dsn.classify_cli [--rules FILE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m mta_engine.dsn.classify_cli",
                                     description="Classify bounce replies read as JSON lines on stdin.")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
