"""The agent and the workers' fatal-error files (``records.fatal``): a real agent picks up
the dump of a process that is gone and delivers its ERROR record to the OTLP receiver and
the store; whatever else is in ``<home>/crashes`` it treats as untrusted and leaves
alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emp_fastbuf import paths
from emp_fastbuf.records import fatal
from emp_fastbuf.ring import process_start
from emp_fastbuf.store import Store, StoredRecord, StoreError
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc

SECRET = "s3cr3t-token-in-a-dump"
DUMP = (
    "Fatal Python error: Bus error\n\n"
    'Current thread 0x00007f00 (most recent call first):\n  File "train.py", line 7 in step\n'
)


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_dump(
    home: Path, ring: str, dump: bytes, *, pid: int | None = None, start: int = 1, job: str = "j1"
) -> Path:
    """A fatal-error file as a worker leaves it; by default of a process that is gone
    (a start time no live process has)."""
    pid = gone_pid() if pid is None else pid
    directory = home / paths.CRASH_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    header = fatal.Header(
        pid=pid,
        start=start,
        ring=ring,
        resource={
            "service.name": "gpu-svc",
            "emp.machine_id": "m-7",
            "emp.worker_id": "w-7",
            "process.pid": pid,
            "custom.flag": True,
        },
        job_id=job,
    )
    path = directory / fatal.file_name(pid, start, os.urandom(4).hex())
    path.write_bytes(fatal.encode_header(header) + dump)
    return path


def status(home: Path, ring: str) -> dict[str, Any]:
    text = paths.status_path(home, ring).read_text()
    result: dict[str, Any] = json.loads(text)
    return result


def stored_errors(home: Path) -> list[StoredRecord]:
    path = home / paths.STORE_FILE
    if not path.exists():
        return []
    try:
        with Store(path, readonly=True) as store:
            return [r for r in store.logs() if r.severity_number == 17]
    except StoreError:
        return []  # the agent is still creating it


def wait(predicate: Callable[[], bool], agent: AgentProc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, agent.output()[-3000:]
        time.sleep(0.1)


def test_a_dump_reaches_the_receiver_and_the_store_and_its_file_goes(
    env_clean: Path, agent_ring: str, receiver: OTLPReceiver
) -> None:
    # Bad UTF-8 and far more than the cap: read up to the cap, replaced, clipped.
    dump = DUMP.encode() + b"\xff\xfe bad bytes\n" + b"  frame\n" * 300_000
    path = write_dump(env_clean, agent_ring, dump, job="job-bus")
    agent = AgentProc(agent_ring, env_clean, "--endpoint", receiver.url, "--local-copy")
    try:
        assert receiver.wait_for(lambda r: len(r.logs()) == 1, 60), agent.output()[-3000:]
        wait(lambda: len(stored_errors(env_clean)) == 1, agent)
    finally:
        assert agent.stop() == 0
    assert not path.exists()
    ((res, rec),) = receiver.logs()
    assert res["service.name"] == "gpu-svc" and res["emp.worker_id"] == "w-7"
    assert res["custom.flag"] is True
    a = attrs_dict(rec.attributes)
    assert a["emp.job_id"] == "job-bus"
    assert a["exception.type"] == "Bus error"
    assert rec.body.string_value == a["exception.message"] == "Fatal Python error: Bus error"
    assert rec.severity_number == 17 and rec.severity_text == "ERROR"
    (err,) = stored_errors(env_clean)
    stack = str(err.attributes["exception.stacktrace"])
    assert stack == a["exception.stacktrace"]
    assert len(stack) == fatal.STACKTRACE_MAX_CHARS
    assert stack.startswith(DUMP) and "\ufffd\ufffd bad bytes" in stack
    assert (err.job_id, err.service, err.machine_id) == ("job-bus", "gpu-svc", "m-7")
    assert status(env_clean, agent_ring)["fatal_files"] == {"recorded": 1, "unreadable": 0}


def test_what_the_agent_cannot_use_or_must_not_take_is_left_alone(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    directory = env_clean / paths.CRASH_DIR
    # Not this agent's: the dump of another ring's worker, and one of a live process.
    other_ring = write_dump(env_clean, "another-ring", DUMP.encode())
    me = os.getpid()
    alive = write_dump(env_clean, agent_ring, DUMP.encode(), pid=me, start=process_start(me))
    # Untrusted: a header this version does not write, and a link to a dump elsewhere.
    bad = directory / fatal.file_name(gone_pid(), 1, "bad")
    bad.write_bytes(b"not a header " + SECRET.encode() + b"\n" * fatal.HEADER_SIZE)
    target = write_dump(tmp_path, agent_ring, DUMP.encode())
    link = directory / fatal.file_name(gone_pid(), 1, "11")
    link.symlink_to(target)
    # The empty file of a gone process is removed, whatever its ring; other names are
    # not the agent's business.
    empty = write_dump(env_clean, "another-ring", b"")
    foreign = directory / "notes.txt"
    foreign.write_text("kept")
    agent = AgentProc(agent_ring, env_clean)
    try:
        wait(lambda: not empty.exists(), agent)
        # A later scan: a dump written now is recorded, and nothing is logged twice.
        later = write_dump(env_clean, agent_ring, DUMP.encode(), job="job-later")
        wait(lambda: len(stored_errors(env_clean)) == 1, agent)
        assert not later.exists()
        wait(lambda: status(env_clean, agent_ring)["fatal_files"]["recorded"] == 1, agent)
    finally:
        assert agent.stop() == 0
    (err,) = stored_errors(env_clean)
    assert err.job_id == "job-later"
    for kept in (other_ring, alive, bad, link, foreign):
        assert kept.exists() or kept.is_symlink()
    assert target.exists()
    assert status(env_clean, agent_ring)["fatal_files"] == {"recorded": 1, "unreadable": 2}
    log = agent.output()
    assert log.count(f"{bad.name} left alone") == 1
    assert log.count(f"{link.name} left alone") == 1
    assert SECRET not in log
