"""``fastbuf status``: the agent's status file, judged now, with the ring's own view, the
dead letters waiting in the home and the records lost on the way.

Exit 0 when an agent runs and is healthy; 3 when no agent runs (no status file, or one
whose agent is gone, whether or not a ring exists) or when it is unhealthy (a stalled
loop, a spool that cannot be written, a loop that gave up); 1 when the ring exists but
cannot be read; 2 for an unusable home.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import emp_fastbuf.agent.deadletter as deadletter
from emp_fastbuf import paths
from emp_fastbuf.agent.status import (
    drop_totals,
    judge_health,
    producers_from_ring,
    read_status,
    shown_endpoints,
)
from emp_fastbuf.cli.render import human_time, one_line
from emp_fastbuf.errors import HomeError, RingError, RingNotFound
from emp_fastbuf.ring import Ring, default_ring_name

EXIT_OK = 0
EXIT_RING_UNREADABLE = 1
EXIT_HOME = 2
EXIT_NOT_RUNNING_OR_UNHEALTHY = 3
# The last export error is shown up to this many characters.
_ERROR_SHOWN = 300


def run(args: Any) -> int:
    """``fastbuf status``: the agent, the ring's lanes, the spool, the export and the dead
    letters. Exit 3 when no agent runs or it is unhealthy."""
    try:
        home = paths.checked_home(getattr(args, "home", None))
    except HomeError as exc:
        print(f"fastbuf status: {exc}", file=sys.stderr)
        return EXIT_HOME
    ring_name = getattr(args, "ring", None) or default_ring_name()
    data = read_status(home, ring_name)
    ring_stats: dict[str, Any] | None = None
    try:
        ring = Ring.open(ring_name)
    except RingNotFound:
        ring = None
    except RingError as exc:
        print(f"fastbuf status: {exc}", file=sys.stderr)
        return EXIT_RING_UNREADABLE
    if ring is not None:
        try:
            ring_stats = ring.stats()
        finally:
            ring.close()
    out = dict(data or {"agent": {"alive": False, "ring": ring_name}})
    if ring_stats is not None:
        out["ring"] = ring_stats
        if not out.get("producers"):
            out["producers"] = producers_from_ring(ring_stats)
    healthy = judge_health(out)
    running = bool(out["agent"].get("alive"))
    out["running"] = running
    out["endpoints"] = shown_endpoints(out)
    out["dead_letter"] = {
        "count": deadletter.count(home),
        "directory": str(deadletter.directory(home)),
    }
    out["dropped"] = drop_totals(out)
    if data is None and ring_stats is None:
        print(
            f"fastbuf status: no agent runs: no ring {ring_name!r} and no agent status in {home}",
            file=sys.stderr,
        )
    if getattr(args, "json", False):
        print(json.dumps(out, default=str))
    else:
        _print_status(out)
    return EXIT_OK if running and healthy else EXIT_NOT_RUNNING_OR_UNHEALTHY


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _receiver_text(st: dict[str, Any]) -> str:
    """Where the agent's OTLP receivers listen, and what they took and refused."""
    agent = st.get("agent") or {}
    listening = [
        f"{label} on {agent[key]}"
        for label, key in (("http", "otlp_listen"), ("grpc", "otlp_grpc_listen"))
        if isinstance(agent.get(key), str)
    ]
    if not listening:
        return "off"
    rx = st.get("receiver") or {}
    counts = (
        f"; {rx.get('records', 0)} records received, {rx.get('rejected', 0)} rejected,"
        f" {rx.get('refused', 0)} requests refused (spool full), {rx.get('bad_requests', 0)}"
        " bad requests"
        if rx
        else ""
    )
    return ", ".join(listening) + counts


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    agent = st.get("agent", {})
    health = st.get("health") or {}
    ring = st.get("ring") or {}
    lease = ring.get("consumer", {})
    pid = agent.get("pid")
    if not st.get("running"):
        gone = f" (pid {pid} is gone; the figures below are from its last status)" if pid else ""
        con.print(f"[bold red]no agent runs[/]{gone}")
    elif health.get("problems"):
        con.print("[bold red]unhealthy[/]: " + _text("; ".join(health["problems"])))
    con.print(
        f"[bold]agent[/]: {'alive' if agent.get('alive') else 'not running'}"
        f"{f' (pid {pid})' if pid else ''}; "
        f"ring {_text(repr(ring.get('name', agent.get('ring'))))}; lease holder: "
        f"{lease.get('pid') or 'none'}{' (alive)' if lease.get('alive') else ''}"
    )
    con.print(f"[bold]endpoint[/]: {_text(_endpoint_text(st))}")
    con.print(f"[bold]OTLP receiver[/]: {_text(_receiver_text(st))}")
    ex = st.get("export") or {}
    if ex.get("last_error"):
        when = ex.get("last_error_ns")
        at = f" ({human_time(int(when))})" if isinstance(when, int) else ""
        error = one_line(str(ex["last_error"]))
        if len(error) > _ERROR_SHOWN:
            error = error[: _ERROR_SHOWN - 1] + "…"
        con.print(f"[bold]last export error[/]{at}: {_text(error)}")
    dead = st.get("dead_letter") or {}
    n_dead = int(dead.get("count") or 0)
    con.print(
        f"[bold]dead letters[/]: {n_dead} in {_text(str(dead.get('directory', '-')))}"
        + ("; fastbuf deadletter list shows them" if n_dead else "")
    )
    dropped = st.get("dropped") or {}
    con.print(
        f"[bold]dropped[/]: {dropped.get('records', 0)} records (ring full "
        f"{dropped.get('full', 0)}, no lane {dropped.get('no_lane', 0)}, too large "
        f"{dropped.get('too_large', 0)}); spool evicted {dropped.get('evicted', 0)}"
    )
    dropping = [p for p in st.get("producers") or [] if p.get("dropped")]
    if dropping:
        con.print(
            f"[bold red]dropped records[/]: {len(dropping)} producer process(es) lost records "
            f"(the agent did not keep up, or the ring is too small):"
        )
        drops = Table("pid", "service", "worker", "alive", "ring full", "no lane", "too large")
        for p in dropping[:20]:
            drops.add_row(
                str(p["pid"]),
                _text(str(p.get("service") or "-")),
                _text(str(p.get("worker_id") or "-")),
                "yes" if p.get("alive") else "no",
                str(p.get("dropped_full", 0)),
                str(p.get("dropped_no_lane", 0)),
                str(p.get("dropped_too_large", 0)),
            )
        con.print(drops)
    loops = health.get("loops") or {}
    if agent.get("alive") and loops:
        now = time.time_ns()
        con.print(
            "[bold]loops[/]: "
            + ", ".join(
                f"{name} {'[bold red]stalled[/], ' if lp.get('stalled') else ''}last round "
                f"{max(0.0, (now - int(lp.get('last_beat_ns') or now)) / 1e9):.1f} s ago"
                for name, lp in loops.items()
            )
        )
    if health.get("agent_errors"):
        con.print(
            f"[bold]agent errors[/]: {health['agent_errors']} caught at the loops (the agent "
            f"carried on; the first of each kind is in its log)"
        )
    if ring:
        con.print(
            f"[bold]ring[/]: written {ring['written']}, acked {ring['acked']}, in flight "
            f"{ring['in_flight']}"
        )
        table = Table("lane", "pid", "alive", "written", "dropped", "occupancy")
        for lane in ring.get("lanes", []):
            dropped = lane["dropped_full"] + lane["dropped_too_large"]
            occ = lane["occupancy"] / lane["capacity"] if lane["capacity"] else 0.0
            table.add_row(
                str(lane["lane"]),
                str(lane["owner_pid"] or "-"),
                "yes" if lane["alive"] else "no",
                str(lane["written"]),
                str(dropped),
                f"{occ:.1%}",
            )
        if ring.get("lanes"):
            con.print(table)
    drained = st.get("drained")
    if drained:
        con.print(
            f"[bold]drained[/]: {drained['records']} records, "
            f"{_fmt_bytes(drained['bytes'])}, {drained['batches']} batches, "
            f"{drained['corrupt_records']} corrupt"
        )
    spool = st.get("spool")
    if spool:
        con.print(
            f"[bold]spooled[/]: {spool.get('files', 0)} files, "
            f"{_fmt_bytes(spool.get('bytes', 0))}; evicted "
            f"{spool.get('evicted_files', 0)} files, quarantined "
            f"{spool.get('quarantined_files', 0)}"
        )
    if ex:
        latency = ex.get("latency_s") or {}
        wire = ex.get("bytes_on_wire", 0)
        raw = ex.get("bytes_uncompressed", 0)
        ratio = f"{raw / wire:.1f}x" if wire else "-"
        con.print(
            f"[bold]exported[/]: {ex.get('requests', 0)} requests, {_fmt_bytes(wire)} on "
            f"the wire (compression {ratio}); retries {ex.get('retries', 0)}, "
            f"dead-lettered {ex.get('dead_lettered', 0)}, rejected by partial success "
            f"{ex.get('partial_rejected', 0)}; export latency p50 "
            f"{_ms(latency.get('p50'))}, p99 {_ms(latency.get('p99'))}"
        )
    for line in _dataset_lines(st):
        con.print(line)
    redaction = _redaction_line(st)
    if redaction is not None:
        con.print(redaction)
    store = st.get("store")
    if store:
        con.print(
            f"[bold]store[/]: {store.get('records', 0)} records ingested"
            + (
                f"; {store['clamped_times']} times past 2262 stored as 2262-04-11"
                if store.get("clamped_times")
                else ""
            )
            + (
                f"; [bold red]writes failing[/] ({store['write_failures']} in a row, retrying)"
                if store.get("write_failures")
                else ""
            )
        )


