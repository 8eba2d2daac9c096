"""The end of a ``fastbuf demo`` run: what reached the store, and the summary printed
from it (counts, emit latency, throughput and sizes, commands to try) and the side file."""

from __future__ import annotations

import array
import gzip
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emp_fastbuf.demo.worker import KINDS, SERVICE
from emp_fastbuf.records import EVENT, LOG, SPAN, Record, Resource, SpanEvent
from emp_fastbuf.store import JobSummary, Store, StoredRecord
from emp_fastbuf.values import percentile

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Delivered", "RunState", "print_summary", "read_back", "wire_bytes", "write_side_file"]


@dataclass
class RunState:
    """A run as the scheduler saw it: its ids, the workers' job results and reports,
    and the problems found; what the summary and the side file are made from."""

    home: Path
    ring: str
    run_id: str
    machine_id: str
    workers: int
    jobs_total: int
    agent_log: Path
    side_file: Path
    started: float = field(default_factory=time.monotonic)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    scheduler_emitted: dict[str, int] = field(default_factory=dict)
    work_seconds: float = 0.0
    last_job_done: float = 0.0
    problems: list[str] = field(default_factory=list)


# ---- reading the run back from the store -----------------------------------------------


@dataclass
class Delivered:
    """What the run left in the store, counted by kind."""

    by_kind: Counter[str] = field(default_factory=Counter)  # the producers' records
    agent: Counter[str] = field(default_factory=Counter)  # the agent's own metric updates
    logs: list[StoredRecord] = field(default_factory=list)
    spans: list[StoredRecord] = field(default_factory=list)
    failed: list[JobSummary] = field(default_factory=list)  # the run's failed jobs, by id


def read_back(store: Store, run: RunState) -> Delivered:
    """The run's records in the store: this machine's logs and metric series, and the
    spans of every job's trace."""
    out = Delivered()
    out.logs = store.logs(machine=run.machine_id, limit=None)
    for r in out.logs:
        (out.by_kind if r.worker_id else out.agent)[r.kind] += 1
    for job in run.jobs.values():
        view = store.trace(job["trace_id"])
        if view is not None:
            out.spans.extend(n.span for n in view.spans if n.span.machine_id == run.machine_id)
    out.by_kind["span"] += len(out.spans)
    for s in store.metrics(machine=run.machine_id):
        (out.by_kind if s.worker_id else out.agent)["metric"] += s.updates
    # What `fastbuf jobs --failed` says of this run's jobs.
    out.failed = sorted(
        (j for j in store.jobs(failed=True) if j.job_id in run.jobs), key=lambda j: j.job_id
    )
    return out


def wire_bytes(delivered: Delivered) -> int:
    """gzip size of OTLP/protobuf logs and traces requests rebuilt from the stored records.

    The demo's agent writes the local store only, so nothing of this run went over the
    wire: the size a backend would receive is estimated with the agent's reference
    request builders (the messages its exporter sends), the one public way to build them.
    """
    from emp_fastbuf.agent.otlp.reference import build_logs_request, build_traces_request

    groups: dict[tuple[str | None, str | None, str | None], list[Record]] = {}
    for r in [*delivered.logs, *delivered.spans]:
        groups.setdefault((r.service, r.machine_id, r.worker_id), []).append(_as_record(r))
    resources = [
        (
            Resource(
                attributes={
                    k: v
                    for k, v in (
                        ("service.name", svc),
                        ("emp.machine_id", machine),
                        ("emp.worker_id", worker),
                    )
                    if v is not None
                }
            ),
            recs,
        )
        for (svc, machine, worker), recs in groups.items()
    ]
    total = 0
    for req in (build_logs_request(resources), build_traces_request(resources)):
        if req is not None:
            total += len(gzip.compress(req.SerializeToString(), compresslevel=6))
    return total


