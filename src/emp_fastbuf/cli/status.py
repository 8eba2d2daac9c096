"""``fastbuf status``: the agent's status file, judged now, with the ring's own view.

Exit 0 when healthy, 1 when neither a ring nor an agent status exists, 2 for an unusable
home, 3 when the agent is unhealthy (a stalled loop, a spool that cannot be written, a
loop that gave up).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from emp_fastbuf import paths
from emp_fastbuf.agent.status import judge_health, producers_from_ring, read_status
from emp_fastbuf.errors import HomeError, RingError, RingNotFound
from emp_fastbuf.ring import Ring, default_ring_name


def run(args: Any) -> int:
    """``fastbuf status``: the agent, the ring's lanes, the spool and the export.
    Exit 1 when neither a ring nor an agent status exists."""
    try:
        home = paths.home(getattr(args, "home", None))
    except HomeError as exc:
        print(f"fastbuf status: {exc}", file=sys.stderr)
        return 2
    ring_name = getattr(args, "ring", None) or default_ring_name()
    data = read_status(home, ring_name)
    ring_stats: dict[str, Any] | None = None
    try:
        ring = Ring.open(ring_name)
    except RingNotFound:
        ring = None
    except RingError as exc:
        print(f"fastbuf status: {exc}", file=sys.stderr)
        return 1
    if ring is not None:
        try:
            ring_stats = ring.stats()
        finally:
            ring.close()
    if data is None and ring_stats is None:
        print(
            f"fastbuf status: no ring {ring_name!r} and no agent status in {home}", file=sys.stderr
        )
        return 1
    out = dict(data or {"agent": {"alive": False, "ring": ring_name}})
    if ring_stats is not None:
        out["ring"] = ring_stats
        if not out.get("producers"):
            out["producers"] = producers_from_ring(ring_stats)
    healthy = judge_health(out)
    if getattr(args, "json", False):
        print(json.dumps(out, default=str))
    else:
        _print_status(out)
    return 0 if healthy else 3


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    agent = st.get("agent", {})
    health = st.get("health") or {}
    if agent.get("alive") and health.get("problems"):
        con.print("[bold red]unhealthy[/]: " + "; ".join(health["problems"]))
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
    ring = st.get("ring") or {}
    lease = ring.get("consumer", {})
    pid = agent.get("pid")
    con.print(
        f"[bold]agent[/]: {'alive' if agent.get('alive') else 'not running'}"
        f"{f' (pid {pid})' if pid else ''}; "
        f"ring {ring.get('name', agent.get('ring'))!r}; lease holder: "
        f"{lease.get('pid') or 'none'}{' (alive)' if lease.get('alive') else ''}"
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
                str(p.get("service") or "-"),
                str(p.get("worker_id") or "-"),
                "yes" if p.get("alive") else "no",
                str(p.get("dropped_full", 0)),
                str(p.get("dropped_no_lane", 0)),
                str(p.get("dropped_too_large", 0)),
            )
        con.print(drops)
    if ring:
        con.print(
            f"[bold]ring[/]: written {ring['written']}, acked {ring['acked']}, dropped "
            f"{ring['dropped']} (full {ring['dropped_full']}, no lane "
            f"{ring['dropped_no_lane']}, too large {ring['dropped_too_large']}), in flight "
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
    ex = st.get("export")
    if ex:
        wire = ex.get("bytes_on_wire", 0)
        raw = ex.get("bytes_uncompressed", 0)
        ratio = f"{raw / wire:.1f}x" if wire else "-"
        con.print(
            f"[bold]exported[/]: {ex.get('requests', 0)} requests, {_fmt_bytes(wire)} on "
            f"the wire (compression {ratio}); retries {ex.get('retries', 0)}, "
            f"dead-lettered {ex.get('dead_lettered', 0)}, rejected by partial success "
            f"{ex.get('partial_rejected', 0)}; export latency p50 "
            f"{ex.get('latency_p50_ms', '-')} ms, p99 {ex.get('latency_p99_ms', '-')} ms"
        )
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
