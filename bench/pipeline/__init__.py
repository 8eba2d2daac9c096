"""Scenarios of the drainer side: the agent's delivery through its own sinks, the store's
ingest and a query. Each module holds one kind of scenario:

- ``export``: ``agent.export`` (gzip), ``agent.export.noredact`` (redaction off),
  ``agent.export.zstd``, ``agent.export.py`` (the Python encoder) through the agent's
  ``OTLPSink``, and the SDK's ``otel.export`` and
  ``otel.export.http`` on the same records; ``pipeline_measurements()`` for the cost;
- ``store``: ``agent.store`` through the agent's ``StoreSink``, ``store.ingest``,
  ``store.ingest.mixed`` and ``store.ingest.py``;
- ``query``: ``store.query.logs_job`` on a cached store of 10 million records;
- ``breakdown``: the export path stage by stage (``python -m bench.pipeline breakdown``);
- ``common``: the staged ring, the agent's configuration and spool, one spool file through
  a sink, the OTLP receiver in a process of its own; ``sinks``: the OTLP sink made strict,
  and with the Python encoder.

``register_all()`` registers the scenarios; ``bench/ours.py`` calls it.
"""

from __future__ import annotations

from bench.pipeline.export import register_export
from bench.pipeline.query import register_query
from bench.pipeline.store import register_store
from bench.scenarios import scenarios

__all__ = ["register_all"]


def register_all() -> None:
    """Register the pipeline scenarios (a second call does nothing)."""
    if any(s.name == "agent.export" for s in scenarios()):
        return
    register_export()
    register_store()
    register_query()
