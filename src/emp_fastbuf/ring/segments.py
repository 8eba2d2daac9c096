"""Find ring segments left behind by dead owners, and remove the ones that hold nothing.

A segment outlives its processes on purpose (a dead worker's records must still be
drained), so nothing unlinks it automatically at exit. The agent calls ``sweep_stale``
when it starts: a segment whose creator, producers and consumer are all dead, which no
live process has open or mapped (a worker may have attached without writing yet) and
which holds no unacknowledged record is removed; one that still holds records, or that
cannot be read, is reported and left alone. Who has a segment open is asked of the kernel
(a file lease is granted only on a file nobody else holds) or, where leases cannot be
taken, read from ``/proc/*/maps``; where neither can tell, nothing is removed, only
reported.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from emp_fastbuf.errors import RingError
from emp_fastbuf.ring._ring import Ring, process_alive

log = logging.getLogger("emp_fastbuf")

SHM_DIR = Path("/dev/shm")
PROC_DIR = Path("/proc")
PREFIX = "emp-fastbuf-"
# A segment without its magic this young may be one that its creator is still writing.
CREATION_GRACE_S = 5.0
_H_CREATOR_PID = 60  # docs/ring-layout.md: the header's creator pid (u32)


@dataclass
class SegmentInfo:
    name: str
    size: int
    creator_pid: int | None = None
    live_processes: int = 0  # creator, producers and consumer still alive
    in_flight: int = 0
    error: str | None = None
    inode: int = 0
    # Whether a live process has it mapped; None where that cannot be told.
    mapped: bool | None = None

    @property
    def stale(self) -> bool:
        """Nobody alive uses it and it holds nothing: safe to remove."""
        return (
            self.error is None
            and self.live_processes == 0
            and self.in_flight == 0
            and self.mapped is False
        )


def _open_elsewhere(path: Path, inode: int) -> bool | None:
    """Whether any other process has the segment open or mapped, asked of the kernel: a
    write lease is granted only on a file that nobody else holds. None where leases
    cannot be taken (another system, leases turned off)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except BlockingIOError:
        return True  # another process holds a lease on it: it is looking at it right now
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != inode:
            return True  # replaced since it was listed: leave it for the next look
        setsig = getattr(fcntl, "F_SETSIG", None)
        setlease = getattr(fcntl, "F_SETLEASE", None)
        if setsig is None or setlease is None:
            return None
        # A process opening the segment while the lease is held breaks it, which signals
        # the holder: SIGURG, ignored by default, instead of SIGIO, which would kill it.
        fcntl.fcntl(fd, setsig, signal.SIGURG)
        try:
            fcntl.fcntl(fd, setlease, fcntl.F_WRLCK)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.fcntl(fd, setlease, fcntl.F_UNLCK)
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


def _mapped_inodes(names: set[str]) -> dict[str, set[int]] | None:
    """For each segment name, the inodes of ``/dev/shm/<name>`` that this user's live
    processes have mapped (read from ``/proc/<pid>/maps``). None where the mappings cannot
    all be read: then nobody can tell that a segment is unused."""
    uid = os.geteuid()
    found: dict[str, set[int]] = {name: set() for name in names}
    try:
        entries = list(os.scandir(PROC_DIR))
    except OSError:
        return None
    seen_self = False
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid and uid != 0:
                continue  # another user's process cannot map an owner-only segment
            with open(os.path.join(entry.path, "maps"), "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError:
            return None
        if entry.name == str(os.getpid()):
            seen_self = True
        for line in data.splitlines():
            # address perms offset dev inode path
            fields = line.split(None, 5)
            if len(fields) < 6 or not fields[5].startswith(b"/dev/shm/"):
                continue
            name = fields[5][len(b"/dev/shm/") :].decode(errors="replace")
            if name in found:
                try:
                    found[name].add(int(fields[4]))
                except ValueError:
                    continue
    return found if seen_self else None


def creation_in_progress(name: str) -> bool:
    """Whether the segment ``name``, which has no valid header yet, may be one that its
    creator is still writing: it is younger than ``CREATION_GRACE_S`` and the creator pid
    in it (written just before the magic) is unset or alive."""
    path = SHM_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        head = os.pread(fd, _H_CREATOR_PID + 4, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if time.time() - st.st_mtime > CREATION_GRACE_S:
        return False
    if len(head) < _H_CREATOR_PID + 4:
        return True  # not even sized yet
    pid = int.from_bytes(head[_H_CREATOR_PID : _H_CREATOR_PID + 4], "little")
    return pid == 0 or process_alive(pid)


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
        info = SegmentInfo(entry.name, st.st_size, inode=st.st_ino)
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
    # Only segments that nothing else keeps alive need the look at who maps them: a
    # worker that attached but has not written yet holds no lane.
    unknown: list[SegmentInfo] = []
    for info in out:
        if info.error is None and info.live_processes == 0:
            info.mapped = _open_elsewhere(SHM_DIR / info.name, info.inode)
            if info.mapped is None:
                unknown.append(info)
    if unknown:
        mapped = _mapped_inodes({info.name for info in unknown})
        for info in unknown:
            info.mapped = None if mapped is None else info.inode in mapped[info.name]
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
        elif info.live_processes == 0 and info.in_flight == 0 and info.mapped is None:
            log.warning(
                "ring segment %r looks unused (owner pid %s gone, empty) but was left: the "
                "processes that map it cannot be read here; remove it with "
                "Ring.unlink(%r) once nothing uses it",
                info.name,
                info.creator_pid,
                info.name,
            )
        elif info.live_processes == 0 and info.in_flight > 0:
            log.warning(
                "ring segment %r of dead processes still holds %d unacknowledged records: "
                "run `fastbuf agent --ring %s` to deliver them",
                info.name,
                info.in_flight,
                info.name,
            )
    return found
