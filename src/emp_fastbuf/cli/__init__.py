"""The ``fastbuf`` command: query the local store, and start the agent or the demo.

Exit codes: 0 success, 1 what was asked for does not exist (or the store cannot be read),
2 usage errors, 3 ``status``: no agent runs or it is unhealthy, 4 ``deadletter replay``:
some were not sent. See ``docs/cli.md``.

``parser`` declares the commands and their arguments, ``commands`` holds their handlers,
``flags`` parses and checks flag values, ``render`` prints for people and ``jsonl`` for
programs (``--json``); ``destinations`` says where records go when there is no store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from emp_fastbuf.cli import render
from emp_fastbuf.cli.commands import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, NotFound
from emp_fastbuf.cli.flags import (
    UsageError,
    check_ring,
    check_utf8,
    home,
    parse_level,
    parse_since,
)
from emp_fastbuf.cli.jsonl import format_time, metric_json, record_json
from emp_fastbuf.cli.parser import build_parser
from emp_fastbuf.cli.render import sparkline
from emp_fastbuf.store import StoreDamaged, StoreError

__all__ = [
    "UsageError",
    "build_parser",
    "format_time",
    "main",
    "metric_json",
    "parse_level",
    "parse_since",
    "record_json",
    "sparkline",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastbuf`` console script. Returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a syntax error (2, argparse printed it)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("fastbuf: a command is required (fastbuf --help lists them)", file=sys.stderr)
        return EXIT_USAGE
    prefix = " ".join(filter(None, ("fastbuf", args.command, getattr(args, "subcommand", None))))
    try:
        check_utf8(args)
        render.use_utc(getattr(args, "utc", False))
        if args.command in ("agent", "status", "demo"):
            check_ring(args)
        if args.command == "demo":
            home(args)  # the agent checks its home itself (its configuration)
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreDamaged as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NotFound, StoreError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
