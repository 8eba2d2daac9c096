"""Paced worker processes and what reached the store from them (the volume, capacity and
supervision tests), and whether this machine lets a test mount a small tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

# A worker: `rate` records/s for `seconds` (rate 0: as fast as the API allows), then
# flush; prints its stats as JSON. The records: a log with 4 attributes in a job context.
WORKER = r"""
import json, sys, time
import emp_fastbuf as fastbuf
tag, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
total = int(sys.argv[4]) if len(sys.argv) > 4 else int(rate * seconds)
log = fastbuf.log
i = 0
with fastbuf.context(job_id="job-" + tag):
    start = time.perf_counter()
    while i < total:
        due = total if rate == 0 else min(total, int((time.perf_counter() - start) * rate) + 64)
        while i < due:
            log.info("step", seq=i, tag=tag, loss=0.25, ok=True)
            i += 1
        if i < total:
            time.sleep(0.0002)
    elapsed = time.perf_counter() - start
flushed = fastbuf.flush(timeout=120)
print(json.dumps({"flushed": flushed, "offered_per_s": total / elapsed, "stats": fastbuf.stats()}))
"""


def can_mount_tmpfs() -> bool:
    """Whether this machine lets a test mount a tmpfs in a mount namespace of its own (a
    small /dev/shm or spool disk); root with ``unshare``."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def worker_env(home: Path, ring: str, **extra: str) -> dict[str, str]:
    """The environment of a process on ``ring`` with ``home``, without the caller's OTLP,
    Dash0 and fastbuf variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASH0_", "EMP_"))}
    env.update(EMP_FASTBUF_HOME=str(home), EMP_FASTBUF_RING=ring, EMP_MACHINE_ID="m-vol")
    env.update(extra)
    return env


def start_worker(
    home: Path,
    ring: str,
    tag: str,
    rate: float,
    seconds: float,
    total: int | None = None,
    **env: str,
) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", WORKER, tag, str(rate), str(seconds)]
    if total is not None:
        args.append(str(total))
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(home, ring, **env),
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    result["stderr"] = err
    return result


def store_seqs(home: Path, tag: str) -> Counter[int]:
    db = sqlite3.connect(f"file:{home / 'store.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT json_extract(attributes, '$.seq') FROM records WHERE job_id = ?",
            (f"job-{tag}",),
        ).fetchall()
    finally:
        db.close()
    return Counter(int(r[0]) for r in rows)


def assert_all_once_or_more(seqs: Counter[int], total: int) -> None:
    missing = [i for i in range(total) if seqs[i] == 0]
    assert not missing, f"{len(missing)} of {total} missing, first {missing[:5]}"
    assert set(seqs) == set(range(total))