def _as_record(r: StoredRecord) -> Record:
    kind = {"log": LOG, "event": EVENT, "span": SPAN}[r.kind]
    rec = Record(
        kind=kind,
        time_unix_nano=r.time_unix_nano,
        trace_id=bytes.fromhex(r.trace_id) if r.trace_id else None,
        span_id=bytes.fromhex(r.span_id) if r.span_id else None,
        context={"job_id": r.job_id} if r.job_id is not None else {},
        attributes=dict(r.attributes),
        severity_number=r.severity_number or 0,
        severity_text=r.severity_text or "",
        body=r.body or "",
        name=r.name or "",
    )
    if kind == SPAN:
        rec.parent_span_id = bytes.fromhex(r.parent_span_id) if r.parent_span_id else None
        rec.start_unix_nano = r.start_unix_nano or r.time_unix_nano
        rec.status_code = r.status_code or 0
        rec.status_message = r.status_message or ""
        rec.span_kind = r.span_kind or 0
        rec.events = [
            SpanEvent(
                str(e.get("name", "")), int(e.get("time_unix_nano", 0)), e.get("attributes") or {}
            )
            for e in r.events
        ]
    return rec


# ---- the summary -----------------------------------------------------------------------


def _fmt_ns(ns: int) -> str:
    if ns < 10_000:
        return f"{ns / 1e3:.2f} us"
    if ns < 10**6:
        return f"{ns / 1e3:.1f} us"
    return f"{ns / 1e6:.2f} ms"


def print_summary(
    run: RunState,
    emitted: Counter[str],
    delivered: Delivered,
    ring_stats: dict[str, Any],
    status: dict[str, Any] | None,
    store_bytes: int,
    wire_bytes: int,
    home_flag: str,
) -> None:
    """The summary on stdout: records by kind, emit latency per worker, throughput and
    sizes, then query commands with this run's ids."""
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    failed = [j.job_id for j in delivered.failed]
    con.print(
        f"\n[bold]fastbuf demo[/]: {len(run.jobs)} jobs ({len(failed)} failed) on"
        f" {run.workers} workers, machine {run.machine_id}, ring {run.ring}"
    )
    _print_counts(con, emitted, delivered, ring_stats, status)
    latencies = _print_latency(con, run)
    _print_rates(con, run, emitted, delivered, status, latencies, store_bytes, wire_bytes)
    _print_failed(con, delivered.failed)
    _print_queries(con, run, failed, home_flag)


def _print_failed(con: Console, failed: list[JobSummary]) -> None:
    """The failed jobs as the store has them, each with the first line of its cause."""
    if not failed:
        return
    con.print(f"\n[bold]failed jobs[/] ({len(failed)}):")
    for job in failed:
        con.print(f"  {job.job_id}  {job.first_error or '-'}", markup=False)


def _print_counts(
    con: Console,
    emitted: Counter[str],
    delivered: Delivered,
    ring_stats: dict[str, Any],
    status: dict[str, Any] | None,
) -> None:
    from rich.table import Table

    table = Table("records", *KINDS, "total", box=None, pad_edge=False)
    row = [emitted[k] for k in KINDS]
    table.add_row("emitted by the workers", *map(str, row), str(sum(row)))
    row = [delivered.by_kind[k] for k in KINDS]
    table.add_row("delivered to the store", *map(str, row), str(sum(row)))
    row = [delivered.agent[k] for k in KINDS]
    table.add_row("agent's own (machine metrics)", *map(str, row), str(sum(row)))
    con.print(table)
    con.print(
        f"dropped: {ring_stats.get('dropped', 0)} (ring full {ring_stats.get('dropped_full', 0)},"
        f" no lane {ring_stats.get('dropped_no_lane', 0)},"
        f" too large {ring_stats.get('dropped_too_large', 0)})"
    )
    if status is not None:
        spool = status.get("spool") or {}
        con.print(
            f"agent: drained {status['drained']['records']} records in"
            f" {status['drained']['batches']} batches, {spool.get('files', 0)} spool files left"
        )


def _latency_cells(samples: list[int]) -> list[str]:
    """Calls, p50, p99, p99.9 and max of sorted, non-empty ``samples``."""
    cells = [str(len(samples))]
    cells += [_fmt_ns(percentile(samples, p) or 0) for p in (50, 99, 99.9)]
    cells.append(_fmt_ns(samples[-1]))
    return cells


