"""``fastbuf jobs`` (one row per job) and ``fastbuf why --job ID`` (the failure report of
one job): their handlers, their human views and their ``--json`` objects (docs/cli.md).

The store answers what it holds (``Store.jobs``, ``Store.job_failure``,
``Store.machine_series``); the evidence that something may be missing from it (records
the ring dropped, a spool backlog, export errors) comes from the agent's status files and
the dead-letter folder in the home.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from emp_fastbuf import paths
from emp_fastbuf.agent.status import read_status
from emp_fastbuf.cli import render
from emp_fastbuf.cli.commands import EXIT_OK, NotFound, open_store
from emp_fastbuf.cli.flags import UsageError, home, parse_since
from emp_fastbuf.cli.jsonl import format_time, record_json, write_line
from emp_fastbuf.store import JobFailure, JobSummary, MachineSeries

# The machine metrics ``why`` shows, as agent/machine.py records them: name -> the
# attributes a series must have exactly (None: any, e.g. one series per GPU). The overall
# CPU, not each logical CPU; the memory in use.
MACHINE_METRICS: dict[str, dict[str, Any] | None] = {
    "hw.gpu.memory.usage": None,
    "hw.gpu.utilization": None,
    "system.cpu.utilization": {},
    "system.memory.utilization": {"system.memory.state": "used"},
}
# The agent reads the machine every 10 s (agent/config.py, metrics_interval_s): the job's
# window widened by that much on each side holds a reading even for a short job.
MACHINE_MARGIN_NS = 10 * 10**9
# How many of the job's logs before the failure ``why`` shows.
LOGS_BEFORE = 20
# From this many columns the start of a job stays on one line in the jobs table.
_WIDE_TERMINAL = 120
# A sparkline is at most this many characters: longer series are cut into this many
# stretches, each shown by its highest value (a peak is what a failure report needs).
SPARK_WIDTH = 40

# The last frame of a Python traceback: where the exception was raised.
_FRAME = re.compile(r'^\s*File "(?P<file>[^"\n]*)", line (?P<line>\d+), in (?P<function>.+)$', re.M)

# (text, rich style) lines of the ``why`` report.
_Line = tuple[str, str]


def _time_bounds(args: argparse.Namespace) -> tuple[int | None, int | None]:
    now = time.time_ns()
    since = parse_since(args.since, now) if args.since is not None else None
    until = parse_since(args.until, now, "--until") if args.until is not None else None
    if since is not None and until is not None and until < since:
        raise UsageError(f"--until {args.until!r} is before --since {args.since!r}")
    return since, until


# ---- fastbuf jobs ---------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace) -> int:
    """``fastbuf jobs``: one row per job, newest first."""
    since, until = _time_bounds(args)
    with open_store(args) as store:
        found = store.jobs(since_ns=since, until_ns=until, failed=True if args.failed else None)
    if not found:
        raise NotFound("no matching failed jobs" if args.failed else "no matching jobs")
    if args.json:
        for job in found:
            write_line(job_json(job), sys.stdout)
    elif render.piped():
        write_job_lines(found, sys.stdout)
    else:
        print_jobs(found, render.make_console())
    return EXIT_OK


def job_json(job: JobSummary) -> dict[str, Any]:
    """The JSON object of one job (fields listed in docs/cli.md)."""
    return {
        "job_id": job.job_id,
        "status": job.status,
        "start_unix_nano": job.start_unix_nano,
        "start": format_time(job.start_unix_nano),
        "end_unix_nano": job.end_unix_nano,
        "end": format_time(job.end_unix_nano),
        "duration_ns": job.duration_ns,
        "machines": job.machines,
        "workers": job.workers,
        "records": job.records,
        "first_error": job.first_error,
    }


def _first_and_more(values: Sequence[str]) -> str:
    """``a``, or ``a +2`` for three values, or ``-``."""
    if not values:
        return "-"
    return values[0] + (f" +{len(values) - 1}" if len(values) > 1 else "")


def write_job_lines(found: Sequence[JobSummary], out: TextIO) -> None:
    """The jobs view for a pipe: one job per line, nothing cut, fields two spaces apart:
    ``job status start duration machines workers records first-error``."""
    for job in found:
        fields = (
            job.job_id,
            job.status,
            render.human_time(job.start_unix_nano),
            render.duration(job.duration_ns),
            ",".join(job.machines) or "-",
            ",".join(job.workers) or "-",
            f"{job.records} records",
            job.first_error if job.first_error is not None else "-",
        )
        out.write(render.one_line("  ".join(fields)) + "\n")


def print_jobs(found: Sequence[JobSummary], console: Any) -> None:
    """The jobs table: several machines or workers show as the first and ``+N``."""
    from rich.table import Table
    from rich.text import Text

    def width(header: str, values: list[str], most: int) -> int:
        return max(len(header), min(max(map(len, values), default=1), most))

    machines = [_first_and_more(j.machines) for j in found]
    workers = [_first_and_more(j.workers) for j in found]
    errors = [j.first_error or "-" for j in found]
    # The first error takes the width left and the ids keep theirs (up to a point, then
    # they fold); on a narrow terminal the start wraps too (date, then time).
    wide = console.width >= _WIDE_TERMINAL
    table = Table(box=None, pad_edge=False, show_edge=False, expand=True)
    table.add_column("job", overflow="fold", min_width=width("job", [j.job_id for j in found], 24))
    table.add_column("status", no_wrap=True)
    # Narrow: the start as three lines, date, time (12 characters) and offset.
    table.add_column("start", no_wrap=wide, style="dim", width=None if wide else 12)
    table.add_column("duration", no_wrap=True, justify="right")
    table.add_column("machine", overflow="fold", min_width=width("machine", machines, 16))
    table.add_column("worker", overflow="fold", min_width=width("worker", workers, 16))
    table.add_column("records", no_wrap=True, justify="right")
    table.add_column(
        "first error", overflow="fold", ratio=1, min_width=width("first error", errors, 24)
    )
    for job, machine, worker, error in zip(found, machines, workers, errors, strict=True):
        table.add_row(
            Text(job.job_id),
            Text(job.status, "red" if job.failed else "green"),
            Text(render.human_time(job.start_unix_nano)),
            Text(render.duration(job.duration_ns)),
            Text(machine),
            Text(worker),
            Text(str(job.records)),
            Text(error, "red" if job.failed else ""),
        )
    console.print(table)


# ---- fastbuf why --job ID -------------------------------------------------------------


def cmd_why(args: argparse.Namespace) -> int:
    """``fastbuf why --job ID``: why the job failed (or that it did not)."""
    if args.job is None:
        raise UsageError("which job? give it as --job ID")
    with open_store(args) as store:
        report = store.job_failure(args.job, logs=LOGS_BEFORE)
        if report is None:
            raise NotFound(f"no records for job {args.job!r}")
        job = report.job
        series: list[MachineSeries] = []
        if job.failed:
            lo, hi = machine_window(job)
            series = select_machine_series(
                store.machine_series(job.machines, list(MACHINE_METRICS), lo, hi)
            )
    evidence = gather_evidence(home(args), job) if job.failed else None
    if args.json:
        write_line(why_json(report, series, evidence), sys.stdout)
        return EXIT_OK
    lines = why_lines(report, series, evidence)
    if render.piped():
        for text, _style in lines:
            sys.stdout.write(render.one_line(text) + "\n")
    else:
        from rich.text import Text

        console = render.make_console()
        for text, style in lines:
            console.print(Text(render.one_line(text), style))
    return EXIT_OK


def machine_window(job: JobSummary) -> tuple[int, int]:
    """The time window of the machine metrics: the job's, ``MACHINE_MARGIN_NS`` wider on
    each side."""
    return job.start_unix_nano - MACHINE_MARGIN_NS, job.end_unix_nano + MACHINE_MARGIN_NS


def select_machine_series(series: Sequence[MachineSeries]) -> list[MachineSeries]:
    """The series of ``MACHINE_METRICS`` with the attributes each must have."""
    out = []
    for s in series:
        wanted = MACHINE_METRICS.get(s.name, {})
        if wanted is None or s.attributes == wanted:
            out.append(s)
    return out


def raised_at(stacktrace: str | None) -> dict[str, Any] | None:
    """Where a Python traceback says the exception was raised (its last frame): file,
    line and function; None when it has no frame."""
    frames = list(_FRAME.finditer(stacktrace or ""))
    if not frames:
        return None
    last = frames[-1]
    return {
        "file": last["file"],
        "line": int(last["line"]),
        "function": last["function"].strip(),
    }


def _exception_json(report: JobFailure) -> dict[str, Any] | None:
    exc = report.exception
    if exc is None:
        return None
    stack = exc.get("exception.stacktrace")
    return {
        "type": exc.get("exception.type"),
        "message": exc.get("exception.message"),
        "stacktrace": stack,
        "raised_at": raised_at(stack if isinstance(stack, str) else None),
        "source": report.exception_source,
    }


def _series_json(s: MachineSeries) -> dict[str, Any]:
    return {
        "name": s.name,
        "unit": s.unit,
        "machine_id": s.machine_id,
        "attributes": s.attributes,
        "min": s.min,
        "max": s.max,
        "last": s.last,
        "values": s.values,
        "times_unix_nano": s.times,
        "sparkline": spark(s.values),
    }


def why_json(
    report: JobFailure, series: Sequence[MachineSeries], evidence: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``why --json`` object: the report's sections (fields listed in docs/cli.md)."""
    job = report.job
    failure = report.failure
    out: dict[str, Any] = {
        "job": job_json(job),
        "status": job.status,
        "failure": None,
        "span_path": [],
        "exception": None,
        "logs": [],
        "machine_metrics": None,
        "evidence": evidence,
    }
    if not job.failed:
        return out
    lo, hi = machine_window(job)
    out["machine_metrics"] = {
        "since_unix_nano": lo,
        "until_unix_nano": hi,
        "margin_ns": MACHINE_MARGIN_NS,
        "series": [_series_json(s) for s in series],
    }
    if failure is None:  # retention deleted it since the chunk index said so
        return out
    out["failure"] = {
        "kind": failure.kind,
        "text": job.first_error,
        "time_unix_nano": failure.time_unix_nano,
        "time": format_time(failure.time_unix_nano),
        "record": record_json(failure),
    }
    out["span_path"] = [{**record_json(s), "depth": i} for i, s in enumerate(report.span_path)]
    out["exception"] = _exception_json(report)
    out["logs"] = [record_json(r) for r in report.logs]
    return out


