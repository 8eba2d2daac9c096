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
from emp_fastbuf.cli.destinations import no_store_message
from emp_fastbuf.cli.flags import (
    UsageError,
    count,
    home,
    parse_attr,
    parse_level,
    parse_since,
    trace_prefix,
)
from emp_fastbuf.cli.jsonl import metric_json, record_json, write_line
from emp_fastbuf.paths import STORE_FILE
from emp_fastbuf.store import TRACE_ID_DIGITS, Store, StoreDamaged, StoredRecord, StoreError

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class NotFound(Exception):
    """What was asked for does not exist: exit 1."""


# How many of the trace ids a short one could mean an ambiguity error names.
_AMBIGUOUS_SHOWN = 5


def open_store(args: argparse.Namespace) -> Store:
    path = home(args) / STORE_FILE
    if not path.exists():
        raise NotFound(no_store_message(path, path.parent))
    return Store(path, readonly=True)


def _resolve_trace(store: Store, prefix: str, flag: str) -> str | None:
    """The one stored trace id that starts with ``prefix`` (a whole id as it is); None
    when no trace has it. An ambiguous prefix is a usage error that names the ids it
    could mean."""
    if len(prefix) == TRACE_ID_DIGITS:
        return prefix
    ids = store.trace_ids(prefix, limit=_AMBIGUOUS_SHOWN + 1)
    if len(ids) > 1:
        shown = ", ".join(ids[:_AMBIGUOUS_SHOWN]) + (
            " and more" if len(ids) > _AMBIGUOUS_SHOWN else ""
        )
        raise UsageError(
            f"{flag}: {prefix!r} is the start of more than one trace id ({shown}): give more digits"
        )
    return ids[0] if ids else None


def _no_trace(prefix: str) -> NotFound:
    if len(prefix) == TRACE_ID_DIGITS:
        return NotFound(f"no trace {prefix} in the store")
    return NotFound(f"no trace id starting with {prefix} in the store")


def _log_filters(args: argparse.Namespace, now_ns: int) -> dict[str, Any]:
    since = parse_since(args.since, now_ns) if args.since is not None else None
    until = parse_since(args.until, now_ns, "--until") if args.until is not None else None
    if since is not None and until is not None and until < since:
        raise UsageError(f"--until {args.until!r} is before --since {args.since!r}")
    return {
        "job": args.job,
        "trace": trace_prefix("--trace", args.trace) if args.trace is not None else None,
        "machine": args.machine,
        "worker": args.worker,
        "service": args.service,
        "level": parse_level(args.level) if args.level is not None else None,
        "since_ns": since,
        "until_ns": until,
        "grep": args.grep,
        "attrs": tuple(parse_attr(a) for a in args.attr or ()),
    }