def _print_latency(con: Console, run: RunState) -> list[int]:
    """The emit latency table, per worker and for all; returns all samples, sorted."""
    from rich.table import Table

    lat = Table(
        "emit latency",
        "calls",
        "p50",
        "p99",
        "p99.9",
        "max",
        box=None,
        pad_edge=False,
        caption="perf_counter_ns around each fastbuf call in the workers (a span's start and"
        " end count as two calls), the measuring included; the calls come between sleeps,"
        " with cold caches",
        caption_justify="left",
    )
    merged: list[int] = []
    for i in sorted(run.reports):
        samples = sorted(array.array("q", run.reports[i].get("latency_ns", b"")))
        merged.extend(samples)
        if samples:
            lat.add_row(run.reports[i]["worker_id"], *_latency_cells(samples))
    merged.sort()
    if merged:
        lat.add_row("[bold]all workers", *_latency_cells(merged))
    con.print(lat)
    return merged


def _print_rates(
    con: Console,
    run: RunState,
    emitted: Counter[str],
    delivered: Delivered,
    status: dict[str, Any] | None,
    latencies: list[int],
    store_bytes: int,
    wire_bytes: int,
) -> None:
    """Throughput and the share of the workers' time spent emitting; bytes per record in
    the ring, in the store and on the wire."""
    total = sum(emitted.values())
    rows = sum(delivered.by_kind.values()) + sum(delivered.agent.values())
    if run.work_seconds > 0:
        emit_s = sum(latencies) / 1e9
        con.print(
            f"throughput: {total / run.work_seconds:,.0f} records/s over {run.work_seconds:.2f} s"
            f" of simulated GPU work; emitting took {emit_s * 1e3:.1f} ms of the workers' time"
            f" ({emit_s / (run.work_seconds * run.workers):.2%})"
        )
    if status is not None and status["drained"]["records"]:
        d = status["drained"]
        con.print(f"in the ring: {d['bytes'] / d['records']:.0f} B/record (native encoding)")
    if rows and store_bytes > 0:
        con.print(
            f"stored: ~{store_bytes / rows:.0f} B/record (approximate: growth of the"
            " database pages, indexes included, over this run's rows)"
        )
    n_wire = len(delivered.logs) + len(delivered.spans)
    if n_wire and wire_bytes:
        con.print(
            f"on the wire: ~{wire_bytes / n_wire:.0f} B/record (gzip of OTLP/protobuf logs and"
            " traces requests rebuilt from this run's stored logs, events and spans)"
        )


def _print_queries(con: Console, run: RunState, failed: list[str], home_flag: str) -> None:
    """Query commands to try, with a failed job's ids when there is one."""
    job = failed[0] if failed else next(iter(sorted(run.jobs)), None)
    if job is None:
        return
    trace_id = run.jobs[job]["trace_id"]
    con.print("\n[bold]try[/]:")
    first = ("fastbuf jobs --failed", f"fastbuf why --job {job}") if failed else ()
    for cmd in (
        *first,
        f"fastbuf logs --job {job}",
        f"fastbuf trace {trace_id}",
        f"fastbuf correlate --job {job}",
        f"fastbuf metrics --machine {run.machine_id}",
    ):
        con.print(f"  {cmd}{home_flag}", markup=False)


def write_side_file(run: RunState, extra: dict[str, Any]) -> None:
    """The run's ids and counts as JSON, for scripts and tests (written atomically)."""

    jobs = [run.jobs[j] for j in sorted(run.jobs)]
    workers = [
        {k: v for k, v in run.reports[i].items() if k != "latency_ns"} for i in sorted(run.reports)
    ]
    data = {
        "run_id": run.run_id,
        "ring": run.ring,
        "home": str(run.home),
        "service": SERVICE,
        "machine_id": run.machine_id,
        "scheduler_worker_id": f"{run.machine_id}-scheduler",
        "workers": workers,
        "jobs": jobs,
        "completed_jobs": [j["job_id"] for j in jobs if j["status"] == "completed"],
        "failed_jobs": [j["job_id"] for j in jobs if j["status"] == "failed"],
        **extra,
    }
    tmp = run.side_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, run.side_file)
