"""Soak: one worker emits numbered log records at a steady rate for a bounded time while a
real agent exports them to a real OTLP receiver on 127.0.0.1, and at random (seeded)
moments the agent is SIGKILLed and restarted, the receiver goes down and comes back or
answers 503 for a while, a committed spool file is damaged, and the spool's disk fills up.
At the end every record the worker emitted has arrived at least once, except those in
the spool files that were damaged (quarantined), which are counted exactly.

The long soak (``EMP_FASTBUF_SOAK_S`` seconds, default 60; every fault) runs under
``make stress`` (``-m stress``) or when ``EMP_FASTBUF_SOAK_S`` is set;
``EMP_FASTBUF_SOAK_SEED`` replays a schedule, ``EMP_FASTBUF_SOAK_RATE`` sets the rate
(records/s, default 20000), ``EMP_FASTBUF_SOAK_FAULTS`` picks the faults (comma-separated,
of kill, outage, 503, damage, disk_full). The short soak (10 s, no disk-full) is part of
``make test``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.agent.spool import Spool
from emp_fastbuf.records import reference
from emp_fastbuf.testing.receiver import OTLPReceiver, Response

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux processes and mounts")

SOAK_ENV = "EMP_FASTBUF_SOAK_S"
ALL_FAULTS = ("kill", "outage", "503", "damage", "disk_full")
SPOOL_NAME = re.compile(r"^\d{12}-\d{19}\.spool$")
RECORD_COUNT_AT = 24  # docs/spool-format.md: the header's record_count (u64)
FRAME_AT = 56  # docs/spool-format.md: where the compressed frame starts
TMPFS_BYTES = 96 << 20

WORKER = r"""
import json, os, sys, time
import emp_fastbuf as fastbuf
ring, rate, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
# Waits (GIL released) instead of dropping while the agent is down: a drop would be a
# record the soak cannot account for.
fastbuf.configure(service="soak", machine_id="m-soak", worker_id="w-soak", ring=ring,
                  agent="external", on_full="block:5000")
seq = 0
start = time.monotonic()
while not os.path.exists(stop):
    due = int((time.monotonic() - start) * rate)
    while seq < due:
        fastbuf.log.info("soak", seq=seq)
        seq += 1
    time.sleep(0.002)
