"""Find ring segments left behind by dead owners, and remove the ones that hold nothing.

A segment outlives its processes on purpose (a dead worker's records must still be
drained), so nothing unlinks it automatically at exit. The agent calls ``sweep_stale``
when it starts: a segment whose creator, producers and consumer are all dead and which
holds no unacknowledged record is removed; one that still holds records, or that cannot
be read, is reported and left alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from emp_fastbuf._ring import Ring, process_alive
from emp_fastbuf.errors import RingError

log = logging.getLogger("emp_fastbuf")

SHM_DIR = Path("/dev/shm")
PREFIX = "emp-fastbuf-"


@dataclass
class SegmentInfo:
    name: str
    size: int
    creator_pid: int | None = None
    live_processes: int = 0  # creator, producers and consumer still alive
    in_flight: int = 0
    error: str | None = None

    @property
    def stale(self) -> bool:
        """Nobody alive uses it and it holds nothing: safe to remove."""
        return self.error is None and self.live_processes == 0 and self.in_flight == 0


def list_segments(prefix: str = PREFIX) -> list[SegmentInfo]:
    """This user's ring segments whose name starts with ``prefix`` (Linux; elsewhere
    POSIX shared memory cannot be listed and the list is empty)."""
    if not SHM_DIR.is_dir():
        return []
    uid = os.geteuid()
    out: list[SegmentInfo] = []
    for entry in sorted(SHM_DIR.iterdir()):
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if st.st_uid != uid:
            continue
        info = SegmentInfo(entry.name, st.st_size)
        try:
            ring = Ring.open(entry.name)
        except (RingError, OSError, ValueError) as exc:
            info.error = str(exc)
            out.append(info)
            continue
        try:
            stats = ring.stats()
        finally:
            ring.close()
        info.creator_pid = stats["creator_pid"]
        info.in_flight = stats["in_flight"]
        pids = {p["owner_pid"] for p in stats["lanes"] if p["owner_pid"] and p["alive"]}
        if stats["consumer"]["alive"]:
            pids.add(stats["consumer"]["pid"])
        if info.creator_pid and process_alive(info.creator_pid):
            pids.add(info.creator_pid)
        info.live_processes = len(pids)
        out.append(info)
    return out


def sweep_stale(*, dry_run: bool = False, keep: str | None = None) -> list[SegmentInfo]:
    """Remove stale segments (see ``SegmentInfo.stale``) except ``keep``; report the
    others of dead owners. Returns every segment looked at."""
    found = list_segments()
    for info in found:
        if info.name == keep:
            continue
        if info.stale:
            if not dry_run:
                Ring.unlink(info.name)
            log.info(
                "removed stale ring segment %r (owner pid %s gone, empty)",
                info.name,
                info.creator_pid,
            )
        elif info.error is not None:
            log.warning("ring segment %r cannot be used: %s", info.name, info.error)
        elif info.live_processes == 0:
            log.warning(
                "ring segment %r of dead processes still holds %d unacknowledged records: "
                "run `fastbuf agent --ring %s` to deliver them",
                info.name,
                info.in_flight,
                info.name,
            )
    return found
