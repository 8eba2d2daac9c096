"""The agent: drain the ring into the durable spool, then deliver the spool to its sinks
(the OTLP endpoints and/or the embedded store), losing nothing.

Two threads:
- the drain loop (main thread) reads every lane, cuts batches by time, size and lane
  pressure (producers close to dropping cut one at once), writes each batch to the spool
  as one group commit (one fsynced file) and acknowledges it on the ring right after;
  every 2 s it also spools the fatal-error dumps of workers that are gone as their ERROR
  records (``agent.fatal``);
- the delivery loop offers spool files, oldest first, to every sink (``agent.sinks``) that
  still needs them and marks each destination done; the spool deletes a file once every
  destination has it.

SIGTERM or SIGINT: drain what is left, spool it, try to deliver for a bounded time,
exit 0. Whatever is not delivered stays in the spool for the next start.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emp_fastbuf import paths
from emp_fastbuf._version import __version__
from emp_fastbuf.agent import status as status_file
from emp_fastbuf.agent.batch import Batch, resource_of
from emp_fastbuf.agent.config import SPAWNED_IDLE_EXIT_S, AgentConfig, ConfigError
from emp_fastbuf.agent.fatal import FatalFiles
from emp_fastbuf.agent.machine import collect_machine_metrics, machine_ids, machine_resource
from emp_fastbuf.agent.receiver.server import Receivers
from emp_fastbuf.agent.receiver.settings import ReceiverSettings
from emp_fastbuf.agent.sinks import Sink
from emp_fastbuf.agent.spool import CorruptSpoolFile, Spool
from emp_fastbuf.agent.status import DROP_REASONS
from emp_fastbuf.errors import (
    RingBusy,
    RingCorrupt,
    RingError,
    RingNotFound,
    RingVersionError,
)
from emp_fastbuf.records import GAUGE, METRIC, LaneChunk, Record, Resource, reference
from emp_fastbuf.ring import Consumer, Ring, default_ring_name, shm
from emp_fastbuf.ring.segments import CREATION_GRACE_S, creation_in_progress, sweep_stale

log = logging.getLogger("emp_fastbuf.agent")

READ_CHUNK = 8192
STATUS_INTERVAL_S = 1.0
# Consumer.pressure() at which a batch is cut at once: half the lanes producers may chain
# into are taken, or (where a producer cannot chain) its lane is half full.
PRESSURE_CUT = 0.5
PRESSURE_CHECK_S = 0.002
FILE_FAILURES_TO_QUARANTINE = 3  # a spool file that fails delivery this often in a row
LOOP_ERRORS_TO_GIVE_UP = 100  # consecutive unexpected errors: the loop cannot continue
SPOOL_RETRY_MAX_S = 5.0
# How often the drain loop looks for the fatal-error dumps of workers that are gone.
FATAL_SCAN_INTERVAL_S = 2.0
MAX_CACHED_RESOURCES = 4096  # decoded lane resources kept to find the producers' machine ids


@dataclass
class Counters:
    drained_records: int = 0
    drained_bytes: int = 0
    batches: int = 0
    # Records each sink took, by sink name ("export", "store").
    delivered_records: dict[str, int] = field(default_factory=dict)
    corrupt_records: int = 0
    corrupt_spool_files: int = 0
    # Why batches were cut: by time, by size, by lane pressure, at the end.
    cuts: dict[str, int] = field(
        default_factory=lambda: {"time": 0, "size": 0, "pressure": 0, "final": 0}
    )
    started_ns: int = field(default_factory=time.time_ns)

    @property
    def store_records(self) -> int:
        """Records the store ingested (``status --json``: ``store.records``)."""
        return self.delivered_records.get("store", 0)


class Agent:
    """One agent per ring. ``run()`` blocks until stopped (or idle, when spawned)."""

    def __init__(self, config: AgentConfig, ring_name: str, *, spawned: bool = False) -> None:
        self.config = config
        self.ring_name = ring_name
        self.spawned = spawned
        self.home = Path(config.home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.stop_event = threading.Event()
        # Set once the final drain has spooled what was left: the delivery loop must not
        # end before, or that last file would wait for the next agent.
        self.final_drain_done = threading.Event()
        self.stop_requested = False  # set by the signal handler, which takes no lock
        self.counters = Counters()
        # Sinks in delivery order: the store first (local, and it finds the corrupt
        # records of every signal), then the OTLP endpoints. Imported only when used.
        export: Sink | None = None
        store: Sink | None = None
        if config.exporting:
            from emp_fastbuf.agent.sinks.otlp import OTLPSink

            export = OTLPSink(config)
        # A signal with no OTLP endpoint goes to the store, never nowhere.
        if config.stored_signals():
            from emp_fastbuf.agent.sinks.store import StoreSink

            store = StoreSink.for_agent(config)
        self.sinks: list[Sink] = [s for s in (store, export) if s is not None]
        self.spool = Spool(
            self.home / paths.SPOOL_DIR,
            limit_bytes=config.spool_limit_bytes,
            # Named in the order status has always shown: export, metrics, store.
            destinations=tuple(d for s in (export, store) if s is not None for d in s.destinations),
            codec=config.spool_codec,
        )
        stored_in = f" (store: {paths.store_path(self.home)})" if store is not None else ""
        log.info("signals: %s%s", config.routes_text(), stored_in)
        # Sinks that could not take a file in the current delivery round: offered no more.
        self._down: set[str] = set()
        self.machine_id = os.environ.get("EMP_MACHINE_ID") or socket.gethostname()
        self.agent_meta = reference.encode_resource(machine_resource(self.machine_id))
        # Other machine ids the producers declared -> the resource blob of that id.
        self.machine_metas: dict[str, bytes] = {}
        self._lane_resources: dict[bytes, Resource] = {}
        self.ring: Ring | None = None
        self.consumer: Consumer | None = None
        self.delivery_wake = threading.Event()
        self.status_path = paths.status_path(self.home, ring_name)
        self.lane_meta: dict[int, bytes] = {}  # lane -> the resource blob last read there
        self.producers = status_file.Producers()
        # Supervision (docs/architecture.md): each loop's last round, errors caught at the
        # loops, a spool that cannot be written (disk full, read-only), why a loop gave up.
        self.beats = {"drain": time.time_ns(), "delivery": time.time_ns()}
        self.agent_errors = 0
        self._errors_logged: set[str] = set()
        self.file_failures: dict[str, int] = {}
        self.spool_error: dict[str, Any] | None = None
        self.fatal: str | None = None
        self.delivery_thread: threading.Thread | None = None
        self.fatal_files = FatalFiles(self.home / paths.CRASH_DIR, ring_name)
        # The OTLP receivers (agent.receiver): set by run_agent, started once attached.
        self.receiver_settings: ReceiverSettings | None = None
        self.receivers: Receivers | None = None

    # ---- drain ---------------------------------------------------------------------

    def _attach(self) -> bool:
        """Open (or create) the ring and take its consumer role. False when another agent
        holds the role: this one has nothing to do and exits 0."""
        # Agents and workers started together race to create the ring: a segment without
        # its magic yet is one that another process is still writing, so wait for it
        # (briefly) instead of calling a healthy ring corrupt.
        deadline = time.monotonic() + CREATION_GRACE_S
        while self.ring is None:
            try:
                try:
                    self.ring = Ring.open(self.ring_name)
                except RingNotFound:
                    if self.spawned:
                        raise
                    self.ring = Ring.create(self.ring_name, self._create_size(), exist_ok=True)
            except RingVersionError:
                raise
            except RingCorrupt:
                if time.monotonic() >= deadline or not creation_in_progress(self.ring_name):
                    raise
                time.sleep(0.01)
        try:
            self.consumer = self.ring.consumer()
        except RingBusy:
            holder = self.ring.stats()["consumer"]["pid"]
            log.info("another agent (pid %s) holds ring %r; this one exits", holder, self.ring_name)
            self.ring.close()
            self.ring = None
            return False
        return True

    @staticmethod
    def _create_size() -> int:
        """EMP_FASTBUF_RING_SIZE (or the default), made to fit /dev/shm as the API does."""
        size, warning = shm.ring_size_from_env(os.environ)
        if warning is not None:
            log.warning("%s", warning)
        return shm.create_size(size, lambda w: log.warning("%s", w))

    def run(self) -> int:
        if not self._attach():
            return 0
        assert self.consumer is not None
        try:
            sweep_stale(keep=self.ring_name)
        except OSError as exc:  # reporting stale segments must not stop the agent
            log.warning("could not look for stale ring segments: %s", exc)
        log.info(
            "agent %s draining ring %r into %s",
            __version__,
            self.ring_name,
            ", ".join(self.spool.destinations),
        )
        delivery = threading.Thread(target=self._delivery_loop, name="delivery", daemon=True)
        self.delivery_thread = delivery
        delivery.start()
        if self.receiver_settings is not None:
            self.receivers = Receivers(self.receiver_settings, self.spool, self.delivery_wake)
        try:
            self._drain_loop()
        finally:
            if self.receivers is not None:
                self.receivers.close()  # what it answered 200 is in the spool by now
            # Final drain: everything in the ring goes to the spool before we exit.
            try:
                self._drain_once(final=True)
                self._spool_fatal_dumps()
            except Exception as exc:  # e.g. the disk is full: the ring keeps the records
                self._loop_error("drain", exc)
            self.final_drain_done.set()
            self.stop_event.set()
            self.delivery_wake.set()
            delivery.join(timeout=self.config.shutdown_timeout_s + 5)
            self._write_status()
            self.consumer.close()
            if self.ring is not None:
                self.ring.close()
            for sink in self.sinks:
                sink.close()
        if self.fatal is not None:
            log.error("agent stops: %s; what it acknowledged is in the spool", self.fatal)
            return 1
        return 0

    def _loop_error(self, loop: str, exc: BaseException) -> None:
        """An unexpected error caught at a loop: counted, logged with its traceback the
        first time it is seen (then at DEBUG), and the loop goes on."""
        self.agent_errors += 1
        key = f"{loop}:{type(exc).__name__}:{exc}"[:300]
        if key not in self._errors_logged and len(self._errors_logged) < 256:
            self._errors_logged.add(key)
            log.error("%s loop: unexpected error, carrying on: %s", loop, exc, exc_info=exc)
        else:
            log.debug("%s loop: %s (again)", loop, exc)

    def _drain_loop(self) -> None:
        assert self.consumer is not None
        pending: list[LaneChunk] = []
        pending_bytes = 0
        batch_started = time.monotonic()
        last_status = 0.0
        last_machine = 0.0
        last_fatal_scan = -FATAL_SCAN_INTERVAL_S
        last_pressure = 0.0
        idle_since: float | None = None
        errors_in_a_row = 0
        spool_retry_at = 0.0
        spool_backoff = 0.2
        while not self.stop_event.is_set():
            if self.stop_requested:
                log.info("signal received: draining and stopping")
                self.stop_event.set()
                break
            self.beats["drain"] = time.time_ns()
            if self.delivery_thread is not None and not self.delivery_thread.is_alive():
                self.fatal = "the delivery loop ended unexpectedly"
                break
            if self.spool_error is not None:
                # The last commit failed (disk full, read-only): the batch is still in the
                # ring, unacknowledged. Read nothing more until it is durable.
                now = time.monotonic()
                if now < spool_retry_at:
                    self.stop_event.wait(min(0.05, spool_retry_at - now))
                    if now - last_status >= STATUS_INTERVAL_S:
                        last_status = now
                        self._write_status()
                    continue
                try:
                    self._spool_and_ack(pending)
                except OSError as exc:
                    spool_backoff = min(SPOOL_RETRY_MAX_S, spool_backoff * 2)
                    spool_retry_at = time.monotonic() + spool_backoff
                    self.spool_error["attempts"] += 1
                    self.spool_error["message"] = str(exc)
                    continue
                log.warning(
                    "spool is writable again after %d attempts: delivery resumes",
                    self.spool_error["attempts"],
                )
                self.spool_error = None
                spool_backoff = 0.2
                pending, pending_bytes = [], 0
                batch_started = time.monotonic()
                continue
            try:
                got = self._read_step(pending)
            except Exception as exc:
                errors_in_a_row += 1
                self._loop_error("drain", exc)
                if errors_in_a_row >= LOOP_ERRORS_TO_GIVE_UP:
                    self.fatal = f"the drain loop failed {errors_in_a_row} times in a row: {exc}"
                    break
                self.stop_event.wait(min(1.0, 0.01 * errors_in_a_row))
                continue
            errors_in_a_row = 0
            for _lane, _meta, recs in got:
                pending_bytes += sum(len(r) for r in recs)
            try:
                now = time.monotonic()
                if now - last_machine >= self.config.metrics_interval_s:
                    last_machine = now
                    pending.extend(self._own_metrics())
                if now - last_fatal_scan >= FATAL_SCAN_INTERVAL_S:
                    last_fatal_scan = now
                    self._spool_fatal_dumps()
                cut = None
                if pending:
                    if pending_bytes >= self.config.batch_max_bytes:
                        cut = "size"
                    elif now - batch_started >= self.config.batch_interval_s:
                        cut = "time"
                    elif now - last_pressure >= PRESSURE_CHECK_S:
                        last_pressure = now
                        if self.consumer.pressure() >= PRESSURE_CUT:
                            cut = "pressure"
                if cut is not None:
                    self.counters.cuts[cut] += 1
                    try:
                        self._spool_and_ack(pending)
                    except OSError as exc:
                        # Disk full or read-only: stay up, keep the records in the ring (not
                        # acknowledged), say so, and retry until there is room again.
                        self.spool_error = {
                            "message": str(exc),
                            "since_ns": time.time_ns(),
                            "attempts": 1,
                        }
                        log.error(
                            "cannot write the spool (%s): records stay in the ring, "
                            "unacknowledged; retrying until it is writable",
                            exc,
                        )
                        spool_retry_at = time.monotonic() + spool_backoff
                        continue
                    pending, pending_bytes = [], 0
                    batch_started = now
                elif not pending:
                    batch_started = now
                if now - last_status >= STATUS_INTERVAL_S:
                    last_status = now
                    self._write_status()
                    if self.config.idle_exit_s is not None:
                        if not self._idle():
                            idle_since = None
                        elif idle_since is None:
                            idle_since = now
                        if self._idle_exit_due(now, idle_since):
                            log.info("no producer and nothing left to deliver: exiting")
                            break
            except Exception as exc:  # caught at the loop: counted, logged once
                self._loop_error("drain", exc)
                self.stop_event.wait(0.05)
                continue
            if not got:
                self.stop_event.wait(0.005)
        if pending:
            self.counters.cuts["final"] += 1
            try:
                self._spool_and_ack(pending)
            except OSError as exc:
                log.error("cannot write the spool (%s): the ring keeps the records", exc)

    def _read_step(self, pending: list[LaneChunk]) -> list[tuple[int, bytes, list[bytes]]]:
        """One read of every lane into ``pending``."""
        assert self.consumer is not None
        got = self.consumer.read_lanes(READ_CHUNK)
        for lane, meta, recs in got:
            self.lane_meta[lane] = meta
            pending.append(LaneChunk(meta, recs))
            self.counters.drained_records += len(recs)
            self.counters.drained_bytes += sum(len(r) for r in recs)
        return got

    def _idle(self) -> bool:
        """No live producer and the ring drained: what is left is in the spool, which the
        exit path tries to deliver (bounded) and the next agent resends."""
        assert self.consumer is not None
        producers_alive = any(p["alive"] for p in self.consumer.producers())
        return not producers_alive and self.consumer.backlog() == 0

    def _idle_exit_due(self, now: float, idle_since: float | None) -> bool:
        limit = self.config.idle_exit_s
        return limit is not None and idle_since is not None and now - idle_since >= limit

    def _drain_once(self, final: bool = False) -> None:
        assert self.consumer is not None
        chunks: list[LaneChunk] = []
        # What was written up to now, not what producers still writing add meanwhile
        # (with lane chaining that could be the whole ring): the stop stays short, and
        # the rest waits in the ring for the next agent.
        budget = self.consumer.backlog()
        taken = 0
        while taken < budget:
            got = self.consumer.read_lanes(READ_CHUNK)
            if not got:
                break
            for lane, meta, recs in got:
                self.lane_meta[lane] = meta
                chunks.append(LaneChunk(meta, recs))
                n = sum(len(r) for r in recs)
                taken += n
                self.counters.drained_records += len(recs)
                self.counters.drained_bytes += n
        if final:
            chunks.extend(self._own_metrics())
        if chunks:
            self.counters.cuts["final"] += 1
            self._spool_and_ack(chunks)

    def _spool_and_ack(self, chunks: list[LaneChunk]) -> None:
        assert self.consumer is not None
        # Durable first, acknowledged second: a crash in between means the records are
        # read again by the next agent (at-least-once), never lost.
        self.spool.write(chunks)
        self.consumer.ack()
        self.counters.batches += 1
        self.delivery_wake.set()

    def _spool_fatal_dumps(self) -> None:
        """The fatal-error dumps of workers that are gone, as their ERROR records: spooled
        in a file of their own (nothing to acknowledge), then their files removed."""
        chunks, files = self.fatal_files.collect()
        if not chunks:
            return
        try:
            self.spool.write(chunks)
        except OSError as exc:  # the next scan tries again; the files stay until then
            log.warning("cannot spool %d fatal-error dump(s) yet: %s", len(chunks), exc)
            return
        self.fatal_files.remove(files)
        log.info("recorded %d fatal-error dump(s) of worker processes", len(chunks))
        self.delivery_wake.set()

    def _own_metrics(self) -> list[LaneChunk]:
        """Machine status and the agent's own counters, as records of the agent; the
        machine status again under each other machine id a producer of this ring
        declared (``configure(machine_id=...)``, ``EMP_MACHINE_ID``)."""
        now = time.time_ns()
        machine: list[bytes] = []
        try:
            machine = [reference.encode_record(r) for r in collect_machine_metrics(now)]
        except Exception as exc:  # machine metrics are best effort
            log.debug("machine metrics failed: %s", exc)
        out = [LaneChunk(meta, machine) for meta in self._producer_machine_metas() if machine]
        own = list(machine)
        for name, value, kind, attrs in self._self_metrics():
            unit = "By" if "bytes" in name else ("{file}" if "files" in name else "{record}")
            if name.startswith("fastbuf.export.requests"):
                unit = "{request}"
            record = Record(
                kind=METRIC,
                time_unix_nano=now,
                instrument=kind,
                name=name,
                value=value,
                unit=unit,
                attributes=dict(attrs),
            )
            own.append(reference.encode_record(record))
        out.append(LaneChunk(self.agent_meta, own))
        return out

    def _producer_machine_metas(self) -> list[bytes]:
        """The resource blobs of the machine ids, other than the agent's own, in the
        resources last read in each lane (``machine.machine_ids``)."""
        if len(self._lane_resources) > MAX_CACHED_RESOURCES:
            self._lane_resources.clear()  # producers come and go: keep the cache bounded
        declared = (
            resource_of(meta, self._lane_resources).attributes.get("emp.machine_id")
            for meta in list(self.lane_meta.values())
        )
        wanted = machine_ids(self.machine_id, declared)[1:]
        self.machine_metas = {
            machine_id: self.machine_metas.get(machine_id)
            or reference.encode_resource(machine_resource(machine_id))
            for machine_id in wanted
        }
        return list(self.machine_metas.values())

    def _self_metrics(self) -> list[tuple[str, int | float, int, tuple[tuple[str, str], ...]]]:
        out: list[tuple[str, int | float, int, tuple[tuple[str, str], ...]]] = []
        if self.ring is not None:
            st = self.ring.stats()
            out += [
                ("fastbuf.ring.written", st["written"], GAUGE, ()),
                ("fastbuf.ring.acked", st["acked"], GAUGE, ()),
                ("fastbuf.ring.in_flight", st["in_flight"], GAUGE, ()),
            ]
            out += [
                ("fastbuf.ring.dropped", st[f"dropped_{reason}"], GAUGE, (("reason", reason),))
                for reason in DROP_REASONS
            ]
        sp = self.spool.stats()
        out += [
            ("fastbuf.spool.files", sp["files"], GAUGE, ()),
            ("fastbuf.spool.bytes", sp["bytes"], GAUGE, ()),
            ("fastbuf.agent.drained", self.counters.drained_records, GAUGE, ()),
            ("fastbuf.agent.corrupt_records", self.counters.corrupt_records, GAUGE, ()),
        ]
        ex = self._sink_status("export")
        if ex is not None:
            out += [
                ("fastbuf.export.requests", ex.get("requests", 0), GAUGE, ()),
                ("fastbuf.export.bytes_on_wire", ex.get("bytes_on_wire", 0), GAUGE, ()),
                ("fastbuf.export.retries", ex.get("retries", 0), GAUGE, ()),
                ("fastbuf.export.dead_lettered", ex.get("dead_lettered", 0), GAUGE, ()),
            ]
        return out

    # ---- delivery --------------------------------------------------------------------

    def _delivery_loop(self) -> None:
        deadline: float | None = None
        errors_in_a_row = 0
        while True:
            self.beats["delivery"] = time.time_ns()
            stopping = self.stop_event.is_set()
            if stopping and deadline is None:
                deadline = time.monotonic() + self.config.shutdown_timeout_s
            try:
                progressed = self._deliver_pending(deadline)
                for sink in self.sinks:
                    for file_id, destination in sink.tick(stopping):
                        self.spool.mark_done(file_id, destination)
                errors_in_a_row = 0
            except Exception as exc:  # caught at the loop: counted, logged once, goes on
                errors_in_a_row += 1
                self._loop_error("delivery", exc)
                progressed = False
                if errors_in_a_row >= LOOP_ERRORS_TO_GIVE_UP:
                    self.fatal = f"the delivery loop failed {errors_in_a_row} times in a row: {exc}"
                    self.stop_event.set()
                    return
                self.delivery_wake.wait(min(5.0, 0.1 * 2 ** min(errors_in_a_row, 6)))
            if stopping and (
                (self.final_drain_done.is_set() and not self._undelivered())
                or (deadline is not None and time.monotonic() > deadline)
            ):
                return
            if not progressed:
                self.delivery_wake.wait(0.2 if not stopping else 0.05)
                self.delivery_wake.clear()

    def _deliver_pending(self, deadline: float | None) -> bool:
        """Deliver the spool oldest first; True when a file went out.

        A sink that cannot take a file sits the rest of the round out (each sink gets the
        files in order), and the others go on with the next files; the round ends when
        every sink is down. A file whose delivery raises is skipped for the next one: when
        that one goes out, the sinks work and the file is the culprit, quarantined once
        that happened ``FILE_FAILURES_TO_QUARANTINE`` times; when it raises too, the fault
        is a sink's and the round ends (the loop backs off). One bad file never stops the
        others, and a failing sink never costs a file."""
        progressed = False
        suspect: str | None = None
        self._down = set()
        for file_id in self.spool.pending():
            self.beats["delivery"] = time.time_ns()
            if deadline is not None and time.monotonic() > deadline:
                break
            if self._held(file_id):
                continue
            try:
                delivered = self._deliver(file_id)
            except Exception as exc:
                if suspect is not None:
                    raise  # two in a row: a sink fails, not a file (counted there)
                self._loop_error("delivery", exc)
                suspect = file_id
                continue
            if suspect is not None and delivered:
                self._file_failed(suspect)
                suspect = None
            if not delivered:
                if len(self._down) >= len(self.sinks):
                    break  # every sink is down: keep order, retry later
                continue  # what this file still needs is down; the others go on
            progressed = True
        return progressed

    def _file_failed(self, file_id: str) -> None:
        failures = self.file_failures.get(file_id, 0) + 1
        self.file_failures[file_id] = failures
        if failures < FILE_FAILURES_TO_QUARANTINE:
            return
        self.file_failures.pop(file_id, None)
        reason = f"its delivery failed {failures} times while the files after it went out"
        if self.spool.quarantine(file_id, reason) is not None:
            self.counters.corrupt_spool_files += 1

    def _held(self, file_id: str) -> bool:
        """A sink took the file and completes it later: it is not offered again."""
        return any(sink.holds(file_id) for sink in self.sinks)

    def _undelivered(self) -> bool:
        return any(not self._held(f) for f in self.spool.pending())

    def _deliver(self, file_id: str) -> bool:
        """Offer ``file_id`` to each sink that still needs it and is not down this round.
        True when a sink took its part now (or nothing was left to take); False when
        what it still needs is down (the file is then not even read)."""
        done = self.spool.done_for(file_id)
        wanted = [sink for sink in self.sinks if not done.issuperset(sink.destinations)]
        for sink in wanted:
            if sink.name not in self._down and sink.retry_in() > 0:
                self._down.add(sink.name)  # backing off: its turn comes after the pause
        ready = [sink for sink in wanted if sink.name not in self._down]
        if not ready:
            return not wanted
        try:
            batch = Batch(file_id, self.spool.read(file_id), done)
        except CorruptSpoolFile as exc:
            self.counters.corrupt_spool_files += 1
            log.error("spool file quarantined: %s", exc)
            return True
        except FileNotFoundError:
            return True  # evicted meanwhile (counted by the spool)
        took = False
        counted = False  # a file's corrupt records count once: the first taker's
        for sink in ready:
            delivery = sink.deliver(batch)
            if delivery.done:
                self.spool.mark_done(file_id, *delivery.done)
            self.counters.corrupt_records += delivery.refused
            if delivery.later:
                self._down.add(sink.name)
            # A sink may take part of a file and wait for the rest (one dataset failing).
            if delivery.taken:
                took = True
                delivered = self.counters.delivered_records
                delivered[sink.name] = delivered.get(sink.name, 0) + delivery.records
                if not counted:
                    self.counters.corrupt_records += delivery.corrupt
                    counted = True
        return took or not any(sink.name in self._down for sink in wanted)

    def _sink_status(self, name: str) -> dict[str, Any] | None:
        for sink in self.sinks:
            if sink.name == name:
                return sink.status()
        return None

    # ---- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the status file holds (``fastbuf status --json``)."""
        ring_stats = self.ring.stats() if self.ring is not None and not self.ring.closed else {}
        store = self._sink_status("store")
        out: dict[str, Any] = {
            "agent": {
                "pid": os.getpid(),
                "version": __version__,
                "ring": self.ring_name,
                "spawned": self.spawned,
                "started_ns": self.counters.started_ns,
                "updated_ns": time.time_ns(),
                "destinations": list(self.spool.destinations),
                "config": self.config.describe(),
                "otlp_listen": None if self.receivers is None else self.receivers.http_listen,
                "otlp_grpc_listen": None if self.receivers is None else self.receivers.grpc_listen,
            },
            "receiver": None if self.receivers is None else self.receivers.status(),
            "drained": {
                "records": self.counters.drained_records,
                "bytes": self.counters.drained_bytes,
                "batches": self.counters.batches,
                "cuts": dict(self.counters.cuts),
                "corrupt_records": self.counters.corrupt_records,
                "corrupt_spool_files": self.counters.corrupt_spool_files,
            },
            "spool": self.spool.stats(),
            "fatal_files": {
                "recorded": self.fatal_files.recorded,
                "unreadable": self.fatal_files.unreadable,
            },
            "store": None if store is None else {"records": self.counters.store_records, **store},
            "export": self._sink_status("export"),
            "ring": ring_stats,
            "producers": self.producers.update(ring_stats, self.lane_meta),
            "health": status_file.loop_health(
                self.beats, self.agent_errors, self.spool_error, self.fatal
            ),
        }
        return out

    def _write_status(self) -> None:
        try:
            current = self.status()
        except OSError as exc:
            log.warning("cannot write status file: %s", exc)
            return
        status_file.write_status(self.status_path, current)


