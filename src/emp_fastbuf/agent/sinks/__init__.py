"""Where the agent delivers its spool: one small protocol that every destination implements.

The delivery loop offers each pending spool file, oldest first, to every sink that still
needs it, as one :class:`~emp_fastbuf.agent.batch.Batch` parsed once for all of them. A
sink takes its part and says which spool destinations are now done; the file is deleted
once every destination has it. A sink that cannot take a file (its endpoint is down, the
store is locked) is offered no further file in that round, so each sink gets the files in
order, and a sink that is down never holds another back.

Two sinks: :class:`~emp_fastbuf.agent.sinks.otlp.OTLPSink` (OTLP/HTTP, per signal, with the
exporter's retries and circuit breaker) and :class:`~emp_fastbuf.agent.sinks.store.StoreSink`
(the embedded store, with its own backoff).

A sink needs no agent around it; driving one by hand::

    spool = Spool(directory, destinations=sink.destinations)
    ...
    if sink.retry_in() == 0:
        batch = Batch.read(spool, file_id)
        delivery = sink.deliver(batch)
        spool.mark_done(file_id, *delivery.done)  # together: one fsync at most
    for file_id, destination in sink.tick(stopping=False):
        spool.mark_done(file_id, destination)
    ...
    sink.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from emp_fastbuf.agent.batch import Batch


@dataclass(frozen=True)
class Delivery:
    """What one sink did with one batch.

    ``taken``: the sink took its part of the file now (sent, stored, or held for later:
    see :meth:`Sink.holds`). ``later``: it could not (backing off, endpoint failing): offer
    the file again later. Both: it took some of its destinations (``done``, ``records``)
    and must be offered the file again for the rest. Neither: it had nothing left to take.
    """

    #: Spool destinations of this file that are complete now.
    done: tuple[str, ...] = ()
    taken: bool = False
    later: bool = False
    #: Records the sink took.
    records: int = 0
    #: Records that did not parse. The agent counts a file's corrupt records once per
    #: delivery: those of the first sink that takes it.
    corrupt: int = 0
    #: Records that parsed but could not be used (always counted as corrupt).
    refused: int = 0


class Sink(Protocol):
    """A destination of spool files. The agent calls every method from its delivery thread."""

    #: The sink's key in ``fastbuf status --json`` ("export", "store") and in the agent's
    #: counters.
    name: str
    #: The spool destinations the sink completes (``Spool(destinations=...)``).
    destinations: tuple[str, ...]

    def retry_in(self) -> float:
        """Seconds before the sink is worth offering a file again (0.0: now). The agent
        offers it nothing meanwhile; a file stays in the spool until the sink has it."""
        ...

    def deliver(self, batch: Batch) -> Delivery:
        """Take this sink's part of ``batch``: the destinations of ``self.destinations``
        that are not in ``batch.done``. Raises only for a fault of its own (a bug, a
        file that cannot be handled): the agent then tells a bad file from a bad sink."""
        ...

    def holds(self, file_id: str) -> bool:
        """True while the sink has taken ``file_id`` but completes it later (metric updates
        wait for the next export of the aggregate): the agent does not offer it again."""
        ...

    def tick(self, stopping: bool) -> list[tuple[str, str]]:
        """Periodic work between delivery rounds (an aggregate to export, retention);
        returns the ``(file_id, destination)`` pairs it completed. ``stopping``: the
        agent is stopping, do now what is pending."""
        ...

    def status(self) -> dict[str, Any]:
        """The sink's counters for ``fastbuf status --json``, JSON-ready, free of secrets."""
        ...

    def close(self) -> None:
        """Release the sink's connections or files; it takes nothing more."""
        ...