def cmd_logs(args: argparse.Namespace) -> int:
    """``fastbuf logs``: logs and events, oldest first."""
    filters = _log_filters(args, time.time_ns())
    limit = count("--limit", args.limit)
    with open_store(args) as store:
        if filters["trace"] is not None:
            prefix = filters["trace"]
            filters["trace"] = _resolve_trace(store, prefix, "--trace")
            if filters["trace"] is None:
                raise _no_trace(prefix)
        cursor = store.last_id()  # the count and the records of one state of the store
        recs = store.logs(**filters, limit=limit or None, max_id=cursor)
        total = len(recs)
        if limit and total == limit:
            total = store.count_logs(**filters, max_id=cursor)
    if not recs:
        raise NotFound("no matching logs or events")
    if args.json:
        for r in recs:
            write_line(record_json(r), sys.stdout)
    elif render.piped():
        render.write_lines(recs, sys.stdout, offsets_from=None)
    else:
        render.print_records(recs, render.make_console(), offsets_from=None)
    if total > len(recs):
        sys.stdout.flush()
        print(
            f"fastbuf logs: showing the newest {len(recs):,} of {total:,};"
            " --limit N shows more, --limit 0 all",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """``fastbuf trace ID``: the span tree with a waterfall. ``ID`` may be the first
    digits of the trace id (the short id the other views show)."""
    prefix = trace_prefix("trace id", args.trace_id)
    with open_store(args) as store:
        trace_id = _resolve_trace(store, prefix, "trace id")
        view = None if trace_id is None else store.trace(trace_id)
    if view is None:
        raise _no_trace(prefix)
    if args.json:
        for node in view.spans:
            obj = record_json(node.span)
            obj["depth"] = node.depth
            write_line(obj, sys.stdout)
        rest = [item for node in view.spans for item in node.items] + view.orphans
        rest.sort(key=lambda r: (r.time_unix_nano, r.id))
        for r in rest:
            write_line(record_json(r), sys.stdout)
    elif render.piped():
        render.write_trace_lines(view, sys.stdout)
    else:
        render.print_trace(view, render.make_console())
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """``fastbuf metrics``: the current value of every series."""
    since = parse_since(args.since, time.time_ns()) if args.since is not None else None
    with open_store(args) as store:
        series = store.metrics(
            machine=args.machine, worker=args.worker, name=args.name, since_ns=since
        )
    if not series:
        raise NotFound("no matching metrics")
    if args.json:
        for s in series:
            write_line(metric_json(s), sys.stdout)
    elif render.piped():
        render.write_metric_lines(series, sys.stdout)
    else:
        render.print_metrics(series, render.make_console())
    return EXIT_OK


def cmd_correlate(args: argparse.Namespace) -> int:
    """``fastbuf correlate --job ID`` (or ``correlate ID``): the job's spans, logs, events
    and metrics in time order, with the metrics of its machines in its time window."""
    given = {j for j in (args.job_option, args.job) if j is not None}
    if len(given) != 1:
        raise UsageError(
            "which job? give it as --job ID" if not given else "two different jobs given"
        )
    args.job = given.pop()
    with open_store(args) as store:
        view = store.correlate(args.job)
    if view is None:
        raise NotFound(f"no records for job {args.job!r}")
    recs = view.records
    if args.json:
        for r in recs:
            obj = record_json(r)
            obj["scope"] = "machine" if view.is_machine(r) else "job"
            write_line(obj, sys.stdout)
        return EXIT_OK
    start, end = view.start_unix_nano, view.end_unix_nano
    sources = sorted({render.source_text(r) for r in recs if not view.is_machine(r)})
    machine_updates = view.machine_updates
    heading = (
        f"job {args.job}: {len(recs) - machine_updates} records from"
        f" {render.human_time(start)} over {render.duration(end - start)}"
        f" on {', '.join(sources)}"
    )
    if view.machine_ids:
        updates = "update" if machine_updates == 1 else "updates"
        heading += (
            f"; {machine_updates} machine metric {updates} of {', '.join(view.machine_ids)}"
            " in that time"
        )
    if render.piped():
        sys.stdout.write(render.one_line(heading) + "\n")
        render.write_lines(recs, sys.stdout, offsets_from=start, machine=view.is_machine)
        return EXIT_OK
    console = render.make_console()
    console.print(heading, markup=False)
    render.print_records(recs, console, offsets_from=start, machine=view.is_machine)
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
    piped = not args.json and render.piped()
    console = None if args.json or piped else render.make_console()
    printed = 0

    def emit(recs: Sequence[StoredRecord]) -> bool:
        nonlocal printed
        for r in recs:
            if most is not None and printed >= most:
                return True
            if piped:
                sys.stdout.write(render.one_line(render.tail_line(r, limit=None).plain) + "\n")
            elif console is None:
                write_line(record_json(r), sys.stdout)
            else:
                console.print(render.tail_line(r))
            printed += 1
        sys.stdout.flush()
        return most is not None and printed >= most

    try:
        store = _wait_for_store(args, deadline, args.interval)
    except KeyboardInterrupt:
        return EXIT_OK
    if store is None:
        return EXIT_OK  # --max-seconds ran out before the store appeared
    with store:
        if filters["trace"] is not None:
            # A prefix no stored trace has yet follows the traces that start with it.
            filters["trace"] = (
                _resolve_trace(store, filters["trace"], "--trace") or filters["trace"]
            )
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


def _wait_for_store(
    args: argparse.Namespace, deadline: float | None, interval: float
) -> Store | None:
    """``tail``'s store: the one there, or, when there is none yet, the one the agent
    creates, once it can be opened (None if ``deadline`` passes first)."""
    path = home(args) / STORE_FILE
    if path.exists():
        return Store(path, readonly=True)
    message = no_store_message(path, path.parent)
    print(f"fastbuf tail: {message}; waiting for it (Ctrl-C stops)", file=sys.stderr)
    failing_since: float | None = None
    while deadline is None or time.monotonic() < deadline:
        if path.exists():
            try:
                return Store(path, readonly=True)
            except StoreDamaged:
                raise
            except StoreError:
                # The agent may be creating it right now: give it a few seconds.
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since > 10:
                    raise
        time.sleep(interval)
    return None


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