def config_from_args(args: Any) -> AgentConfig:
    overrides: dict[str, object] = {}
    for key in ("endpoint", "headers", "compression", "dataset", "home", "ring"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    timeout_ms = getattr(args, "timeout", None)
    if timeout_ms is not None:
        overrides["timeout"] = timeout_ms / 1000.0  # the flag is in ms, like the env var
    if getattr(args, "local_copy", False):
        overrides["local_copy"] = True
    if getattr(args, "spool_max", None) is not None:
        overrides["spool_max"] = args.spool_max
    idle = getattr(args, "idle_exit", None)
    if idle is not None:
        overrides["idle_exit"] = idle
    elif getattr(args, "spawned", False):
        overrides["idle_exit"] = SPAWNED_IDLE_EXIT_S
    return AgentConfig.from_env(os.environ, overrides)


def run_agent(args: Any) -> int:
    """``fastbuf agent``: exit 0 after a clean stop or when another agent already holds
    the ring, 1 when the ring cannot be used, 2 on bad configuration."""
    try:
        config = config_from_args(args)
        receiver_settings = ReceiverSettings.from_env(
            os.environ,
            listen=getattr(args, "otlp_listen", None),
            grpc_listen=getattr(args, "otlp_grpc_listen", None),
            spawned=bool(getattr(args, "spawned", False)),
        )
    except ConfigError as exc:
        print(f"fastbuf agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ring_name = getattr(args, "ring", None) or config.ring or default_ring_name()
    agent = Agent(config, ring_name, spawned=bool(getattr(args, "spawned", False)))
    agent.receiver_settings = receiver_settings

    def on_signal(signum: int, _frame: object) -> None:
        # No lock may be taken here: the handler runs in the main thread between two of its
        # bytecodes, maybe inside stop_event.wait() holding the event's own lock (set()
        # would then deadlock). The drain loop sees the flag within 5 ms and sets the event.
        if not agent.stop_requested:
            agent.stop_requested = True
            # A stop should take the shutdown timeout at most: if it takes far longer,
            # every thread's stack goes to the log, to show where it is stuck.
            faulthandler.dump_traceback_later(agent.config.shutdown_timeout_s + 30, exit=False)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    except RingBusy as exc:
        # The consumer role was taken between the attach and its first use: another agent
        # drains the ring, which is what this one was started for.
        log.info("another agent holds ring %r; this one exits (%s)", ring_name, exc)
        return 0
    except RingError as exc:
        print(f"fastbuf agent: {exc}", file=sys.stderr)
        return 1
