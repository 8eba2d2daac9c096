"""Scenarios for the bridges: the OpenTelemetry SDK and stdlib logging with fastbuf as the
transport, against the same calls with the SDK's batch processor and a ``QueueHandler``.

Each factory configures a private ring and starts a drainer process on it
(``bench.drainer``), so the ring never fills and the timed call is what a worker pays.
``register_all()`` adds the scenarios.
"""

from __future__ import annotations

import logging
import os
import uuid

from bench.drainer import Drainer, start_drainer
from bench.harness import Call, Skip, Teardown
from bench.scenarios import register, scenarios

Scenario = tuple[Call, Teardown | None]

# As bench/ours.py: the default ring's 64 MiB in 8 lanes, for headroom across the drainer's
# scheduling gaps.
RING_SIZE = 64 << 20
RING_LANES = 8


class _RingWithDrainer:
    """A fresh ring this process is configured to write to, and a drainer process on it
    (``bench.drainer``: it reads and acknowledges, as the agent would, without exporting)."""

    def __init__(self, tag: str) -> None:
        import emp_fastbuf as fastbuf
        from emp_fastbuf import Ring

        self.name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}-{tag}"
        Ring.create(self.name, RING_SIZE, lanes=RING_LANES).close()
        self.drainer: Drainer | None = None
        # The process-wide counter includes earlier scenarios: report this run's part.
        self.dropped_before = fastbuf.stats()["dropped"]
        try:
            fastbuf.configure(service="bench", ring=self.name, agent="external")
            self.drainer = start_drainer(self.name)
        except BaseException:
            self.close()
            raise

    def close(self) -> str:
        """Stop the drainer, detach and remove the ring; says what was taken and dropped."""
        import emp_fastbuf as fastbuf
        from emp_fastbuf import Ring

        dropped = fastbuf.stats()["dropped"] - self.dropped_before
        taken = None
        try:
            if self.drainer is not None:
                taken = self.drainer.stop()
        finally:
            fastbuf.shutdown()
            Ring.unlink(self.name)
        note = f"{dropped:,} records dropped"
        return note if taken is None else f"{note}; drainer took {taken:,} records"


def otel_span_fastbuf() -> Scenario:
    """SDK ``start_as_current_span`` enter+exit with 2 attributes; ``FastbufSpanProcessor``."""
    try:
        from opentelemetry.sdk.trace import TracerProvider

        from emp_fastbuf.integrations.otel import FastbufSpanProcessor
    except ImportError as exc:
        raise Skip(f"opentelemetry-sdk is not importable ({exc})") from exc
    ring = _RingWithDrainer("otel-span")
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(FastbufSpanProcessor())
    start = provider.get_tracer("bench.ours").start_as_current_span

    def call() -> None:
        with start("train.step", attributes={"gpu.id": 3, "batch.size": 128}):
            pass

    def teardown() -> str:
        provider.shutdown()
        return ring.close()

    return call, teardown


def logging_fastbuf_handler() -> Scenario:
    """stdlib ``logger.info`` with 4 extras through ``FastbufHandler``."""
    from emp_fastbuf.integrations.stdlib import FastbufHandler

    ring = _RingWithDrainer("log-handler")
    handler = FastbufHandler()
    logger = logging.getLogger("bench.ours.fastbuf_handler")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    info = logger.info

    def call() -> None:
        # The same call as the logging.queue_handler peer, dict literal included.
        info("step done", extra={"gpu_id": 3, "batch_size": 128, "model": "m-8b", "step": 42})

    def teardown() -> str:
        logger.removeHandler(handler)
        return ring.close()

    return call, teardown


def register_all() -> None:
    """Register the bridge scenarios (a second call does nothing)."""
    have = {s.name for s in scenarios()}
    if "otel.span.fastbuf" not in have:
        register(
            "otel.span.fastbuf",
            otel_span_fastbuf,
            calls=200_000,
            warmup=5_000,
            versus=("otel.span",),
            description="start_as_current_span enter+exit, 2 attributes, FastbufSpanProcessor",
        )
    if "logging.fastbuf_handler" not in have:
        register(
            "logging.fastbuf_handler",
            logging_fastbuf_handler,
            calls=200_000,
            warmup=5_000,
            versus=("logging.queue_handler",),
            description="logging.info, 4 extras, FastbufHandler",
        )
