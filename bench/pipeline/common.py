"""What the pipeline scenarios share: the staged ring, the agent's configuration, the OTLP
receiver in a process of its own, and one spool file through a sink as the agent offers it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Call, Skip, Teardown

if TYPE_CHECKING:
    from emp_fastbuf.agent.config import AgentConfig
    from emp_fastbuf.agent.sinks import Delivery, Sink
    from emp_fastbuf.agent.spool import Spool
    from emp_fastbuf.records import LaneChunk
    from emp_fastbuf.testing.receiver import ReceiverProcess

Scenario = tuple[Call, Teardown | None]

BATCH = 4096  # records per export call (the agent reads READ_CHUNK = 8192 at most)
JOB_ID = "job-bench-42"
# One lane, so that one producer can stage ~100 batches (~130 B per record) before a run.
RING_SIZE = 128 << 20
PREFILL_BATCHES = 100
_RECEIVER_TIMEOUT_S = 60.0


def import_fastbuf() -> Any:
    """``emp_fastbuf``, or ``Skip`` when it cannot be imported here."""
    try:
        import emp_fastbuf
    except ImportError as exc:
        raise Skip(f"emp_fastbuf is not importable ({exc})") from exc
    return emp_fastbuf


class StagedRing:
    """A one-lane ring this process writes LOG records into with ``fastbuf.log.info`` (4
    attributes, inside ``fastbuf.context(job_id=...)``) and reads back as the agent does."""

    def __init__(self, tag: str) -> None:
        self.fastbuf = import_fastbuf()
        from emp_fastbuf import Ring
        from emp_fastbuf.producer import api

        os.environ["EMP_FASTBUF_AGENT"] = "external"
        # Short: macOS limits shared-memory names to 31 characters.
        self.name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}-{tag[:6]}"
        Ring.create(self.name, RING_SIZE, lanes=1).close()
        self.written = 0
        self.consumed = 0
        self._scope: Any = None
        self._consumer_ring: Any = None
        self.consumer: Any = None
        try:
            self.fastbuf.configure(service="bench", ring=self.name, agent="external")
            ring = api.ring()
            if ring is None:
                raise RuntimeError("fastbuf.configure attached no ring")
            self.ring = ring
            self._scope = self.fastbuf.context(job_id=JOB_ID)
            self._scope.__enter__()
            self._consumer_ring = Ring.open(self.name)
            self.consumer = self._consumer_ring.consumer()
        except BaseException:
            self.close()
            raise

    def fill(self, records: int) -> None:
        """Write ``records`` more LOG records; raises if the ring dropped any."""
        info = self.fastbuf.log.info
        before = self.ring.stats()["dropped"]
        start = self.written
        for i in range(start, start + records):
            info("step done", gpu_id=i % 8, batch_size=128, model="m-8b", step=i)
        self.written += records
        dropped = self.ring.stats()["dropped"] - before
        if dropped:
            raise RuntimeError(f"ring {self.name} dropped {dropped} of {records} staged records")

    def fill_mixed(self, records: int) -> None:
        """Write at least ``records`` more records as a GPU worker's steps do: per step a
        span, a log inside it, a histogram update and a counter increment; a job span (a
        trace) around every 1,000 steps."""
        fb = self.fastbuf
        step_ms = fb.metrics.histogram("step.duration", unit="ms")
        steps = fb.metrics.counter("steps")
        info = fb.log.info
        before = self.ring.stats()["dropped"]
        target = self.written + records
        while self.written < target:
            with fb.span("job", job=self.written):
                for i in range(1000):
                    with fb.span("denoise", step=i):
                        info("step done", step=i, loss=0.5 / (i + 1))
                        step_ms.record(12.5 + i % 7)
                        steps.inc()
            self.written += 4 * 1000 + 1
        dropped = self.ring.stats()["dropped"] - before
        if dropped:
            raise RuntimeError(f"ring {self.name} dropped {dropped} staged records")

    def available(self) -> int:
        """Staged records not read yet."""
        return self.written - self.consumed

    def read_batch(self, n: int) -> list[LaneChunk]:
        """Up to ``n`` records as the agent's drain loop takes them: ``LaneChunk``s."""
        from emp_fastbuf.records import LaneChunk

        chunks = [LaneChunk(meta, recs) for _lane, meta, recs in self.consumer.read_lanes(n)]
        self.consumed += sum(len(c.records) for c in chunks)
        return chunks

    def drain(self, spool: Spool, n: int) -> str:
        """What the agent's drain loop does with a batch: read up to ``n`` records, spool
        them (fsynced), then acknowledge them; returns the spool file id."""
        file_id = spool.write(self.read_batch(n))
        self.consumer.ack()
        return file_id

    def decoded_batch(self, n: int) -> list[Any]:
        """``n`` freshly staged records, decoded: ``(Resource, [Record])`` groups."""
        from emp_fastbuf.agent.batch import decode_batch

        self.fill(n)
        groups = decode_batch(self.read_batch(n))
        self.consumer.ack()
        got = sum(len(recs) for _, recs in groups)
        if got != n:
            raise RuntimeError(f"decoded {got} records, expected {n}")
        return groups

    def close(self) -> None:
        """Detach the producer and the consumer, remove the ring."""
        from emp_fastbuf import Ring

        try:
            if self._scope is not None:
                self._scope.__exit__(None, None, None)
                self._scope = None
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
            if self._consumer_ring is not None:
                self._consumer_ring.close()
                self._consumer_ring = None
        finally:
            self.fastbuf.shutdown()
            Ring.unlink(self.name)