fastbuf.flush(timeout=60)
print(json.dumps({"emitted": seq, "dropped": fastbuf.stats()["dropped"]}), flush=True)
"""


def _log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Received:
    """Which seq numbers arrived, taken out of the receiver as it goes so that its memory
    stays bounded over a long soak."""

    def __init__(self, rx: OTLPReceiver) -> None:
        self.rx = rx
        self.seen = bytearray()
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-collector", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Received:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.collect()

    def collect(self) -> None:
        rx = self.rx
        with rx._lock:
            requests, accepted = list(rx.requests), list(rx._accepted)
            rx.requests.clear()
            rx._accepted.clear()
            rx.attempts.clear()
        with self._lock:
            for (path, _headers, request), ok in zip(requests, accepted, strict=True):
                if path != "/v1/logs" or not ok:
                    continue
                for rl in request.resource_logs:  # type: ignore[attr-defined]
                    for sl in rl.scope_logs:
                        for rec in sl.log_records:
                            for kv in rec.attributes:
                                if kv.key == "seq":
                                    self._mark(kv.value.int_value)
                                    break

    def _mark(self, seq: int) -> None:
        if seq >= len(self.seen):
            self.seen.extend(bytes(seq + 1 - len(self.seen) + 65536))
        self.seen[seq] = 1
        self.total += 1

    def missing(self, emitted: int) -> set[int]:
        with self._lock:
            seen = self.seen
            if len(seen) >= emitted and seen.find(0, 0, emitted) == -1:
                return set()
            return {i for i in range(emitted) if i >= len(seen) or not seen[i]}


class Mount:
    """A small tmpfs for the agent's home, in a private mount namespace held by a
    sleeping process; agents enter it with nsenter, the test reaches it through
    ``/proc/<holder>/root``. None where the machine does not allow it."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> bool:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            return False
        self.target.mkdir(mode=0o700)
        script = (
            'mount -t tmpfs -o "size=$2,mode=700" tmpfs "$1" && echo mounted && exec sleep 100000'
        )
        unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        self.proc = subprocess.Popen(
            [*unshare, str(self.target), str(TMPFS_BYTES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "mounted":
            self.stop()
            return False
        return True

    def view(self) -> Path:
        """The mount as this process sees it."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root{self.target}")

    def prefix(self) -> list[str]:
        assert self.proc is not None
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@dataclass
class Soak:
    ring: str
    home: Path  # the agent's home as the agent sees it
    view: Path  # the same directory as this process sees it
    rx: OTLPReceiver
    rng: random.Random
    prefix: list[str] = field(default_factory=list)  # runs the agent in the mount
    agent: subprocess.Popen[bytes] | None = None
    agent_log: IO[bytes] | None = None
    agent_starts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    # damaged spool file name -> (its header's record count, the worker seqs in it)
    damaged: dict[str, tuple[int, set[int]]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)

    # ---- the agent ---------------------------------------------------------------------

    def start_agent(self) -> None:
        self.close_log()
        self.agent_starts += 1
        path = self.view / f"agent-{self.agent_starts}.log"
        self.agent_log = open(path, "wb")  # noqa: SIM115 - closed in close_log()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASH0_"))}
        env.update(EMP_FASTBUF_HOME=str(self.home), EMP_FASTBUF_AGENT="external")
        agent_argv = [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", self.ring]
        agent_argv += ["--endpoint", self.rx.url]
        self.agent = subprocess.Popen(
            [*self.prefix, *agent_argv],
            stdout=self.agent_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        # Until it holds the ring (its status file exists), or it fails.
        status = self.view / f"status-{self.ring}.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.agent.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(status.read_text())["agent"]["pid"] == self.agent.pid:
                    return
            time.sleep(0.02)

    def close_log(self) -> None:
        if self.agent_log is not None:
            self.agent_log.close()
            self.agent_log = None

    def _agent_output(self, n: int) -> str:
        path = self.view / f"agent-{n}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def check_agent(self) -> None:
        """An agent that exited by itself is a failure, noted; it is restarted so that
        the soak goes on and the count at the end still says what was lost."""
        if self.agent is not None and self.agent.poll() is not None:
            code = self.agent.returncode
            self.unexpected_exits.append(
                f"agent exited by itself with {code}:\n{self._agent_output(self.agent_starts)}"
            )
            _log(f"agent exited by itself ({code}); restarting it")
            self.start_agent()

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.check_agent()
        self.agent.kill()
        self.agent.wait(60)
        self.agent = None

    def stop_agent(self) -> int:
        assert self.agent is not None
        self.check_agent()
        self.agent.terminate()
        try:
            return self.agent.wait(120)
        finally:
            self.close_log()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_agent()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    # ---- faults --------------------------------------------------------------------------

    def committed_spool_files(self) -> list[Path]:
        spool = self.view / "spool"
        with contextlib.suppress(FileNotFoundError):
            return sorted(p for p in spool.iterdir() if SPOOL_NAME.match(p.name))
        return []

    def fault_kill(self, scale: float) -> None:
        self.kill_agent()
        self.sleep(self.rng.uniform(0.0, 1.0) * scale)
        self.start_agent()

    def fault_outage(self, scale: float) -> None:
        self.rx.down()
        self.sleep(self.rng.uniform(1.0, 4.0) * scale)
        self.rx.up()

    def fault_503(self, scale: float) -> None:
        self.rx.default = Response(503)
        self.sleep(self.rng.uniform(1.0, 3.0) * scale)
        self.rx.default = Response()

    def fault_damage(self, scale: float) -> None:
        # Files pile up while the receiver is down; the agent is killed so that nothing
        # reads or deletes the file while it is damaged.
        self.rx.down()
        deadline = time.monotonic() + 20
        while len(self.committed_spool_files()) < 2 and time.monotonic() < deadline:
            self.sleep(0.1)
        self.kill_agent()
        files = [p for p in self.committed_spool_files() if p.name not in self.damaged]
        if files:
            victim = self.rng.choice(files)
            data = bytearray(victim.read_bytes())
            (header_count,) = struct.unpack_from("<Q", data, RECORD_COUNT_AT)
            self.damaged[victim.name] = (header_count, _worker_seqs(victim, bytes(data)))
            at = FRAME_AT + self.rng.randrange(len(data) - FRAME_AT)
            data[at] ^= 0xFF
            victim.write_bytes(bytes(data))
            _log(f"damaged {victim.name} ({header_count} records) at byte {at}")
        self.start_agent()
        self.sleep(self.rng.uniform(0.5, 1.5) * scale)
        self.rx.up()

    def fault_disk_full(self, scale: float) -> None:
        ballast = self.view / "ballast"
        chunk = b"\0" * (1 << 20)
        with open(ballast, "wb") as f:
            try:
                while True:
                    f.write(chunk)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        self.sleep(self.rng.uniform(1.0, 3.0) * scale)
        ballast.unlink()


def _worker_seqs(path: Path, data: bytes) -> set[int]:
    """The worker's seq numbers in a spool file, read with the spool's own reader from a
    copy (the agent's own metric records in it are not the worker's)."""
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))  # its own quarantine, not the agent's
    try:
        (scratch / "spool").mkdir(mode=0o700)
        (scratch / "spool" / path.name).write_bytes(data)
        chunks = Spool(scratch / "spool").read(path.name[: -len(".spool")])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seqs: set[int] = set()
    for chunk in chunks:
        for raw in chunk.records:
            seq = reference.decode_record(raw).attributes.get("seq")
            if isinstance(seq, int):
                seqs.add(seq)
    return seqs


@contextlib.contextmanager
def _soak_place(tmp_path: Path, disk_full: bool) -> Iterator[tuple[Path, Path, list[str]]]:
    """(home as the agent sees it, home as this process sees it, the command prefix that
    runs the agent there)."""
    if disk_full:
        mount = Mount(tmp_path / "mnt")
        if mount.start():
            try:
                home = mount.target / "home"
                (mount.view() / "home").mkdir(mode=0o700)
                yield home, mount.view() / "home", mount.prefix()
            finally:
                mount.stop()
            return
        _log("cannot mount a tmpfs in a private mount namespace here: no disk-full fault")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    yield home, home, []


def run_soak(
    tmp_path: Path,
    ring_name: str,
    *,
    duration: float,
    rate: float,
    faults: tuple[str, ...],
    seed: int,
    scale: float = 1.0,
) -> None:
    _log(f"seed {seed} (EMP_FASTBUF_SOAK_SEED={seed} replays it): {duration:.0f} s, {rate:.0f}/s")
    rng = random.Random(seed)
    fastbuf.Ring.create(ring_name, 64 << 20).close()
    stop_file = tmp_path / "stop-worker"
    with (
        _soak_place(tmp_path, "disk_full" in faults) as (home, view, prefix),
        OTLPReceiver() as rx,
        Received(rx) as received,
    ):
        enabled = [f for f in faults if f != "disk_full" or prefix]
        soak = Soak(ring_name, home, view, rx, rng, prefix)
        worker: subprocess.Popen[str] | None = None
        try:
            soak.start_agent()
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, ring_name, str(rate), str(stop_file)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
            )
            # Every fault at least once, in a random order, then random ones until the
            # time is up.
            plan = rng.sample(enabled, len(enabled))
            end = time.monotonic() + duration
            while time.monotonic() < end:
                soak.sleep(rng.uniform(0.2, 1.5) * scale)
                fault = plan.pop(0) if plan else rng.choice(enabled)
                _log(f"fault: {fault}")
                soak.faults.append(fault)
                action: Callable[[float], None] = getattr(soak, f"fault_{fault}")
                action(scale)
            stop_file.touch()
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0, out
            report = json.loads(out.strip().splitlines()[-1])
            emitted = report["emitted"]
            assert report["dropped"] == 0, f"seed {seed}: the worker dropped records: {report}"
            rx.default = Response()
            rx.up()
            lost = set().union(*(seqs for _n, seqs in soak.damaged.values()))
            # Bounded by the exporter's backoff and circuit breaker after the last fault.
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                soak.check_agent()
                received.collect()
                if received.missing(emitted) <= lost:
                    break
                time.sleep(0.5)
            code = soak.stop_agent()
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait()
            if soak.agent is not None and soak.agent.poll() is None:
                soak.agent.kill()
                soak.agent.wait()
            soak.close_log()
        received.collect()
        missing = received.missing(emitted)
        quarantine = view / "quarantine"
        quarantined = sorted(p.name for p in quarantine.iterdir()) if quarantine.is_dir() else []
        header_counts = {
            name: struct.unpack_from("<Q", (quarantine / name).read_bytes(), RECORD_COUNT_AT)[0]
            for name in quarantined
        }
        _log(
            f"faults {soak.faults}; emitted {emitted}, received {received.total} "
            f"({received.total - (emitted - len(missing))} duplicates), missing {len(missing)}, "
            f"quarantined {header_counts}"
        )
    context = f"seed {seed}, faults {soak.faults}"
    assert not soak.unexpected_exits, f"{context}:\n" + "\n".join(soak.unexpected_exits)
    assert code == 0, context
    # Each damaged file, and no other, was quarantined; its header still gives its count.
    assert quarantined == sorted(soak.damaged), context
    for name, (count, _seqs) in soak.damaged.items():
        assert header_counts[name] == count, context
    # Every record arrived, except exactly the ones in the quarantined files that did not
    # arrive another way as well (a record read twice, around a SIGKILL, is in two files).
    gone = sorted(missing - lost)
    assert not gone, f"{context}: {len(gone)} records lost, e.g. {gone[:10]}"
    assert emitted >= rate * duration * 0.5, context


def _long_soak_selected(config: pytest.Config) -> bool:
    return SOAK_ENV in os.environ or "stress" in str(config.getoption("markexpr") or "")


@pytest.mark.stress
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_soak_every_fault(tmp_path: Path, ring_name: str, request: pytest.FixtureRequest) -> None:
    if not _long_soak_selected(request.config):
        pytest.skip(f"the long soak runs under `make stress` (-m stress) or with {SOAK_ENV} set")
    faults = tuple(
        f.strip()
        for f in os.environ.get("EMP_FASTBUF_SOAK_FAULTS", ",".join(ALL_FAULTS)).split(",")
    )
    assert set(faults) <= set(ALL_FAULTS), faults
    run_soak(
        tmp_path,
        ring_name,
        duration=float(os.environ.get(SOAK_ENV, "60")),
        rate=float(os.environ.get("EMP_FASTBUF_SOAK_RATE", "20000")),
        faults=faults,
        seed=int(os.environ.get("EMP_FASTBUF_SOAK_SEED") or random.randrange(1 << 32)),
    )


@pytest.mark.slow
def test_short_soak(tmp_path: Path, ring_name: str) -> None:
    run_soak(
        tmp_path,
        ring_name,
        duration=10.0,
        rate=5000.0,
        faults=("kill", "outage", "503", "damage"),
        seed=int(os.environ.get("EMP_FASTBUF_SOAK_SEED") or random.randrange(1 << 32)),
        scale=0.5,
    )
