"""The agent's status file, ``<home>/status-<ring>.json``: written by the agent every
second, read by ``fastbuf status`` and the demo.

Here: writing it safely, reading it back, the producers table (who writes into the ring
and what each process dropped), the health judgment, made by the agent for itself and
again by the reader when it reads (a stalled agent no longer updates its own verdict),
and what the reader adds to the file for ``fastbuf status``: the endpoints as they may be
shown and the drop totals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emp_fastbuf import paths
from emp_fastbuf.agent.batch import resource_of
from emp_fastbuf.records import Resource
from emp_fastbuf.ring import process_alive

log = logging.getLogger("emp_fastbuf.agent")

DROP_REASONS = ("full", "no_lane", "too_large")
MAX_PRODUCERS_SHOWN = 256
# Supervision: a loop that has not come round for this long is stalled (fastbuf status
# says unhealthy). The delivery loop waits on exports, each bounded by the retry policy.
STALL_S = {"drain": 30.0, "delivery": 300.0}


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file at ``path`` with ``status``; a failure is logged, never
    raised (the agent goes on without a status file)."""
    # A temporary file of this process's own (O_EXCL | O_NOFOLLOW: a planted
    # status-<ring>.tmp symlink is neither followed nor reused), then renamed over the
    # status file (rename replaces a planted symlink, never writes through it).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        data = json.dumps(status, default=str)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write status file: %s", exc)


def read_status(home: Path, ring_name: str) -> dict[str, Any] | None:
    """The last status the agent of ``ring_name`` wrote, with ``agent.alive`` (whether its
    process still runs) added; None when there is no readable status file."""
    path = paths.status_path(home, ring_name)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("agent", {}).get("pid")
    data.setdefault("agent", {})["alive"] = bool(pid) and process_alive(int(pid))
    return data


def loop_health(
    beats: dict[str, int],
    agent_errors: int,
    spool_error: dict[str, Any] | None,
    fatal: str | None,
) -> dict[str, Any]:
    """The agent's own verdict: each loop's last round (``beats``, ns) and whether it is
    stalled, the errors caught at the loops, a spool that cannot be written, why a loop
    gave up. ``fastbuf status`` exits 3 when unhealthy (as when no agent runs)."""
    now = time.time_ns()
    loops = {
        name: {
            "last_beat_ns": beat,
            "stalled": (now - beat) / 1e9 > STALL_S[name],
            "stall_after_s": STALL_S[name],
        }
        for name, beat in beats.items()
    }
    problems = [f"the {name} loop is stalled" for name, lp in loops.items() if lp["stalled"]]
    if spool_error is not None:
        problems.append(f"the spool cannot be written: {spool_error['message']}")
    if fatal is not None:
        problems.append(fatal)
    return {
        "loops": loops,
        "agent_errors": agent_errors,
        "spool_error": dict(spool_error) if spool_error else None,
        "problems": problems,
        "healthy": not problems,
    }


def judge_health(st: dict[str, Any]) -> bool:
    """A live agent is unhealthy when a loop is stalled (judged now, from the last round
    each reported; a drain loop that stopped also stops writing the status file), when
    its spool cannot be written, or when a loop gave up. Sets ``st["health"]``."""
    agent = st.get("agent") or {}
    health = st.get("health")
    if not agent.get("alive") or not isinstance(health, dict):
        return True
    now = time.time_ns()
    problems = [p for p in health.get("problems", []) if "stalled" not in p]
    loops = health.get("loops") or {}
    updated = int(agent.get("updated_ns") or 0)
    for name, limit in STALL_S.items():
        beat = int((loops.get(name) or {}).get("last_beat_ns") or updated)
        if name == "drain":
            beat = max(beat, updated)
        idle_s = (now - beat) / 1e9
        stalled = idle_s > limit
        loops.setdefault(name, {})["stalled"] = stalled
        if stalled:
            problems.append(f"the {name} loop is stalled: no round for {idle_s:.0f} s")
    health["problems"] = problems
    health["healthy"] = not problems
    return not problems


