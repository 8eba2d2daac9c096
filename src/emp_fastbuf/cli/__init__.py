"""The ``fastbuf`` command: query the local store, and start the agent or the demo.

Exit codes: 0 success, 1 what was asked for does not exist (or the store cannot be read),
2 usage errors. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from emp_fastbuf import paths
from emp_fastbuf.errors import HomeError
from emp_fastbuf.store import (
    MAX_TIME_UNIX_NANO,
    STORE_FILE,
    MetricSeries,
    SpanNode,
    Store,
    StoreDamaged,
    StoredRecord,
    StoreError,
    TraceView,
)
from emp_fastbuf.values import dumps_safe

__all__ = [
    "UsageError",
    "format_time",
    "main",
    "metric_json",
    "parse_level",
    "parse_since",
    "record_json",
    "sparkline",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
_LEVELS = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "fatal": 21,
    "critical": 21,
}
_SPARK = "▁▂▃▄▅▆▇█"
# The ring names ``Ring.open`` and ``Ring.create`` accept.
_RING_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
# Counts and ids go into SQLite, whose integers are signed 64-bit.
_MAX_COUNT = 2**63 - 1


class UsageError(ValueError):
    """A flag's value is wrong: exit 2 with one line on stderr."""


# ---- value parsing --------------------------------------------------------------------


def parse_since(value: str, now_ns: int) -> int:
    """``30s``, ``10m``, ``2h``, ``7d`` (before ``now_ns``) or an RFC 3339 time -> unix ns.
    A time after ``store.MAX_TIME_UNIX_NANO`` (2262) or before 1678 is refused."""
    text = value.strip()
    if not text:
        raise UsageError("--since: the value is empty")
    m = _DURATION.match(text)
    if m:
        return _in_range(value, now_ns - int(m.group(1)) * _UNIT_NS[m.group(2)])
    m = _RFC3339.match(text)
    if m:
        date, clock, frac, offset = m.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            dt = datetime.fromisoformat(f"{date}T{clock}{offset}")
            seconds = int(dt.timestamp())
        except (ValueError, OverflowError):
            raise UsageError(f"--since: {value!r} is not a valid time") from None
        return _in_range(value, seconds * 10**9 + int((frac or "0").ljust(9, "0")))
    raise UsageError(
        f"--since: {value!r} is neither a duration (30s, 10m, 2h, 7d) nor an RFC 3339 time"
    )


def _in_range(value: str, ns: int) -> int:
    if ns > MAX_TIME_UNIX_NANO:
        raise UsageError(
            f"--since: {value!r} is after 2262-04-11T23:47:16Z, the latest time the store holds"
        )
    if ns < -MAX_TIME_UNIX_NANO - 1:
        raise UsageError(f"--since: {value!r} is before 1677-09-21, further back than the store")
    return ns


def _ascii_digits(text: str) -> bool:
    # str.isdigit() is also true for "²" and other characters int() refuses.
    return text.isascii() and text.isdigit()


def parse_level(value: str) -> int:
    """A level name (debug, info, warn, error, fatal) or a severity number 1..24."""
    text = value.strip().lower()
    if text in _LEVELS:
        return _LEVELS[text]
    if _ascii_digits(text) and 1 <= int(text) <= 24:
        return int(text)
    raise UsageError(
        f"--level: {value!r} is not a level (trace, debug, info, warn, error, fatal or 1..24)"
    )


