"""The OTLP sink: a batch's logs, events and spans to their OTLP endpoints, its metric
updates into a cumulative aggregate exported every ``metrics_interval_s``
(``OTEL_METRIC_EXPORT_INTERVAL``). A signal without an endpoint (none configured, or its
``OTEL_<SIGNAL>_EXPORTER`` is ``none``) is skipped here: the store sink takes it.

Two spool destinations: ``export`` (logs and traces, done as soon as they are sent, never
sent again after a restart) and, with a metrics endpoint, ``metrics`` (done only once the
aggregate that includes the file's updates is sent). Retries, ``Retry-After`` and the
circuit breaker are the exporter's (:mod:`emp_fastbuf.agent.otlp.http`), and so are each
signal's protocol, headers, compression, timeout and TLS settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from emp_fastbuf.agent.batch import Batch
from emp_fastbuf.agent.config import AgentConfig
from emp_fastbuf.agent.otlp.http import OTLPExporter
from emp_fastbuf.agent.otlp.metrics import MetricsAggregator
from emp_fastbuf.agent.sinks import Delivery
from emp_fastbuf.agent.transcode import _transcode

log = logging.getLogger("emp_fastbuf.agent")

# Series idle this long would carry timestamps backends reject: they stop being reported.
METRIC_SERIES_IDLE_NS = 6 * 3600 * 10**9


class OTLPSink:
    """Sends to the endpoints of ``config``: logs and traces from the raw records straight
    to OTLP bytes (native), metrics through a :class:`MetricsAggregator`."""

    name = "export"

    def __init__(self, config: AgentConfig, exporter: OTLPExporter | None = None) -> None:
        self.config = config
        self.exporter = exporter if exporter is not None else OTLPExporter(config)
        self.sends_metrics = config.endpoint("metrics") is not None
        # Apart from "export": a file's logs are done (and never sent again after a
        # restart) as soon as they are sent, while its metric updates wait for the next
        # export of the aggregate.
        self.destinations: tuple[str, ...] = (
            ("export", "metrics") if self.sends_metrics else ("export",)
        )
        self.aggregator = MetricsAggregator()
        self.awaiting_metrics: list[str] = []  # spool files whose metrics await export
        self.last_metrics_export = time.monotonic()

    def retry_in(self) -> float:
        """Always 0.0: the exporter backs off inside ``export`` (its retries, and a circuit
        breaker that answers at once while open)."""
        return 0.0

    def deliver(self, batch: Batch) -> Delivery:
        """Send the batch's logs and spans, feed its metric updates to the aggregate."""
        done: list[str] = []
        records = corrupt = refused = 0
        taken = False
        if "export" not in batch.done:
            max_bytes = self.config.request_max_bytes
            for signal_name in ("logs", "traces"):
                if self.config.endpoint(signal_name) is None:
                    continue  # only some per-signal endpoints are configured
                if signal_name == "logs":
                    payloads, n, bad = _transcode.logs_requests(
                        batch.chunks, time.time_ns(), max_bytes
                    )
                else:
                    payloads, n, bad = _transcode.spans_requests(batch.chunks, max_bytes)
                records += n
                corrupt += bad
                for payload in payloads:
                    result = self.exporter.export(signal_name, payload)
                    if result.status == "retry_later":
                        return Delivery(later=True)
            done.append("export")
            taken = True
        if self.sends_metrics and "metrics" not in batch.done:
            groups, bad = batch.metric_records()
            corrupt += bad
            has_metrics = False
            for res, points in groups:
                skipped = self.aggregator.feed_points(res, points)
                if skipped:
                    refused += skipped
                    log.debug("%d metric records skipped (invalid histogram bounds)", skipped)
                records += len(points)
                has_metrics = True
            if has_metrics:
                # Done for metrics once the aggregate that includes these updates is sent.
                self.awaiting_metrics.append(batch.file_id)
            else:
                done.append("metrics")
            taken = True
        return Delivery(tuple(done), taken, False, records, corrupt, refused)

    def holds(self, file_id: str) -> bool:
        """Whether ``file_id``'s metric updates await the next export of the aggregate."""
        return file_id in self.awaiting_metrics

    def tick(self, stopping: bool) -> list[tuple[str, str]]:
        """Export the aggregate every ``metrics_interval_s`` (and when stopping); the files
        whose updates it includes are then done for ``metrics``."""
        if not self.sends_metrics:
            return []
        now = time.monotonic()
        if not stopping and now - self.last_metrics_export < self.config.metrics_interval_s:
            return []
        if not self.awaiting_metrics and not stopping:
            self.last_metrics_export = now
            return []
        request = self.aggregator.collect(time.time_ns())
        if request is not None:
            result = self.exporter.export("metrics", request.SerializeToString())
            if result.status == "retry_later":
                return []
        self.last_metrics_export = now
        self.aggregator.forget_idle(time.time_ns() - METRIC_SERIES_IDLE_NS)
        completed = [(file_id, "metrics") for file_id in self.awaiting_metrics]
        self.awaiting_metrics.clear()
        return completed

    def status(self) -> dict[str, Any]:
        """The exporter's counters (``OTLPExporter.stats``)."""
        return self.exporter.stats()

    def close(self) -> None:
        """Stop retry waits and close the exporter's connections."""
        self.exporter.close()