def _redaction_line(st: dict[str, Any]) -> str | None:
    """The redaction rules (``agent.config.redaction``) and what each sink replaced; None
    when the status names no rules (no agent status)."""
    rules = ((st.get("agent") or {}).get("config") or {}).get("redaction")
    if not isinstance(rules, dict):
        return None
    if not rules.get("enabled", True):
        return "[bold]redaction[/]: off (EMP_FASTBUF_REDACT=off)"
    extra = []
    for label, key in (("added", "added"), ("patterns", "globs"), ("kept", "keep")):
        if rules.get(key):
            extra.append(f"{label}: {', '.join(str(v) for v in rules[key])}")
    parts = []
    for where, sink in (("before export", "export"), ("before the store", "store")):
        counts = (st.get(sink) or {}).get("redacted")
        if isinstance(counts, dict):
            parts.append(
                f"{where} {counts.get('attributes', 0)} attribute values, "
                f"{counts.get('urls', 0)} URL credentials, "
                f"{counts.get('headers', 0)} Authorization values"
            )
    words = len(rules.get("words") or [])
    head = f"on ({words} key words{'; ' if extra else ''}{'; '.join(extra)})"
    replaced = f"; replaced {'; '.join(parts)}" if parts else ""
    return f"[bold]redaction[/]: {_text(head + replaced)}"


