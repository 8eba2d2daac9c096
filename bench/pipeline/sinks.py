"""The agent's OTLP sink as the export scenarios drive it: its exporter made strict, and the
same sink with the Python encoder the agent had before the transcoder.

Imported by the scenarios' factories, not at registration: it needs ``emp_fastbuf`` built,
and a scenario without it is skipped, not a failed import.
"""

from __future__ import annotations

from collections.abc import Iterator

from emp_fastbuf.agent.batch import Batch, decode_batch
from emp_fastbuf.agent.config import AgentConfig, Signal
from emp_fastbuf.agent.otlp.http import ExportResult, OTLPExporter
from emp_fastbuf.agent.otlp.reference import iter_logs_requests, iter_traces_requests
from emp_fastbuf.agent.sinks import Delivery
from emp_fastbuf.agent.sinks.otlp import OTLPSink


class StrictExporter(OTLPExporter):
    """The agent's exporter, raising on any outcome but ``ok``: a retry or a dropped
    request (what the agent lives with) has no place in a benchmark's loop."""

    def export(self, signal: Signal, payload: bytes, dataset: str | None = None) -> ExportResult:
        """``OTLPExporter.export``; raises ``RuntimeError`` unless the result is ok."""
        result = super().export(signal, payload, dataset)
        if not result.ok:
            raise RuntimeError(f"{signal} export failed: {result.status} {result.message}")
        return result


class ReferenceOTLPSink(OTLPSink):
    """``OTLPSink`` with the agent's encoder before the transcoder: every record decoded by
    the reference decoder, the requests built with ``agent.otlp.reference`` and serialized
    (upb). The metric records then go through ``OTLPSink``'s own code."""

    def deliver(self, batch: Batch) -> Delivery:
        """Send the batch's logs and spans encoded in Python, then the parent's delivery
        with ``export`` done (its metric part alone)."""
        if "export" in batch.done:
            return super().deliver(batch)
        groups = decode_batch(batch.chunks)
        max_bytes = self.config.request_max_bytes
        encoded: tuple[tuple[Signal, Iterator[bytes]], ...] = (
            ("logs", iter_logs_requests(groups, max_bytes)),
            ("traces", iter_traces_requests(groups, max_bytes)),
        )
        for signal, requests in encoded:
            if self.config.endpoint(signal) is None:
                continue
            for payload in requests:
                if self.exporter.export(signal, payload).status == "retry_later":
                    return Delivery(later=True)
        rest = super().deliver(Batch(batch.file_id, batch.chunks, batch.done | {"export"}))
        return Delivery(
            ("export", *rest.done),
            taken=True,
            later=rest.later,
            records=sum(len(recs) for _res, recs in groups) + rest.records,
            corrupt=rest.corrupt,
            refused=rest.refused,
        )


def otlp_sink(config: AgentConfig, encoder: str = "native") -> OTLPSink:
    """The sink for ``config`` with a strict exporter: ``OTLPSink`` (``encoder="native"``,
    what the agent runs) or ``ReferenceOTLPSink`` (``"python"``)."""
    sink_class = OTLPSink if encoder == "native" else ReferenceOTLPSink
    return sink_class(config, StrictExporter(config))
