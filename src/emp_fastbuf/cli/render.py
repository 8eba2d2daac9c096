"""Human output with rich: the records table, the trace tree with its waterfall, the
metrics table and ``tail``'s lines. rich is imported when something is printed."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from emp_fastbuf.records import SEVERITY_ERROR, SEVERITY_FATAL, SEVERITY_TEXT, SEVERITY_WARN
from emp_fastbuf.store import MetricSeries, SpanNode, StoredRecord, TraceView

_SPARK = "▁▂▃▄▅▆▇█"
# From this many columns the records and metrics tables keep each cell on one line; below
# it their columns share the width and wrap.
_WIDE_TERMINAL = 140
# "07:45:02.123 +01:00": the time column's width on a narrow terminal, its date above.
_CLOCK_WIDTH = 19
_SEVERITY_STYLE = {
    SEVERITY_TEXT[SEVERITY_ERROR]: "red",
    SEVERITY_TEXT[SEVERITY_FATAL]: "bold red",
    SEVERITY_TEXT[SEVERITY_WARN]: "yellow",
}


def piped() -> bool:
    """Whether stdout is not a terminal (a pipe, a file): the record views then print one
    record per line, in full, without colour."""
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return True


# Control characters would break a line in two (or move the cursor): shown escaped.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text: str) -> str:
    """``text`` on one line: newlines as ``\\n``, other control characters escaped too."""
    return text.translate(_ESCAPES)


def write_lines(
    recs: Sequence[StoredRecord],
    out: TextIO,
    *,
    offsets_from: int | None,
    machine: Callable[[StoredRecord], bool] | None = None,
) -> None:
    """The records as ``tail`` prints them, one line each and nothing cut: the view for a
    pipe. With ``offsets_from`` each line starts with the time since then; the records
    ``machine`` picks are shown as machine metrics (``correlate``)."""
    for r in recs:
        line = tail_line(r, limit=None, machine=machine is not None and machine(r)).plain
        if offsets_from is not None:
            line = f"+{duration(r.sort_time - offsets_from)} " + line
        out.write(one_line(line) + "\n")


def make_console() -> Any:
    """The rich console to print to (stdout)."""
    from rich.console import Console

    return Console(highlight=False)


# Human views print local time with its UTC offset, or UTC after ``use_utc(True)``
# (``--utc``).
_utc = False
#: The length of a short trace id in human views (``fastbuf trace`` takes it as a prefix).
SHORT_ID = 8


def use_utc(on: bool) -> None:
    """Print UTC times in the human views (``--utc``) rather than local ones."""
    global _utc
    _utc = on


def human_time(unix_nano: int) -> str:
    """The time as people read it, in full: ``2026-12-02 07:45:02.123 +01:00`` (local,
    with the UTC offset), or ``... +00:00`` after ``use_utc(True)``. A time no calendar
    date can show (only a damaged store holds one) is the number of ns."""
    seconds, nanos = divmod(unix_nano, 10**9)
    try:
        when = datetime.fromtimestamp(seconds, UTC)
        if not _utc:
            when = when.astimezone()
        offset = when.strftime("%z")  # +0100
    except (ValueError, OverflowError, OSError):
        return f"{unix_nano}ns"
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{nanos // 10**6:03d} {offset[:3]}:{offset[3:]}"


def short_id(hex_id: str | None) -> str:
    """The short form of a trace id for human views (its first ``SHORT_ID`` digits), or
    ``-``."""
    return hex_id[:SHORT_ID] if hex_id else "-"


def duration(ns: int) -> str:
    """A duration the way the tables show it: ns, us, ms or s."""
    if ns < 10**3:
        return f"{ns} ns"
    if ns < 10**6:
        return f"{ns / 1e3:.1f} us"
    if ns < 10**9:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def _attrs_text(attrs: dict[str, Any], limit: int | None = 120) -> str:
    text = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
        for k, v in attrs.items()
    )
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def source_text(rec: StoredRecord | MetricSeries) -> str:
    """``machine/worker``, or ``-`` when neither is known."""
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


def _what(rec: StoredRecord, machine: bool = False) -> Any:
    """The record cell: severity and body, ``event`` and name, a span's name, duration and
    status, or a metric's value (``machine metric`` for one of the job's machines)."""
    from rich.text import Text

    if rec.kind == "log":
        sev = rec.severity or ""
        style = _SEVERITY_STYLE.get(sev.upper(), "")
        return Text.assemble((f"{sev:<5} ", style), rec.body or "")
    if rec.kind == "event":
        return Text.assemble(("event ", "cyan"), rec.name or "")
    if rec.kind == "span":
        start = rec.start_unix_nano or rec.time_unix_nano
        status = rec.status or "unset"
        return Text.assemble(
            ("span  ", "magenta"),
            rec.name or "",
            f"  {duration(rec.time_unix_nano - start)}",
            (f"  {status}", "red" if status == "error" else "dim"),
        )
    if rec.instrument == "histogram":
        value = f"n={rec.count} sum={_number(rec.sum)} max={_number(rec.max)}"
    else:
        value = _number(rec.value)
    label = "machine metric " if machine else "metric "
    return Text.assemble((label, "green"), f"{rec.name} = {value} {rec.unit or ''}".rstrip())


def print_records(
    recs: Sequence[StoredRecord],
    console: Any,
    *,
    offsets_from: int | None,
    machine: Callable[[StoredRecord], bool] | None = None,
) -> None:
    """The records table; the first column is the time, or with ``offsets_from`` the
    time since then. The records ``machine`` picks are shown as machine metrics."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False)
    # On a narrow terminal every column but the trace wraps, the record least, and the
    # time puts its date above the clock and offset.
    wide = console.width >= _WIDE_TERMINAL
    table.expand = not wide
    table.add_column(
        "time" if offsets_from is None else "offset",
        no_wrap=wide,
        max_width=None if wide else _CLOCK_WIDTH,
        style="dim",
    )
    table.add_column("source", no_wrap=wide, overflow="fold", ratio=None if wide else 2)
    table.add_column("job", no_wrap=wide, overflow="fold", ratio=None if wide else 2)
    table.add_column("trace", no_wrap=True)
    table.add_column("record", ratio=None if wide else 5)
    table.add_column("attributes", style="dim", overflow="fold", ratio=None if wide else 4)
    for r in recs:
        when = (
            human_time(r.time_unix_nano if r.kind != "span" else r.sort_time)
            if offsets_from is None
            else "+" + duration(r.sort_time - offsets_from)
        )
        table.add_row(
            Text(when),
            Text(source_text(r)),
            Text(r.job_id or "-"),
            Text(short_id(r.trace_id)),
            _what(r, machine is not None and machine(r)),
            Text(_attrs_text(r.attributes)),
        )
    console.print(table)