def agent_config(
    home: Path, url: str | None = None, compression: str = "gzip", redact: bool = True
) -> AgentConfig:
    """The agent's configuration with ``home``, exporting to ``url`` (every signal) when
    given, else storing; redaction on (the default) unless ``redact`` is False. An empty
    environment otherwise: the run's own ``OTEL_*`` variables must not redirect the
    export."""
    from emp_fastbuf.agent.config import AgentConfig

    overrides: dict[str, Any] = {"home": home}
    if url is not None:
        overrides.update(endpoint=url, compression=compression)
    return AgentConfig.from_env({} if redact else {"EMP_FASTBUF_REDACT": "off"}, overrides)


def spool_for(config: AgentConfig, sink: Sink) -> Spool:
    """The spool the agent opens for ``sink`` alone: under its home, with its codec and
    limit, naming the sink's destinations."""
    from emp_fastbuf import paths
    from emp_fastbuf.agent.spool import Spool

    return Spool(
        Path(config.home) / paths.SPOOL_DIR,
        limit_bytes=config.spool_limit_bytes,
        destinations=sink.destinations,
        codec=config.spool_codec,
    )


def deliver(sink: Sink, spool: Spool, file_id: str) -> Delivery:
    """``file_id`` through ``sink`` as the agent's delivery loop offers it (the recipe of
    ``emp_fastbuf.agent.sinks``): read once into a ``Batch``, delivered, each destination
    the sink completed marked done together, as the agent does (that deletes the file). Anything but
    the whole file taken now, without a corrupt record, fails the scenario."""
    from emp_fastbuf.agent.batch import Batch

    if sink.retry_in() > 0:
        raise RuntimeError(f"the {sink.name} sink is backing off")
    delivery = sink.deliver(Batch.read(spool, file_id))
    spool.mark_done(file_id, *delivery.done)
    if not delivery.taken or delivery.later or set(delivery.done) != set(sink.destinations):
        raise RuntimeError(f"the {sink.name} sink did not take {file_id}: {delivery}")
    if delivery.corrupt or delivery.refused:
        raise RuntimeError(f"the {sink.name} sink met bad records in {file_id}: {delivery}")
    return delivery


def start_receiver() -> ReceiverProcess:
    """The tests' OTLP receiver in a process of its own: its HTTP parsing and decoding run
    on the other core and are not counted as the exporter's CPU. It decodes every request
    before answering, as the reference runs did."""
    from emp_fastbuf.testing.receiver import ReceiverProcess

    return ReceiverProcess(timeout_s=_RECEIVER_TIMEOUT_S)
