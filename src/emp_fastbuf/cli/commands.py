"""The handlers of the ``fastbuf`` commands: each takes the parsed arguments and returns
the exit code. The store commands are here; the agent, status and demo handlers are
imported only when their command runs (``delegate``)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from emp_fastbuf.cli import render
from emp_fastbuf.cli.flags import UsageError, count, hex_id, home, parse_level, parse_since
from emp_fastbuf.cli.jsonl import format_time, metric_json, record_json, write_line
from emp_fastbuf.paths import STORE_FILE
from emp_fastbuf.store import Store, StoredRecord

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class NotFound(Exception):
    """What was asked for does not exist: exit 1."""


def _open_store(args: argparse.Namespace) -> Store:
    path = home(args) / STORE_FILE
    if not path.exists():
        raise NotFound(f"no store at {path} (the agent writes it when it runs with no endpoint)")
    return Store(path, readonly=True)


def _log_filters(args: argparse.Namespace, now_ns: int) -> dict[str, Any]:
    return {
        "job": args.job,
        "trace": hex_id("--trace", args.trace, 16) if args.trace is not None else None,
        "machine": args.machine,
        "worker": args.worker,
        "level": parse_level(args.level) if args.level is not None else None,
        "since_ns": parse_since(args.since, now_ns) if args.since is not None else None,
        "grep": args.grep,
    }


def cmd_logs(args: argparse.Namespace) -> int:
    """``fastbuf logs``: logs and events, oldest first."""
    filters = _log_filters(args, time.time_ns())
    limit = count("--limit", args.limit)
    with _open_store(args) as store:
        recs = store.logs(**filters, limit=limit or None)
    if not recs:
        raise NotFound("no matching logs or events")
    if args.json:
        for r in recs:
            write_line(record_json(r), sys.stdout)
    else:
        render.print_records(recs, render.make_console(), offsets_from=None)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """``fastbuf trace ID``: the span tree with a waterfall."""
    trace_id = hex_id("trace id", args.trace_id, 16)
    with _open_store(args) as store:
        view = store.trace(trace_id)
    if view is None:
        raise NotFound(f"no trace {trace_id} in the store")
    if args.json:
        for node in view.spans:
            obj = record_json(node.span)
            obj["depth"] = node.depth
            write_line(obj, sys.stdout)
        rest = [item for node in view.spans for item in node.items] + view.orphans
        rest.sort(key=lambda r: (r.time_unix_nano, r.id))
        for r in rest:
            write_line(record_json(r), sys.stdout)
    else:
        render.print_trace(view, render.make_console())
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """``fastbuf metrics``: the current value of every series."""
    since = parse_since(args.since, time.time_ns()) if args.since is not None else None
    with _open_store(args) as store:
        series = store.metrics(
            machine=args.machine, worker=args.worker, name=args.name, since_ns=since
        )
    if not series:
        raise NotFound("no matching metrics")
    if args.json:
        for s in series:
            write_line(metric_json(s), sys.stdout)
    else:
        render.print_metrics(series, render.make_console())
    return EXIT_OK


def cmd_correlate(args: argparse.Namespace) -> int:
    """``fastbuf correlate --job ID`` (or ``correlate ID``): the job's spans, logs, events
    and metrics in time order."""
    given = {j for j in (args.job_option, args.job) if j is not None}
    if len(given) != 1:
        raise UsageError(
            "which job? give it as --job ID" if not given else "two different jobs given"
        )
    args.job = given.pop()
    with _open_store(args) as store:
        recs = store.correlate(args.job)
    if not recs:
        raise NotFound(f"no records for job {args.job!r}")
    if args.json:
        for r in recs:
            write_line(record_json(r), sys.stdout)
        return EXIT_OK
    console = render.make_console()
    start = min(r.sort_time for r in recs)
    end = max(r.time_unix_nano for r in recs)
    sources = sorted({render.source_text(r) for r in recs if r.job_id == args.job})
    console.print(
        f"job {args.job}: {len(recs)} records from {format_time(start)}"
        f" over {render.duration(end - start)} on {', '.join(sources)}",
        markup=False,
    )
    render.print_records(recs, console, offsets_from=start)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    """``fastbuf tail``: follow new logs and events until Ctrl-C."""
    filters = _log_filters(args, time.time_ns())
    lines = count("--lines", args.lines) or 0
    most = count("--count", args.count)
    max_seconds = args.max_seconds
    if max_seconds is not None and not max_seconds > 0:
        raise UsageError(f"--max-seconds: {max_seconds} is not > 0")
    if not args.interval > 0:
        raise UsageError(f"--interval: {args.interval} is not > 0")
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    console = None if args.json else render.make_console()
    printed = 0

    def emit(recs: Sequence[StoredRecord]) -> bool:
        nonlocal printed
        for r in recs:
            if most is not None and printed >= most:
                return True
            if console is None:
                write_line(record_json(r), sys.stdout)
            else:
                console.print(render.tail_line(r))
            printed += 1
        sys.stdout.flush()
        return most is not None and printed >= most

    with _open_store(args) as store:
        try:
            cursor = store.last_id()
            if lines and emit(store.logs(**filters, limit=lines, max_id=cursor)):
                return EXIT_OK
            while deadline is None or time.monotonic() < deadline:
                recs, cursor = store.tail(cursor, **filters)
                if emit(recs):
                    break
                if not recs:
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how tail is meant to stop
    return EXIT_OK


def delegate(module: str, func: str) -> Handler:
    """A handler that imports ``module`` only when its command runs."""

    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # import_module always names the module it did not find. This one or a package
            # above it: the command is not in this build; any other: a dependency of it is
            # missing, and that is the error to show.
            missing = exc.name or ""
            if missing != module and not module.startswith(missing + "."):
                raise
            print(f"fastbuf {args.command}: {module} is not part of this build", file=sys.stderr)
            return EXIT_NOT_FOUND
        handler = getattr(mod, func, None)
        if handler is None:
            print(f"fastbuf {args.command}: {module}.{func} is missing", file=sys.stderr)
            return EXIT_NOT_FOUND
        return int(handler(args))

    return run