_Kids = dict[int, list[tuple[int, int, SpanNode | StoredRecord]]]


def _children(view: TraceView) -> tuple[list[SpanNode], _Kids]:
    """The root spans, and the children of each span (by ``id`` of its node): its child
    spans and its logs/events, unsorted, with their sort keys."""
    kids: _Kids = {}
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
    return top, kids


def write_trace_lines(view: TraceView, out: TextIO, bar_w: int = 40) -> None:
    """The trace view for a pipe: the same tree, one span or record per line, nothing
    cut: ``waterfall duration indented-name status`` for a span, ``offset indented-record
    attributes`` under it; then the records whose span is not in the store."""
    t0, t1 = view.start_unix_nano, view.end_unix_nano
    total = max(t1 - t0, 1)
    out.write(one_line(f"trace {view.trace_id}  {len(view.spans)} spans  {duration(t1 - t0)}"))
    out.write("\n")
    top, kids = _children(view)
    todo: list[tuple[int, SpanNode | StoredRecord]] = [(0, n) for n in reversed(top)]
    while todo:
        depth, item = todo.pop()
        indent = "  " * depth
        if isinstance(item, SpanNode):
            sp = item.span
            lead = min(bar_w - 1, int((sp.sort_time - t0) / total * bar_w))
            length = max(1, round((sp.time_unix_nano - sp.sort_time) / total * bar_w))
            bar = (" " * lead + "█" * length)[:bar_w].ljust(bar_w)
            status = sp.status or "unset"
            line = f"{bar} {duration(sp.time_unix_nano - sp.sort_time):>9} {indent}{sp.name or ''}"
            line += f" {status}" if status != "unset" else ""
            children = sorted(kids.get(id(item), []), key=lambda k: (k[0], k[1]))
            todo.extend((depth + 1, child) for _t, _o, child in reversed(children))
        else:
            offset = "+" + duration(item.time_unix_nano - t0)
            line = f"{' ' * bar_w} {offset:>9} {indent}{_what(item).plain}"
            if item.attributes:
                line += "  " + _attrs_text(item.attributes, None)
        out.write(one_line(line) + "\n")
    if view.orphans:
        out.write("records of this trace whose span is not in the store:\n")
        write_lines(view.orphans, out, offsets_from=t0)