def _count(flag: str, value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not _ascii_digits(text):
        raise UsageError(f"{flag}: {value!r} is not a whole number >= 0")
    n = int(text)
    if n > _MAX_COUNT:
        raise UsageError(f"{flag}: {value!r} is larger than {_MAX_COUNT}")
    return n


def _hex_id(flag: str, value: str, nbytes: int) -> str:
    text = value.strip().lower()
    if len(text) != 2 * nbytes or not re.fullmatch(r"[0-9a-f]+", text):
        raise UsageError(f"{flag}: {value!r} is not a {2 * nbytes}-digit hex id")
    return text


# ---- JSON lines -----------------------------------------------------------------------


def format_time(unix_nano: int) -> str:
    """RFC 3339 in UTC with nanoseconds: ``2024-05-01T12:00:00.123456789Z``. A time no
    calendar date can show (only a damaged store holds one) is the number of ns."""
    seconds, nanos = divmod(unix_nano, 10**9)
    try:
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return f"{unix_nano}ns"
    return f"{stamp}.{nanos:09d}Z"


def record_json(rec: StoredRecord) -> dict[str, Any]:
    """The JSON object of one record (fields listed in docs/cli.md)."""
    out: dict[str, Any] = {
        "time_unix_nano": rec.time_unix_nano,
        "time": format_time(rec.time_unix_nano),
        "kind": rec.kind,
        "name": rec.body if rec.kind == "log" else rec.name,
        "body": rec.body if rec.kind == "log" else None,
        "severity": rec.severity,
        "trace_id": rec.trace_id,
        "span_id": rec.span_id,
        "parent_span_id": rec.parent_span_id,
        "job_id": rec.job_id,
        "machine_id": rec.machine_id,
        "worker_id": rec.worker_id,
        "service": rec.service,
        "attributes": rec.attributes,
    }
    if rec.kind == "span":
        start = rec.start_unix_nano if rec.start_unix_nano is not None else rec.time_unix_nano
        out["start_unix_nano"] = start
        out["end_unix_nano"] = rec.time_unix_nano
        out["duration_ns"] = rec.time_unix_nano - start
        out["status"] = rec.status
    elif rec.kind == "metric":
        out["instrument"] = rec.instrument
        out["unit"] = rec.unit
        out["value"] = rec.value
        out["count"] = rec.count
        out["sum"] = rec.sum
        out["min"] = rec.min
        out["max"] = rec.max
    return out


def metric_json(series: MetricSeries) -> dict[str, Any]:
    """The JSON object of one metric series (fields listed in docs/cli.md)."""
    out: dict[str, Any] = {
        "name": series.name,
        "kind": series.instrument,
        "unit": series.unit,
        "service": series.service,
        "machine_id": series.machine_id,
        "worker_id": series.worker_id,
        "attributes": series.attributes,
        "time_unix_nano": series.time_unix_nano,
        "time": format_time(series.time_unix_nano),
    }
    if series.instrument == "histogram":
        out.update(
            count=series.count,
            sum=series.sum,
            min=series.min,
            max=series.max,
            p50=series.p50,
            p90=series.p90,
            p99=series.p99,
            bounds=series.bounds,
            bucket_counts=series.bucket_counts,
        )
    else:
        out["value"] = series.value
    return out


def _write_json(obj: dict[str, Any], out: TextIO) -> None:
    out.write(dumps_safe(obj, ensure_ascii=False) + "\n")


# ---- human output ---------------------------------------------------------------------


# From this many columns the records and metrics tables keep each cell on one line; below
# it their columns share the width and wrap.
_WIDE_TERMINAL = 140


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _short_time(unix_nano: int) -> str:
    seconds, nanos = divmod(unix_nano, 10**9)
    try:
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return f"{unix_nano}ns"
    return f"{stamp}.{nanos // 10**6:03d}"


def _duration(ns: int) -> str:
    if ns < 10**3:
        return f"{ns} ns"
    if ns < 10**6:
        return f"{ns / 1e3:.1f} us"
    if ns < 10**9:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def _attrs_text(attrs: dict[str, Any], limit: int = 120) -> str:
    text = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
        for k, v in attrs.items()
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source_text(rec: StoredRecord | MetricSeries) -> str:
    return "/".join(p for p in (rec.machine_id, rec.worker_id) if p) or "-"


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def sparkline(values: Sequence[float]) -> str:
    """Unicode block sparkline of the values (oldest first)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(_SPARK[len(_SPARK) // 2])
        else:
            out.append(_SPARK[min(len(_SPARK) - 1, int((v - lo) / span * len(_SPARK)))])
    return "".join(out)


def _what(rec: StoredRecord) -> Any:
    from rich.text import Text

    if rec.kind == "log":
        sev = rec.severity or ""
        style = {"ERROR": "red", "FATAL": "bold red", "WARN": "yellow"}.get(sev.upper(), "")
        return Text.assemble((f"{sev:<5} ", style), rec.body or "")
    if rec.kind == "event":
        return Text.assemble(("event ", "cyan"), rec.name or "")
    if rec.kind == "span":
        start = rec.start_unix_nano or rec.time_unix_nano
        status = rec.status or "unset"
        return Text.assemble(
            ("span  ", "magenta"),
            rec.name or "",
            f"  {_duration(rec.time_unix_nano - start)}",
            (f"  {status}", "red" if status == "error" else "dim"),
        )
    if rec.instrument == "histogram":
        value = f"n={rec.count} sum={_number(rec.sum)} max={_number(rec.max)}"
    else:
        value = _number(rec.value)
    return Text.assemble(("metric ", "green"), f"{rec.name} = {value} {rec.unit or ''}".rstrip())


def _print_records(recs: Sequence[StoredRecord], console: Any, *, offsets_from: int | None) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False)
    # On a narrow terminal every column but the time wraps, the record least.
    wide = console.width >= _WIDE_TERMINAL
    table.expand = not wide
    table.add_column("time" if offsets_from is None else "offset", no_wrap=True, style="dim")
    table.add_column("source", no_wrap=wide, overflow="fold", ratio=None if wide else 2)
    table.add_column("job", no_wrap=wide, overflow="fold", ratio=None if wide else 2)
    table.add_column("record", ratio=None if wide else 5)
    table.add_column("attributes", style="dim", overflow="fold", ratio=None if wide else 4)
    for r in recs:
        when = (
            _short_time(r.time_unix_nano if r.kind != "span" else r.sort_time)
            if offsets_from is None
            else "+" + _duration(r.sort_time - offsets_from)
        )
        table.add_row(
            Text(when),
            Text(_source_text(r)),
            Text(r.job_id or "-"),
            _what(r),
            Text(_attrs_text(r.attributes)),
        )
    console.print(table)


def _print_trace(view: TraceView, console: Any) -> None:
    from rich.text import Text
    from rich.tree import Tree

    t0, t1 = view.start_unix_nano, view.end_unix_nano
    total = max(t1 - t0, 1)
    width = max(console.width, 60)
    bar_w = max(10, width // 3)
    name_w = max(16, width - bar_w - 24)
    tree = Tree(
        Text(f"trace {view.trace_id}  {len(view.spans)} spans  {_duration(t1 - t0)}", "bold"),
        guide_style="dim",
    )
    # Children of each span: its child spans and its logs/events, merged in time order.
    kids: dict[int, list[tuple[int, int, SpanNode | StoredRecord]]] = {}
    top: list[SpanNode] = []
    stack: list[SpanNode] = []
    for node in view.spans:
        del stack[node.depth :]
        if stack:
            kids.setdefault(id(stack[-1]), []).append((node.span.sort_time, 0, node))
        else:
            top.append(node)
        stack.append(node)
        for item in node.items:
            kids.setdefault(id(node), []).append((item.time_unix_nano, 1, item))

    def span_label(node: SpanNode) -> Any:
        s = node.span
        start = s.sort_time
        lead = min(bar_w - 1, int((start - t0) / total * bar_w))
        length = max(1, round((s.time_unix_nano - start) / total * bar_w))
        bar = (" " * lead + "█" * length)[:bar_w].ljust(bar_w)
        label_w = max(8, name_w - 4 * (node.depth + 1))
        name = s.name or ""
        name = name if len(name) <= label_w else name[: label_w - 1] + "…"
        status = s.status or "unset"
        return Text.assemble(
            name.ljust(label_w),
            f" {_duration(s.time_unix_nano - start):>9} ",
            (bar, "red" if status == "error" else "cyan"),
            (f" {status}" if status != "unset" else "", "red" if status == "error" else "dim"),
        )

    def item_label(item: StoredRecord) -> Any:
        offset = "+" + _duration(item.time_unix_nano - t0)
        line = Text.assemble((f"{offset:>10} ", "dim"), _what(item))
        if item.attributes:
            line.append("  " + _attrs_text(item.attributes, 80), "dim")
        return line

    # Each pass adds all direct children of one span, in order; the spans among them get
    # their own pass later (no recursion: traces can be deep).
    todo: list[tuple[Any, SpanNode]] = [(tree.add(span_label(n)), n) for n in top]
    while todo:
        branch, node = todo.pop()
        for _t, _order, child in sorted(kids.get(id(node), []), key=lambda k: (k[0], k[1])):
            if isinstance(child, SpanNode):
                todo.append((branch.add(span_label(child)), child))
            else:
                branch.add(item_label(child))
    console.print(tree)
    if view.orphans:
        console.print(Text("records of this trace whose span is not in the store:", "bold"))
        _print_records(view.orphans, console, offsets_from=t0)


def _print_metrics(series: Sequence[MetricSeries], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    # As for records: on a narrow terminal the columns wrap (the value never gets cut)
    # and the sparkline is shorter.
    wide = console.width >= _WIDE_TERMINAL
    table = Table(box=None, pad_edge=False, show_edge=False, expand=not wide)
    table.add_column("name", overflow="fold", ratio=None if wide else 3)
    table.add_column("kind", no_wrap=True)
    table.add_column("source", overflow="fold", no_wrap=wide, ratio=None if wide else 2)
    table.add_column("attributes", overflow="fold", ratio=None if wide else 2)
    table.add_column("value", overflow="fold", ratio=None if wide else 3)
    table.add_column("recent", no_wrap=True)
    spark = 16 if wide else 8
    for s in series:
        if s.instrument == "histogram":
            value = (
                f"n={s.count} sum={_number(s.sum)} min={_number(s.min)} p50={_number(s.p50)}"
                f" p90={_number(s.p90)} p99={_number(s.p99)} max={_number(s.max)}"
            )
        else:
            value = _number(s.value)
        if s.unit:
            value += f" {s.unit}"
        table.add_row(
            Text(s.name),
            Text(s.instrument),
            Text(_source_text(s)),
            Text(_attrs_text(s.attributes, 60), "dim"),
            Text(value),
            Text(sparkline(s.recent[-spark:]), "green"),
        )
    console.print(table)


def _tail_line(rec: StoredRecord) -> Any:
    from rich.text import Text

    line = Text.assemble(
        (_short_time(rec.time_unix_nano) + " ", "dim"),
        (_source_text(rec) + " ", ""),
        (f"[{rec.job_id}] " if rec.job_id else "", "dim"),
        _what(rec),
    )
    if rec.attributes:
        line.append("  " + _attrs_text(rec.attributes), "dim")
    return line


# ---- commands -------------------------------------------------------------------------


def _home(args: argparse.Namespace) -> Path:
    """``--home``, else ``$EMP_FASTBUF_HOME``, else ``~/.local/share/emp-fastbuf``; one
    that is not a directory, belongs to another user or is world-writable is refused."""
    try:
        return paths.checked_home(getattr(args, "home", None))
    except HomeError as exc:
        raise UsageError(str(exc)) from None


def _check_ring(args: argparse.Namespace) -> None:
    """Refuse a ring name (``--ring``, else ``$EMP_FASTBUF_RING``) that no ring can have."""
    value = getattr(args, "ring", None)
    source = "--ring"
    if value is None:
        value = os.environ.get("EMP_FASTBUF_RING") or None  # empty: the default ring
        source = "EMP_FASTBUF_RING"
    if value is not None and not _RING_NAME.fullmatch(value.strip()):
        raise UsageError(
            f"{source}: {value!r} is not a ring name (1-200 letters, digits, '.', '_', '-')"
        )


def _check_utf8(args: argparse.Namespace) -> None:
    """Arguments that are not valid UTF-8 (kept by Python as lone surrogates) match no
    record and cannot be stored or sent; a path (``--home``) may be any bytes."""
    for key, value in vars(args).items():
        if key != "home" and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"an argument is not valid UTF-8: {value!r}") from None


def _open_store(args: argparse.Namespace) -> Store:
    path = _home(args) / STORE_FILE
    if not path.exists():
        raise _NotFound(f"no store at {path} (the agent writes it when it runs with no endpoint)")
    return Store(path, readonly=True)


class _NotFound(Exception):
    """What was asked for does not exist: exit 1."""


def _log_filters(args: argparse.Namespace, now_ns: int) -> dict[str, Any]:
    return {
        "job": args.job,
        "trace": _hex_id("--trace", args.trace, 16) if args.trace is not None else None,
        "machine": args.machine,
        "worker": args.worker,
        "level": parse_level(args.level) if args.level is not None else None,
        "since_ns": parse_since(args.since, now_ns) if args.since is not None else None,
        "grep": args.grep,
    }


def cmd_logs(args: argparse.Namespace) -> int:
    """``fastbuf logs``: logs and events, oldest first."""
    filters = _log_filters(args, time.time_ns())
    limit = _count("--limit", args.limit)
    with _open_store(args) as store:
        recs = store.logs(**filters, limit=limit or None)
    if not recs:
        raise _NotFound("no matching logs or events")
    if args.json:
        for r in recs:
            _write_json(record_json(r), sys.stdout)
    else:
        _print_records(recs, _console(), offsets_from=None)
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """``fastbuf trace ID``: the span tree with a waterfall."""
    trace_id = _hex_id("trace id", args.trace_id, 16)
    with _open_store(args) as store:
        view = store.trace(trace_id)
    if view is None:
        raise _NotFound(f"no trace {trace_id} in the store")
    if args.json:
        for node in view.spans:
            obj = record_json(node.span)
            obj["depth"] = node.depth
            _write_json(obj, sys.stdout)
        rest = [item for node in view.spans for item in node.items] + view.orphans
        rest.sort(key=lambda r: (r.time_unix_nano, r.id))
        for r in rest:
            _write_json(record_json(r), sys.stdout)
    else:
        _print_trace(view, _console())
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """``fastbuf metrics``: the current value of every series."""
    since = parse_since(args.since, time.time_ns()) if args.since is not None else None
    with _open_store(args) as store:
        series = store.metrics(
            machine=args.machine, worker=args.worker, name=args.name, since_ns=since
        )
    if not series:
        raise _NotFound("no matching metrics")
    if args.json:
        for s in series:
            _write_json(metric_json(s), sys.stdout)
    else:
        _print_metrics(series, _console())
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
        raise _NotFound(f"no records for job {args.job!r}")
    if args.json:
        for r in recs:
            _write_json(record_json(r), sys.stdout)
        return EXIT_OK
    console = _console()
    start = min(r.sort_time for r in recs)
    end = max(r.time_unix_nano for r in recs)
    sources = sorted({_source_text(r) for r in recs if r.job_id == args.job})
    console.print(
        f"job {args.job}: {len(recs)} records from {format_time(start)}"
        f" over {_duration(end - start)} on {', '.join(sources)}",
        markup=False,
    )
    _print_records(recs, console, offsets_from=start)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    """``fastbuf tail``: follow new logs and events until Ctrl-C."""
    filters = _log_filters(args, time.time_ns())
    lines = _count("--lines", args.lines) or 0
    count = _count("--count", args.count)
    max_seconds = args.max_seconds
    if max_seconds is not None and not max_seconds > 0:
        raise UsageError(f"--max-seconds: {max_seconds} is not > 0")
    if not args.interval > 0:
        raise UsageError(f"--interval: {args.interval} is not > 0")
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    console = None if args.json else _console()
    printed = 0

    def emit(recs: Sequence[StoredRecord]) -> bool:
        nonlocal printed
        for r in recs:
            if count is not None and printed >= count:
                return True
            if console is None:
                _write_json(record_json(r), sys.stdout)
            else:
                console.print(_tail_line(r))
            printed += 1
        sys.stdout.flush()
        return count is not None and printed >= count

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


def _delegate(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when its command runs."""

    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # a dependency of the module is missing: show the real error
            print(f"fastbuf {args.command}: {module} is not part of this build", file=sys.stderr)
            return EXIT_NOT_FOUND
        handler = getattr(mod, func, None)
        if handler is None:
            print(f"fastbuf {args.command}: {module}.{func} is missing", file=sys.stderr)
            return EXIT_NOT_FOUND
        return int(handler(args))

    return run


# ---- the parser -----------------------------------------------------------------------


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help="the emp-fastbuf home (default: $EMP_FASTBUF_HOME)")
    p.add_argument("--json", action="store_true", help="print JSON Lines (docs/cli.md)")


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", help="only records of this job id")
    p.add_argument("--trace", help="only records of this trace id (32 hex digits)")
    p.add_argument("--machine", help="only records from this machine id")
    p.add_argument("--worker", help="only records from this worker id")
    p.add_argument("--level", help="only logs at or above: debug, info, warn, error, fatal")
    p.add_argument("--since", help="only records after: 30s, 10m, 2h, 7d or an RFC 3339 time")
    p.add_argument("--grep", help="only records whose body or name contains this text")