def producers_from_ring(ring_stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Without an agent's status: each lane owner's own drop totals, from the ring."""
    by_pid: dict[int, dict[str, Any]] = {}
    for lane in ring_stats.get("lanes", []):
        pid = lane.get("owner_pid")
        if not pid:
            continue
        entry = by_pid.setdefault(
            pid, {"pid": pid, "service": None, "worker_id": None, "alive": False, "lanes": 0}
        )
        entry["lanes"] += 1
        entry["alive"] = entry["alive"] or bool(lane.get("alive"))
        for reason in DROP_REASONS:
            key = f"dropped_{reason}"
            entry[key] = max(entry.get(key, 0), int(lane.get(f"owner_{key}", 0)))
    for entry in by_pid.values():
        entry["dropped"] = sum(entry[f"dropped_{r}"] for r in DROP_REASONS)
    return sorted(by_pid.values(), key=lambda e: (-e["dropped"], e["pid"]))


class Producers:
    """Who writes into the ring and what each process dropped (its own totals, which it
    publishes into its lane), kept after the process is gone."""

    def __init__(self) -> None:
        self.by_pid: dict[int, dict[str, Any]] = {}
        self._resources: dict[bytes, Resource] = {}

    def update(
        self, ring_stats: dict[str, Any], lane_meta: dict[int, bytes]
    ) -> list[dict[str, Any]]:
        """Fold in the ring's lanes (``lane_meta``: lane -> the resource blob last read
        there, which names the service and worker); returns the table, processes with
        drops first."""
        for lane in ring_stats.get("lanes", []):
            pid = lane.get("owner_pid")
            if not pid:
                continue
            entry = self.by_pid.get(pid)
            if entry is None:
                entry = {"pid": pid, "service": None, "worker_id": None, "lanes": 0}
                entry.update({f"dropped_{r}": 0 for r in DROP_REASONS})
                self.by_pid[pid] = entry
            meta = lane_meta.get(lane["lane"])
            if meta is not None and entry["service"] is None:
                attrs = resource_of(meta, self._resources).attributes
                entry["service"] = attrs.get("service.name")
                entry["worker_id"] = attrs.get("emp.worker_id")
            for reason in DROP_REASONS:
                key = f"dropped_{reason}"
                entry[key] = max(entry[key], int(lane.get(f"owner_{key}", 0)))
        live = {lane.get("owner_pid") for lane in ring_stats.get("lanes", [])}
        for pid, entry in self.by_pid.items():
            entry["alive"] = pid in live and any(
                ln.get("alive") for ln in ring_stats.get("lanes", []) if ln.get("owner_pid") == pid
            )
            entry["lanes"] = sum(
                1 for ln in ring_stats.get("lanes", []) if ln.get("owner_pid") == pid
            )
            entry["dropped"] = sum(entry[f"dropped_{r}"] for r in DROP_REASONS)
        if len(self.by_pid) > MAX_PRODUCERS_SHOWN:
            # Forget gone processes that dropped nothing first, then the oldest.
            keep = sorted(
                self.by_pid.values(), key=lambda e: e["alive"] or e["dropped"] > 0, reverse=True
            )[:MAX_PRODUCERS_SHOWN]
            self.by_pid = {e["pid"]: e for e in keep}
        return sorted(self.by_pid.values(), key=lambda e: (-e["dropped"], e["pid"]))


def shown_url(url: object) -> str | None:
    """An endpoint as ``fastbuf status`` shows it: scheme, host, port and path only, so no
    user info, query string or fragment (where credentials may hide), whatever the file
    holds. None for no endpoint; ``(unreadable)`` for what is not a URL."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        return "(unreadable)"
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(unreadable)"
    if parts.scheme not in ("http", "https") or not host:
        return "(unreadable)"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    # One plain line, whatever the file holds: no escape sequence reaches the terminal.
    return "".join(c if c.isprintable() else "?" for c in f"{parts.scheme}://{netloc}{parts.path}")


def shown_endpoints(st: dict[str, Any]) -> dict[str, str | None]:
    """Each signal's endpoint from the agent's configuration (``shown_url``); empty when
    the status holds no configuration."""
    config = (st.get("agent") or {}).get("config") or {}
    endpoints = config.get("endpoints")
    if not isinstance(endpoints, dict):
        return {}
    return {str(signal): shown_url(url) for signal, url in endpoints.items()}


def drop_totals(st: dict[str, Any]) -> dict[str, int]:
    """Records lost before delivery: dropped by producers (by reason: ring full, no free
    lane, too large), from the ring when it is there, else the producers table; and
    ``evicted`` from a full spool."""
    ring = st.get("ring") or {}
    producers = st.get("producers") or []
    totals: dict[str, int] = {}
    for reason in DROP_REASONS:
        key = f"dropped_{reason}"
        if ring:
            totals[reason] = int(ring.get(key) or 0)
        else:
            totals[reason] = sum(int(p.get(key) or 0) for p in producers)
    dropped = sum(totals.values())
    evicted = int((st.get("spool") or {}).get("evicted_records") or 0)
    return {"records": dropped, **totals, "evicted": evicted}