def spark(values: Sequence[float]) -> str:
    """The sparkline of a series, at most ``SPARK_WIDTH`` characters (the highest value
    of each stretch when longer)."""
    if len(values) <= SPARK_WIDTH:
        return render.sparkline(values)
    n = len(values)
    peaks = [
        max(values[i * n // SPARK_WIDTH : (i + 1) * n // SPARK_WIDTH]) for i in range(SPARK_WIDTH)
    ]
    return render.sparkline(peaks)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _value(v: float, unit: str) -> str:
    if unit == "1":
        return f"{v * 100:.0f}%"
    if unit == "By":
        return _bytes(v)
    return f"{v:.6g}{' ' + unit if unit else ''}"


def _where(job: JobSummary) -> str:
    machines = ", ".join(job.machines) or "an unknown machine"
    workers = ", ".join(job.workers)
    return f"on {machines}" + (f" (worker {workers})" if workers else "")


def _summary(job: JobSummary) -> str:
    return (
        f"started {render.human_time(job.start_unix_nano)}, ran"
        f" {render.duration(job.duration_ns)}, {job.records} records, {_where(job)}"
    )


def why_lines(
    report: JobFailure, series: Sequence[MachineSeries], evidence: dict[str, Any] | None
) -> list[_Line]:
    """The ``why`` report as (text, style) lines, the sections in the order of
    docs/cli.md; for a job that did not fail, ``the job succeeded`` and its summary."""
    job = report.job
    if not job.failed:
        return [("the job succeeded", "bold green"), (f"job {job.job_id}: {_summary(job)}", "")]
    lines: list[_Line] = [
        (f"job {job.job_id} failed: {job.first_error or '-'}", "bold red"),
        (f"  {_summary(job)}", ""),
    ]
    if report.failure is None:
        # The chunk index says so, but retention has deleted the record since.
        lines.append(("  the failure record is no longer in the store", "yellow"))
        return lines + _metric_lines(job, series) + _evidence_lines(job, evidence)
    lines.append((f"  failed at {render.human_time(report.failure.time_unix_nano)}", ""))
    lines += _path_lines(report)
    lines += _exception_lines(report)
    lines.append(("", ""))
    lines.append((f"the last logs before the failure (up to {LOGS_BEFORE})", "bold"))
    if not report.logs:
        lines.append(("  none", "dim"))
    for r in report.logs:
        lines.append(("  " + render.tail_line(r, limit=None).plain, ""))
    lines += _metric_lines(job, series)
    lines += _evidence_lines(job, evidence)
    return lines


def _path_lines(report: JobFailure) -> list[_Line]:
    path = report.span_path
    if not path:
        return [("", ""), ("failing span: none (the failure belongs to no stored span)", "bold")]
    lines: list[_Line] = [
        ("", ""),
        (f"failing span, from the root (trace {render.short_id(path[-1].trace_id)})", "bold"),
    ]
    names = [f"{'  ' * depth}{span.name or ''}" for depth, span in enumerate(path)]
    width = max(len(n) for n in names)
    for depth, (name, span) in enumerate(zip(names, path, strict=True)):
        start = span.start_unix_nano if span.start_unix_nano is not None else span.time_unix_nano
        status = span.status or "unset"
        mark = "  <- the failing span" if depth == len(path) - 1 else ""
        lines.append(
            (
                f"  {name.ljust(width)}  {render.duration(span.time_unix_nano - start):>9}"
                f"  {status}{mark}",
                "red" if status == "error" else "",
            )
        )
    return lines


def _exception_lines(report: JobFailure) -> list[_Line]:
    exc = _exception_json(report)
    lines: list[_Line] = [("", "")]
    if exc is None:
        failure = report.failure
        what = (
            "an ERROR log without exception.* attributes"
            if failure is not None and failure.kind == "log"
            else "a span with status error"
        )
        lines.append((f"exception: none recorded (the failure is {what})", "bold"))
        return lines
    source = "the ERROR log" if exc["source"] == "log" else "the span's exception event"
    lines.append((f"exception (from {source})", "bold"))
    lines.append((f"  {exc['type']}: {exc['message']}", "red"))
    where = exc["raised_at"]
    if where is not None:
        lines.append((f"  raised in {where['function']} at {where['file']}:{where['line']}", ""))
    for line in str(exc["stacktrace"] or "").splitlines():
        lines.append(("  " + line, "dim"))
    return lines


def _metric_lines(job: JobSummary, series: Sequence[MachineSeries]) -> list[_Line]:
    lo, hi = machine_window(job)
    machines = ", ".join(job.machines) or "-"
    lines: list[_Line] = [
        ("", ""),
        (
            f"machine metrics of {machines} from {render.human_time(lo)} to"
            f" {render.human_time(hi)} (the job's time ± {MACHINE_MARGIN_NS // 10**9} s)",
            "bold",
        ),
    ]
    if not series:
        lines.append(
            (
                "  none: no agent reported this machine's metrics then (the agent reports its"
                " machine under $EMP_MACHINE_ID, else its host name)",
                "dim",
            )
        )
    several = len(job.machines) > 1
    for s in series:
        label = s.name
        gpu = s.attributes.get("hw.id")
        if gpu is not None:
            label += f" {s.attributes.get('hw.name', 'gpu')} {gpu}"
        if several:
            label += f" on {s.machine_id}"
        lines.append(
            (
                f"  {label}  min {_value(s.min, s.unit)}  max {_value(s.max, s.unit)}"
                f"  last {_value(s.last, s.unit)}  {spark(s.values)}",
                "",
            )
        )
    return lines


def _evidence_lines(job: JobSummary, evidence: dict[str, Any] | None) -> list[_Line]:
    lines: list[_Line] = [("", ""), ("what could hide evidence", "bold")]
    if evidence is None:
        return lines
    agents = evidence["agents"]
    if not agents:
        lines.append(
            (
                f"  no agent status file in {evidence['home']}: drops, spool backlog and export"
                " errors are unknown",
                "yellow",
            )
        )
    workers = ", ".join(job.workers) or "the job's workers"
    for agent in agents:
        state = "running" if agent["alive"] else "not running"
        updated = agent["updated_unix_nano"]
        when = f", status of {render.human_time(updated)}" if updated else ""
        lines.append((f"  agent of ring {agent['ring']!r} ({state}{when}):", ""))
        if not agent["drops"]:
            lines.append((f"    drops: none by {workers}", ""))
        for p in agent["drops"]:
            lines.append(
                (
                    f"    drops: pid {p['pid']} (worker {p['worker_id'] or 'unknown'}) dropped"
                    f" {p['dropped']} records: ring full {p['dropped_full']}, no free lane"
                    f" {p['dropped_no_lane']}, too large {p['dropped_too_large']}",
                    "red",
                )
            )
        lines.append(_spool_line(agent["spool"]))
        lines.append(_export_line(agent["export"]))
        failures = agent["store_write_failures"]
        if failures:
            lines.append((f"    store: writes failing ({failures} in a row)", "red"))
    files = evidence["dead_letter_files"]
    dead = evidence["dead_letter_dir"]
    if files is None:
        lines.append((f"  dead letter: {dead} cannot be read", "yellow"))
    else:
        lines.append(
            (f"  dead letter: {files} files in {dead}", "red" if files else ""),
        )
    return lines


def _spool_line(spool: dict[str, Any] | None) -> _Line:
    if spool is None:
        return ("    spool: unknown", "yellow")
    text = f"    spool: {spool['files']} files ({_bytes(spool['bytes'])}) not yet delivered"
    bad = spool["files"] > 0
    if spool["evicted_files"]:
        text += (
            f"; {spool['evicted_files']} files ({spool['evicted_records']} records) evicted"
            " when it was full: lost"
        )
        bad = True
    if spool["quarantined_files"]:
        text += f"; {spool['quarantined_files']} damaged files quarantined"
        bad = True
    return (text, "red" if bad else "")


def _export_line(export: dict[str, Any] | None) -> _Line:
    if export is None:
        return ("    export: none (the agent writes the local store only)", "")
    counts = {k: export[k] for k in ("failures", "dead_lettered", "partial_rejected")}
    if not any(counts.values()):
        return ("    export: no errors", "")
    text = (
        f"    export: {counts['failures']} failed requests, {counts['dead_lettered']}"
        f" dead-lettered, {counts['partial_rejected']} records rejected"
    )
    if export["last_error"]:
        text += f"; last error: {export['last_error']}"
    return (text, "red")


# ---- evidence from the home -------------------------------------------------------------

_DROP_FIELDS = (
    "pid",
    "service",
    "worker_id",
    "alive",
    "dropped",
    "dropped_full",
    "dropped_no_lane",
    "dropped_too_large",
)


def gather_evidence(home_dir: Path, job: JobSummary) -> dict[str, Any]:
    """What could keep records of ``job`` out of the store, from every agent status file
    in the home (one per ring) and the dead-letter folder: drops by the job's workers
    (and by processes whose worker is unknown), the spool backlog, export errors."""
    agents = []
    for path in sorted(home_dir.glob("status-*.json")):
        ring = path.name[len("status-") : -len(".json")]
        status = read_status(home_dir, ring)
        if status is not None:
            agents.append(_agent_evidence(ring, status, job))
    dead = home_dir / paths.DEAD_LETTER_DIR
    files: int | None
    try:
        files = sum(1 for p in dead.iterdir() if p.is_file() and not p.name.startswith("."))
    except FileNotFoundError:
        files = 0
    except OSError:
        files = None
    return {
        "home": str(home_dir),
        "agents": agents,
        "dead_letter_dir": str(dead),
        "dead_letter_files": files,
    }


def _count(section: dict[str, Any], key: str) -> int:
    value = section.get(key)
    return int(value) if isinstance(value, int | float) else 0


def _agent_evidence(ring: str, status: dict[str, Any], job: JobSummary) -> dict[str, Any]:
    agent = status.get("agent") or {}
    workers = set(job.workers)
    drops = [
        {k: p.get(k) for k in _DROP_FIELDS}
        for p in status.get("producers") or []
        if isinstance(p, dict)
        and _count(p, "dropped")
        and (p.get("worker_id") is None or p.get("worker_id") in workers)
    ]
    spool_section = status.get("spool")
    spool = None
    if isinstance(spool_section, dict):
        spool = {
            k: _count(spool_section, k)
            for k in ("files", "bytes", "evicted_files", "evicted_records", "quarantined_files")
        }
    export_section = status.get("export")
    export: dict[str, Any] | None = None
    if isinstance(export_section, dict):
        last = export_section.get("last_error")
        export = {
            **{
                k: _count(export_section, k)
                for k in ("failures", "dead_lettered", "partial_rejected", "retries")
            },
            "last_error": str(last) if last else None,
        }
    store = status.get("store")
    updated = agent.get("updated_ns")
    return {
        "ring": ring,
        "alive": bool(agent.get("alive")),
        "updated_unix_nano": int(updated) if isinstance(updated, int) else None,
        "drops": drops,
        "spool": spool,
        "export": export,
        "store_write_failures": _count(store, "write_failures")
        if isinstance(store, dict)
        else None,
    }