def _dataset_lines(st: dict[str, Any]) -> list[str]:
    """The dataset routes (``agent.config.datasets``) and what went to each dataset
    (``export.datasets``); nothing when there are no routes and no dataset was named."""
    config = (st.get("agent") or {}).get("config") or {}
    routing = config.get("datasets")
    lines: list[str] = []
    if isinstance(routing, dict):
        pairs = [f"{env} -> {ds}" for env, ds in (routing.get("routes") or {}).items()]
        if routing.get("fallback") is not None:
            pairs.append(f"* -> {routing['fallback']}")
        unmapped = routing.get("unmapped") or {}
        shown = {_dataset_name(ds) for ds in unmapped.values()}
        if len(shown) == 1:
            others = shown.pop()
        else:
            others = ", ".join(f"{sig} {_dataset_name(ds)}" for sig, ds in unmapped.items())
        lines.append(
            f"[bold]datasets[/] ({_text(str(routing.get('source')))}): "
            f"{_text(', '.join(pairs) or 'no route')}; unmapped environments: {_text(others)}"
        )
    sent = (st.get("export") or {}).get("datasets") or []
    if sent and (routing or any(d.get("dataset") is not None for d in sent)):
        parts = [
            f"{_text(_dataset_name(d.get('dataset')))} {d.get('records', 0)} records, "
            f"{d.get('metric_points', 0)} metric points, {d.get('requests', 0)} requests"
            + (f", {d['dead_lettered']} dead-lettered" if d.get("dead_lettered") else "")
            for d in sent
        ]
        lines.append("[bold]sent per dataset[/]: " + "; ".join(parts))
    return lines


def _dataset_name(dataset: object) -> str:
    """A ``Dash0-Dataset`` as sent; null is no header (the token's default dataset)."""
    return "(no header)" if dataset is None else str(dataset)


def _ms(seconds: object) -> str:
    return f"{seconds * 1000:.1f} ms" if isinstance(seconds, int | float) else "-"


def _text(value: str) -> str:
    """A value from the status file (untrusted) as plain text: one line, no rich markup."""
    from rich.markup import escape

    return escape(one_line(value))


def _endpoint_text(st: dict[str, Any]) -> str:
    """Where the signals go: one base URL for the signals sent to ``<base>/v1/<signal>``,
    else each signal's URL; the signals with no endpoint go to the store."""
    endpoints = st.get("endpoints") or {}
    if not endpoints:
        return "unknown (no agent status)"
    sent = {signal: url for signal, url in endpoints.items() if url}
    stored = [signal for signal, url in endpoints.items() if not url]
    if not sent:
        return "none: every signal goes to the local store"
    bases = {
        url[: -len(f"/v1/{signal}")] if url.endswith(f"/v1/{signal}") else None
        for signal, url in sent.items()
    }
    if len(bases) == 1 and None not in bases:
        text = f"{bases.pop()} ({', '.join(sent)})"
    else:
        text = ", ".join(f"{signal} {url}" for signal, url in sent.items())
    if stored:
        text += f"; to the local store: {', '.join(stored)}"
    return text