def print_trace(view: TraceView, console: Any) -> None:
    """The span tree with a waterfall bar per span, the logs and events inside each span
    in time order, then the records whose span is not in the store."""
    from rich.text import Text
    from rich.tree import Tree

    t0, t1 = view.start_unix_nano, view.end_unix_nano
    total = max(t1 - t0, 1)
    width = max(console.width, 60)
    bar_w = max(10, width // 3)
    name_w = max(16, width - bar_w - 24)
    tree = Tree(
        Text(f"trace {view.trace_id}  {len(view.spans)} spans  {duration(t1 - t0)}", "bold"),
        guide_style="dim",
    )
    top, kids = _children(view)

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
            f" {duration(s.time_unix_nano - start):>9} ",
            (bar, "red" if status == "error" else "cyan"),
            (f" {status}" if status != "unset" else "", "red" if status == "error" else "dim"),
        )

    def item_label(item: StoredRecord) -> Any:
        offset = "+" + duration(item.time_unix_nano - t0)
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
        print_records(view.orphans, console, offsets_from=t0)


def print_metrics(series: Sequence[MetricSeries], console: Any) -> None:
    """The metrics table: each series' current value and a sparkline of its recent ones."""
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
        table.add_row(
            Text(s.name),
            Text(s.instrument),
            Text(source_text(s)),
            Text(_attrs_text(s.attributes, 60), "dim"),
            Text(_series_value(s)),
            Text(sparkline(s.recent[-spark:]), "green"),
        )
    console.print(table)


def _series_value(s: MetricSeries) -> str:
    if s.instrument == "histogram":
        value = (
            f"n={s.count} sum={_number(s.sum)} min={_number(s.min)} p50={_number(s.p50)}"
            f" p90={_number(s.p90)} p99={_number(s.p99)} max={_number(s.max)}"
        )
    else:
        value = _number(s.value)
    return f"{value} {s.unit}" if s.unit else value


def write_metric_lines(series: Sequence[MetricSeries], out: TextIO) -> None:
    """The metrics view for a pipe: one series per line, nothing cut,
    ``name kind source [attributes] = value  sparkline``."""
    for s in series:
        parts = [s.name, s.instrument, source_text(s)]
        if s.attributes:
            parts.append(_attrs_text(s.attributes, None))
        line = " ".join(parts) + f" = {_series_value(s)}"
        spark = sparkline(s.recent[-16:])
        out.write(one_line(line + (f"  {spark}" if spark else "")) + "\n")


def tail_line(rec: StoredRecord, limit: int | None = 120, *, machine: bool = False) -> Any:
    """One record as ``tail`` prints it: ``time source [job] trace:SHORT record
    attributes``, the job and the trace only when the record has them (attributes cut at
    ``limit`` characters; None: never). ``machine``: a machine metric (``correlate``)."""
    from rich.text import Text

    line = Text.assemble(
        (human_time(rec.time_unix_nano) + " ", "dim"),
        (source_text(rec) + " ", ""),
        (f"[{rec.job_id}] " if rec.job_id else "", "dim"),
        (f"trace:{short_id(rec.trace_id)} " if rec.trace_id else "", "dim"),
        _what(rec, machine),
    )
    if rec.attributes:
        line.append("  " + _attrs_text(rec.attributes, limit), "dim")
    return line


# ---- commands -------------------------------------------------------------------------
