"""A drainer process for benchmark rings: it consumes so that producers never find a full lane.

The drainer runs in its own spawned process, as the agent would: it takes the consumer
role, then loops ``read(100_000)`` + ``ack()`` with a short sleep. It is started before a
scenario is timed and stopped after; the number of records it took comes back with
``stop()`` so a report can show that the records really went somewhere.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Drainer", "start_drainer"]

READ_BATCH = 100_000
# Long enough that the drainer leaves a core to the producers most of the time, short
# enough that a 1 MiB lane does not fill in between at a few million records per second.
SLEEP_S = 0.0005
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


def _drain_main(ring_name: str, stop: Any, conn: Connection) -> None:
    """Drainer process body: take the consumer role, say so, drain until ``stop`` is set."""
    from emp_fastbuf import Ring

    taken = 0
    try:
        ring = Ring.open(ring_name)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    try:
        consumer = ring.consumer()
    except Exception as exc:
        ring.close()
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    parent = multiprocessing.parent_process()
    ready = False
    try:
        while True:
            batch = consumer.read(READ_BATCH)
            if batch:
                taken += len(batch)
                consumer.ack()
            if stop.is_set():
                # One last pass so records written just before the stop are counted too.
                rest = consumer.read(READ_BATCH)
                while rest:
                    taken += len(rest)
                    consumer.ack()
                    rest = consumer.read(READ_BATCH)
                break
            if parent is not None and not parent.is_alive():
                break
            if len(batch) < READ_BATCH:
                time.sleep(SLEEP_S)
            if not ready:
                # Only after one whole pass: the loop's code paths are warm by then.
                conn.send(("ready", 0))
                ready = True
    finally:
        consumer.close()
        ring.close()
        conn.send(("done", taken))
        conn.close()


@dataclass
class Drainer:
    """A running drainer process; ``stop()`` ends it and returns the records it took."""

    ring_name: str
    process: multiprocessing.process.BaseProcess
    stop_event: Any
    conn: Connection
    _taken: int | None = None

    def stop(self) -> int:
        """Stop draining (after a final pass) and return how many records were taken."""
        if self._taken is not None:
            return self._taken
        self.stop_event.set()
        taken = -1
        try:
            if self.conn.poll(_STOP_TIMEOUT_S):
                kind, value = self.conn.recv()
                if kind == "done":
                    taken = int(value)
        except EOFError:
            pass
        finally:
            self.conn.close()
            self.process.join(timeout=_STOP_TIMEOUT_S)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5)
        if taken < 0:
            raise RuntimeError(f"drainer of ring {self.ring_name!r} did not report back")
        self._taken = taken
        return taken


def start_drainer(ring_name: str) -> Drainer:
    """Spawn a drainer on the existing ring ``ring_name``; returns once it holds the consumer."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_drain_main,
        args=(ring_name, stop, child_end),
        name=f"bench-drainer-{ring_name}",
        daemon=True,
    )
    proc.start()
    child_end.close()
    if not parent_end.poll(_START_TIMEOUT_S):
        proc.terminate()
        proc.join(timeout=5)
        raise RuntimeError(f"drainer of ring {ring_name!r} did not start")
    try:
        kind, value = parent_end.recv()
    except EOFError:
        kind, value = "error", "it exited before taking the consumer role"
    if kind != "ready":
        proc.join(timeout=5)
        raise RuntimeError(f"drainer of ring {ring_name!r} failed: {value}")
    return Drainer(ring_name, proc, stop, parent_end)
