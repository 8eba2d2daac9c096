"""The OTLP sink: a batch's logs, events and spans to their OTLP endpoints, its metric
updates into a cumulative aggregate exported every ``metrics_interval_s``
(``OTEL_METRIC_EXPORT_INTERVAL``). A signal without an endpoint (none configured, or its
``OTEL_<SIGNAL>_EXPORTER`` is ``none``) is skipped here: the store sink takes it.

Spool destinations: ``export`` (logs and traces, done as soon as they are sent, never
sent again after a restart) and, with a metrics endpoint, ``metrics`` (done only once the
aggregate that includes the file's updates is sent). Retries, ``Retry-After`` and the
circuit breaker are the exporter's (:mod:`emp_fastbuf.agent.otlp.http`), and so are each
signal's protocol, headers, compression, timeout and TLS settings.

With dataset routes (:mod:`emp_fastbuf.agent.datasets`) a file's chunks are grouped by the
dataset of their resource and each dataset's logs and spans are requests of their own,
with its ``Dash0-Dataset``; each dataset is a spool destination of its own
(``dataset-<slug>``; ``export`` stays for the records no route maps), so a file is done
for a dataset once all of that dataset's requests are delivered, and a dataset whose
requests fail never makes the others' be sent again, after a restart either. Within one
destination the requests already delivered are remembered while the agent runs
(:class:`_Progress`): a retry sends only the rest. The metrics aggregate is split by the
dataset of each resource at every export; a failed export sends every dataset's cumulative
state again at the next one, which repeats values and never adds to them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from emp_fastbuf.agent import datasets
from emp_fastbuf.agent.batch import Batch
from emp_fastbuf.agent.config import AgentConfig, Signal
from emp_fastbuf.agent.otlp.deadletter_files import count_records
from emp_fastbuf.agent.otlp.http import ExportStatus, OTLPExporter
from emp_fastbuf.agent.otlp.metrics import MetricsAggregator
from emp_fastbuf.agent.sinks import Delivery
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import LaneChunk

log = logging.getLogger("emp_fastbuf.agent")

# Series idle this long would carry timestamps backends reject: they stop being reported.
METRIC_SERIES_IDLE_NS = 6 * 3600 * 10**9
# Files whose delivery is remembered part-way; past this many the oldest is forgotten
# (its delivered requests would then be sent again).
MAX_PROGRESS = 256
_EXPORTED: tuple[Signal, ...] = ("logs", "traces")


@dataclass
class _Progress:
    """What went out of one (file, destination) so far: the requests delivered, each as
    (signal, index, count of that signal's requests), and the records of those refused
    for good, by signal."""

    delivered: set[tuple[Signal, int, int]] = field(default_factory=set)
    refused_records: dict[Signal, int] = field(default_factory=dict)


@dataclass
class _DatasetStats:
    """Per ``Dash0-Dataset`` sent (None: none) for ``fastbuf status``."""

    records: int = 0  # logs, events and spans in accepted requests
    metric_points: int = 0  # data points in accepted metrics requests
    requests: int = 0  # accepted requests
    dead_lettered: int = 0  # requests refused for good


@dataclass
class _Part:
    """The outcome of one destination's share of a file."""

    later: bool = False
    records: int = 0
    corrupt: int = 0


class OTLPSink:
    """Sends to the endpoints of ``config``: logs and traces from the raw records straight
    to OTLP bytes (native), metrics through a :class:`MetricsAggregator`."""

    name = "export"

    def __init__(self, config: AgentConfig, exporter: OTLPExporter | None = None) -> None:
        self.config = config
        self.exporter = exporter if exporter is not None else OTLPExporter(config)
        self.sends_metrics = config.endpoint("metrics") is not None
        # Secrets are replaced as the requests are built; its counts are this sink's.
        self.redactor = config.redaction.redactor()
        routes = config.datasets
        self.router = None if routes is None else datasets.Router(routes)
        # The dataset (None: no route) of each destination of logs and traces.
        self.routed: dict[str, str | None] = {}
        if routes is None or routes.fallback is None:
            self.routed["export"] = None
        for dataset in () if routes is None else routes.targets():
            self.routed[datasets.destination(dataset)] = dataset
        # Apart from the logs' destinations: a file's logs are done (and never sent again
        # after a restart) as soon as they are sent, while its metric updates wait for
        # the next export of the aggregate.
        self.destinations: tuple[str, ...] = (*self.routed, *(("metrics",) * self.sends_metrics))
        self.aggregator = MetricsAggregator()
        self.awaiting_metrics: list[str] = []  # spool files whose metrics await export
        self.last_metrics_export = time.monotonic()
        self._progress: dict[tuple[str, str], _Progress] = {}
        # Per Dash0-Dataset sent; status() reads it from another thread.
        self._datasets: dict[str | None, _DatasetStats] = {}
        self._lock = threading.Lock()
        if routes is not None:
            log.info("datasets: %s", routes.text() or "no route")

    def retry_in(self) -> float:
        """Always 0.0: the exporter backs off inside ``export`` (its retries, and a circuit
        breaker that answers at once while open)."""
        return 0.0

    def deliver(self, batch: Batch) -> Delivery:
        """Send the batch's logs and spans, per dataset, and feed its metric updates to the
        aggregate. A dataset that must wait does not stop the others; the metric updates
        then wait with it (the file comes back for both)."""
        done: list[str] = []
        records = corrupt = refused = 0
        taken = later = False
        pending = [d for d in self.routed if d not in batch.done]
        if pending:
            groups: dict[str | None, list[LaneChunk]]
            if self.router is None:
                groups = {None: batch.chunks}
            else:
                groups = self.router.split(batch.chunks)
            for destination in pending:
                dataset = self.routed[destination]
                part = self._deliver_part(batch.file_id, destination, groups.get(dataset, []))
                corrupt += part.corrupt
                if part.later:
                    later = True
                    continue
                records += part.records
                done.append(destination)
                taken = True
        if later:
            return Delivery(tuple(done), taken, True, records, corrupt)
        if self.sends_metrics and "metrics" not in batch.done:
            groups_m, bad = batch.metric_records(self.redactor)
            corrupt += bad
            has_metrics = False
            for res, points in groups_m:
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

    def _deliver_part(self, file_id: str, destination: str, chunks: list[LaneChunk]) -> _Part:
        """One destination's logs and spans of a file (``chunks``: its chunks only), as
        requests with its dataset. The requests delivered are kept until the destination is
        done, so that one sent again after a ``retry_later`` is only what had not gone."""
        dataset = self.routed[destination]
        key = (file_id, destination)
        progress = self._progress.pop(key, None) or _Progress()
        part = _Part()
        if not chunks:
            return part
        max_bytes = self.config.request_max_bytes
        encoded: dict[Signal, int] = {}
        for signal in _EXPORTED:
            if self.config.endpoint(signal) is None:
                continue  # only some per-signal endpoints are configured
            if signal == "logs":
                payloads, n, bad = _transcode.logs_requests(
                    chunks, time.time_ns(), max_bytes, self.redactor
                )
            else:
                payloads, n, bad = _transcode.spans_requests(chunks, max_bytes, self.redactor)
            encoded[signal] = n
            part.corrupt += bad
            for index, payload in enumerate(payloads):
                sent = (signal, index, len(payloads))
                if sent in progress.delivered:
                    continue
                result = self.exporter.export(signal, payload, dataset)
                if result.status == "retry_later":
                    self._keep(key, progress)
                    part.later = True
                    return part
                progress.delivered.add(sent)
                self._count(signal, dataset, result.status)
                if result.status == "dead_letter":
                    # Rare: parsing the refused request is how its records are known.
                    lost = count_records(signal, payload) or 0
                    refused = progress.refused_records
                    refused[signal] = refused.get(signal, 0) + lost
        for signal, n in encoded.items():
            accepted = n - progress.refused_records.get(signal, 0)
            if accepted > 0:
                self._count(signal, dataset, records=accepted)
            part.records += n
        return part

    def _keep(self, key: tuple[str, str], progress: _Progress) -> None:
        self._progress[key] = progress
        while len(self._progress) > MAX_PROGRESS:
            del self._progress[next(iter(self._progress))]

    def _count(
        self,
        signal: Signal,
        dataset: str | None,
        status: ExportStatus | None = None,
        records: int = 0,
        metric_points: int = 0,
    ) -> None:
        """Count a request's outcome (``status``), records or points for the dataset a
        request of ``signal`` routed to ``dataset`` carries."""
        sent = self.config.dataset_sent(signal, dataset)
        with self._lock:
            stats = self._datasets.get(sent)
            if stats is None:
                stats = self._datasets[sent] = _DatasetStats()
            stats.requests += int(status == "ok")
            stats.dead_lettered += int(status == "dead_letter")
            stats.records += records
            stats.metric_points += metric_points

    def holds(self, file_id: str) -> bool:
        """Whether ``file_id``'s metric updates await the next export of the aggregate."""
        return file_id in self.awaiting_metrics

    def tick(self, stopping: bool) -> list[tuple[str, str]]:
        """Export the aggregate every ``metrics_interval_s`` (and when stopping), one
        request per dataset; the files whose updates it includes are then done for
        ``metrics``."""
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
            routes = self.config.datasets
            parts = (
                [(None, request)]
                if routes is None
                else datasets.split_request("metrics", request, routes)
            )
            for dataset, part in parts:
                result = self.exporter.export("metrics", part.SerializeToString(), dataset)
                if result.status == "retry_later":
                    return []
                points = _points(part) if result.status == "ok" else 0
                self._count("metrics", dataset, result.status, metric_points=points)
        self.last_metrics_export = now
        self.aggregator.forget_idle(time.time_ns() - METRIC_SERIES_IDLE_NS)
        completed = [(file_id, "metrics") for file_id in self.awaiting_metrics]
        self.awaiting_metrics.clear()
        return completed

    def status(self) -> dict[str, Any]:
        """The exporter's counters (``OTLPExporter.stats``) and ``datasets``: per
        ``Dash0-Dataset`` sent (null: none), the records, metric points and requests
        accepted and the requests dead-lettered; ``redacted``: what redaction replaced
        (null when it is off)."""
        stats = self.exporter.stats()
        stats["redacted"] = None if self.redactor is None else self.redactor.counts()
        with self._lock:
            stats["datasets"] = [
                {"dataset": dataset, **vars(counts)} for dataset, counts in self._datasets.items()
            ]
        return stats

    def close(self) -> None:
        """Stop retry waits and close the exporter's connections."""
        self.exporter.close()


def _points(request: Any) -> int:
    """Data points in an ``ExportMetricsServiceRequest``: per metric, not per point."""
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total