def build_parser() -> argparse.ArgumentParser:
    """The ``fastbuf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fastbuf",
        description="Query the emp-fastbuf local store; run the agent or the demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("logs", help="logs and events, oldest first")
    _log_options(p)
    p.add_argument("--limit", default="1000", help="the newest N records (default 1000; 0: all)")
    _store_options(p)
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("trace", help="a trace as a span tree with a waterfall")
    p.add_argument("trace_id", help="the trace id (32 hex digits)")
    _store_options(p)
    p.set_defaults(handler=cmd_trace)

    p = sub.add_parser("metrics", help="the current value of every metric series")
    p.add_argument("--machine", help="only series from this machine id")
    p.add_argument("--worker", help="only series from this worker id")
    p.add_argument("--name", help="only series whose name matches this glob (gpu.*)")
    p.add_argument("--since", help="only updates after: 30s, 10m, 2h, 7d or an RFC 3339 time")
    _store_options(p)
    p.set_defaults(handler=cmd_metrics)

    p = sub.add_parser("correlate", help="everything about a job, in time order")
    p.add_argument("--job", dest="job_option", metavar="ID", help="the job id")
    p.add_argument("job", nargs="?", metavar="JOB", help="the job id (the same as --job)")
    _store_options(p)
    p.set_defaults(handler=cmd_correlate)

    p = sub.add_parser("tail", help="follow new logs and events (Ctrl-C stops)")
    _log_options(p)
    p.add_argument("-n", "--lines", default="10", help="print the last N first (default 10)")
    p.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--count", help=argparse.SUPPRESS)  # stop after N records (tests)
    p.add_argument("--max-seconds", type=float, help=argparse.SUPPRESS)
    _store_options(p)
    p.set_defaults(handler=cmd_tail)

    p = sub.add_parser("agent", help="run the agent: drain the ring, export or store")
    p.add_argument("--endpoint", help="OTLP/HTTP endpoint (default: $OTEL_EXPORTER_OTLP_ENDPOINT)")
    p.add_argument("--headers", help="request headers, k=v,k2=v2")
    p.add_argument("--compression", choices=("gzip", "zstd", "none"))
    p.add_argument("--timeout", type=int, help="export request timeout in milliseconds")
    p.add_argument("--dataset", help="the Dash0 dataset")
    p.add_argument("--home", help="the emp-fastbuf home (default: $EMP_FASTBUF_HOME)")
    p.add_argument("--ring", help="the ring name")
    p.add_argument("--local-copy", action="store_true", help="also keep records in the store")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS", help="exit after idle seconds")
    p.add_argument(
        "--spool-max",
        metavar="BYTES",
        help="spool size limit: bytes or 512M, 2G (default 1G; $EMP_FASTBUF_SPOOL_MAX_BYTES)",
    )
    p.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=_delegate("emp_fastbuf.agent.runner", "run_agent"))

    p = sub.add_parser("status", help="the agent's status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--home", help="the emp-fastbuf home (default: $EMP_FASTBUF_HOME)")
    p.add_argument("--ring", help="the ring name")
    p.set_defaults(handler=_delegate("emp_fastbuf.cli.status", "run"))

    p = sub.add_parser("demo", help="run simulated GPU workers through the pipeline")
    p.add_argument("--workers", type=int, default=4, metavar="N")
    p.add_argument("--jobs", type=int, default=20, metavar="M")
    p.add_argument("--seconds", type=float, default=0.0, metavar="S", help="0: as fast as they go")
    p.add_argument("--home", help="the emp-fastbuf home (default: $EMP_FASTBUF_HOME)")
    p.add_argument("--ring", help="the ring name")
    p.set_defaults(handler=_delegate("emp_fastbuf.demo", "run"))
    return parser


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
    prefix = f"fastbuf {args.command}"
    try:
        _check_utf8(args)
        if args.command in ("agent", "status", "demo"):
            _check_ring(args)
        if args.command == "demo":
            _home(args)  # the agent checks its home itself (its configuration)
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreDamaged as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (_NotFound, StoreError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
