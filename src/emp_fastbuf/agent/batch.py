"""One spool file, parsed once for every sink.

A spool file holds raw lane chunks: untrusted bytes. Each sink needs its own view of them:
the OTLP sink transcodes logs and spans natively from the raw chunks and feeds the metric
records, parsed natively into points, to its aggregator; the store sink ingests rows built
natively. A :class:`Batch` builds each view the first time a sink asks for it, keeps it
for the others, and decodes each distinct resource blob once. A record or a resource blob that
does not parse is counted and skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from emp_fastbuf.agent.config import Signal
from emp_fastbuf.agent.redact import redact_record, redact_resource
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import LaneChunk, Record, Resource, reference

if TYPE_CHECKING:
    from emp_fastbuf.agent.otlp.metrics import MetricPoint
    from emp_fastbuf.agent.spool import Spool
    from emp_fastbuf.agent.transcode._transcode import Redactor

# Store rows per resource: one list per kind, in the order of ``Store.ingest_rows``.
StoreGroups = list[tuple[Resource, list[list[tuple[Any, ...]]]]]
RecordGroups = list[tuple[Resource, list[Record]]]
PointGroups = list[tuple[Resource, list["MetricPoint"]]]

# The store's row lists per signal: logs and events are the logs signal.
STORE_ROW_KINDS: dict[Signal, tuple[int, ...]] = {"logs": (0, 1), "traces": (2,), "metrics": (3,)}


class CorruptCounter(Protocol):
    """Where the decoders count the records they skip (the agent's ``Counters``)."""

    corrupt_records: int


@dataclass
class _Tally:
    corrupt_records: int = 0


def resource_of(meta: bytes, cache: dict[bytes, Resource]) -> Resource:
    """The producer's resource from its lane's blob, decoded once per ``cache``. A blob
    that does not decode is the resource ``{"emp.resource_corrupt": True}``."""
    res = cache.get(meta)
    if res is None:
        try:
            res = reference.decode_resource(meta) if meta else Resource()
        except ValueError:
            res = Resource(attributes={"emp.resource_corrupt": True})
        cache[meta] = res
    return res


def decode_batch(
    chunks: Iterable[LaneChunk],
    counters: CorruptCounter | None = None,
    resources: dict[bytes, Resource] | None = None,
) -> RecordGroups:
    """Raw lane chunks -> (resource, records) groups, with the reference decoder. A record
    that does not decode is counted in ``counters`` and skipped."""
    groups: RecordGroups = []
    cache: dict[bytes, Resource] = {} if resources is None else resources
    for chunk in chunks:
        res = resource_of(chunk.meta, cache)
        recs = list(_decoded(chunk.records, counters))
        if recs:
            groups.append((res, recs))
    return groups


def _decoded(raws: Iterable[bytes], counters: CorruptCounter | None) -> Iterator[Record]:
    """``raws`` decoded by the reference decoder; a record that does not decode is counted
    in ``counters`` and skipped."""
    for raw in raws:
        try:
            rec = reference.decode_record(raw)
        except ValueError:
            if counters is not None:
                counters.corrupt_records += 1
            continue
        yield rec


def store_groups(
    chunks: Iterable[LaneChunk],
    counters: CorruptCounter | None = None,
    resources: dict[bytes, Resource] | None = None,
    redactor: Redactor | None = None,
) -> StoreGroups:
    """Raw lane chunks -> the store's rows (``Store.ingest_rows``), built natively. The
    records the native path leaves (a corrupt record, text that is not UTF-8 and must be
    repaired...) go through the Python decoder, which counts the corrupt ones. With a
    ``redactor``, records and resources are redacted on both paths."""
    from emp_fastbuf.store import store_row

    groups: StoreGroups = []
    cache: dict[bytes, Resource] = {} if resources is None else resources
    redacted: dict[bytes, Resource] = {}
    for chunk in chunks:
        logs, events, spans, metrics, declined = _transcode.store_rows(chunk.records, redactor)
        by_kind = [logs, events, spans, metrics]
        for rec in _decoded(declined, counters):
            built = store_row(redact_record(rec, redactor))
            if built is not None:
                by_kind[built[0]].append(built[1])
        if logs or events or spans or metrics:
            groups.append((_redacted_resource(chunk.meta, cache, redacted, redactor), by_kind))
    return groups


def _redacted_resource(
    meta: bytes,
    cache: dict[bytes, Resource],
    redacted: dict[bytes, Resource],
    redactor: Redactor | None,
) -> Resource:
    """``resource_of`` redacted, once per ``redacted`` (one view of one batch)."""
    res = redacted.get(meta)
    if res is None:
        res = redacted[meta] = redact_resource(resource_of(meta, cache), redactor)
    return res


def only_signals(groups: StoreGroups, signals: Sequence[Signal]) -> StoreGroups:
    """The store's rows of ``signals`` only (the others go to their OTLP endpoints)."""
    if len(signals) == len(STORE_ROW_KINDS):
        return groups
    keep = {kind for signal in signals for kind in STORE_ROW_KINDS[signal]}
    kept = [
        (res, [rows if kind in keep else [] for kind, rows in enumerate(by_kind)])
        for res, by_kind in groups
    ]
    return [(res, by_kind) for res, by_kind in kept if any(by_kind)]


class Batch:
    """One spool file handed to the sinks: its raw chunks, the destinations that have it
    already, and the views the sinks build from it, each parsed at most once.

    Build one with :meth:`read` (what the agent does) or directly from chunks (tests,
    bench). The views are kept for the life of the object: one delivery attempt.
    """

    def __init__(self, file_id: str, chunks: list[LaneChunk], done: Iterable[str] = ()) -> None:
        self.file_id = file_id
        self.chunks = chunks
        self.done = frozenset(done)
        self._resources: dict[bytes, Resource] = {}
        self._store: tuple[StoreGroups, int] | None = None
        self._metrics: tuple[PointGroups, int] | None = None

    @classmethod
    def read(cls, spool: Spool, file_id: str) -> Batch:
        """``file_id`` read from ``spool``, with the destinations done for it. Raises what
        ``Spool.read`` raises: ``CorruptSpoolFile`` (the file is quarantined) and
        ``FileNotFoundError`` (it left the spool)."""
        chunks = spool.read(file_id)
        return cls(file_id, chunks, spool.done_for(file_id))

    def store_rows(
        self, signals: Sequence[Signal], redactor: Redactor | None = None
    ) -> tuple[StoreGroups, int]:
        """The store's rows of ``signals`` and the corrupt records met while building
        them (of every signal: the rows are built for all of them once, redacted by the
        first caller's ``redactor``)."""
        if self._store is None:
            tally = _Tally()
            groups = store_groups(self.chunks, tally, self._resources, redactor)
            self._store = (groups, tally.corrupt_records)
        groups, corrupt = self._store
        return only_signals(groups, signals), corrupt

    def metric_records(self, redactor: Redactor | None = None) -> tuple[PointGroups, int]:
        """The METRIC records, parsed natively into points for the metrics aggregator
        (``_transcode.metric_points``), per resource, and how many METRIC records are
        malformed. The other kinds are not parsed. Redacted by the first caller's
        ``redactor``."""
        if self._metrics is None:
            groups: PointGroups = []
            corrupt = 0
            redacted: dict[bytes, Resource] = {}
            for chunk in self.chunks:
                points, bad = _transcode.metric_points(chunk.records, redactor)
                corrupt += bad
                if points:
                    res = _redacted_resource(chunk.meta, self._resources, redacted, redactor)
                    groups.append((res, points))
            self._metrics = (groups, corrupt)
        return self._metrics
