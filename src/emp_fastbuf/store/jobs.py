"""Jobs: every job summarised from the chunk index (``jobs``), what the store holds about
why one failed (``job_failure``), and a machine's metrics over a time window
(``machine_series``).

A job is the records whose context has its ``job_id``. The chunk index answers most of a
summary: a chunk is a run of rows of one job, kind and source, with its id range, times
and (for logs) highest severity. Only spans (their start times and statuses) and the
earliest ERROR+ log of a failed job are read from the rows; logs, the bulk of a store,
are not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from emp_fastbuf.records import GAUGE, LOG, SEVERITY_ERROR, SPAN, STATUS_ERROR
from emp_fastbuf.store.model import JobFailure, JobSummary, MachineSeries, StoredRecord
from emp_fastbuf.store.query import _RECORD_COLUMNS, _RECORD_JOIN, Queries
from emp_fastbuf.store.schema import METRICS, RECORDS

# Job ids go into IN (...) lists this many at a time (SQLite's lowest variable limit is 999).
_IN_BATCH = 500
# Spans and events are in the chunks without a severity (those of logs have one). The
# rows are reached through their chunks' id ranges only: a unary + on a row column keeps
# SQLite from building an automatic index on it instead, which reads the whole table.
_SPAN_ROWS = (
    f"{_RECORD_JOIN} WHERE c.tbl = {RECORDS} AND c.job_id IS NOT NULL"
    f" AND c.max_severity IS NULL AND +r.kind = {SPAN}"
)
_ERROR_LOG_ROWS = (
    f"{_RECORD_JOIN} WHERE c.tbl = {RECORDS} AND c.job_id IS NOT NULL"
    f" AND c.max_severity >= {SEVERITY_ERROR} AND +r.kind = {LOG}"
    f" AND +r.severity_number >= {SEVERITY_ERROR}"
)
_HAS_EXCEPTION = (
    "(json_extract(r.attributes, '$.\"exception.type\"') IS NOT NULL"
    " OR json_extract(r.attributes, '$.\"exception.message\"') IS NOT NULL)"
)


def _first_line(text: str | None) -> str:
    """The first line of ``text`` ("" for none)."""
    return text.splitlines()[0] if text else ""


def _error_line(body: str | None, exc_type: Any, exc_message: Any) -> str:
    """An ERROR log's first error line: the cause, ``TYPE: message``, when it carries an
    exception (``log.exception("job failed")`` says less than its exception), else its
    body's first line."""
    if exc_type is None:
        return _first_line(body)
    return _first_line(f"{exc_type}: {exc_message}" if exc_message else str(exc_type))


def _exception_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k.startswith("exception.")}


class Jobs(Queries):
    """The job queries of ``Store``."""

    def jobs(
        self,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        failed: bool | None = None,
    ) -> list[JobSummary]:
        """Every job, newest (latest start) first. ``since_ns`` and ``until_ns`` keep the
        jobs whose time window (start to end) overlaps them, both included; ``failed``
        True keeps the failed jobs, False the others."""
        with self._snapshot():
            found = self._jobs(since_ns, None)
        if until_ns is not None:
            found = [j for j in found if j.start_unix_nano <= until_ns]
        if failed is not None:
            found = [j for j in found if j.failed == failed]
        found.sort(key=lambda j: (-j.start_unix_nano, j.job_id))
        return found

    def job(self, job_id: str) -> JobSummary | None:
        """The summary of one job; None when the store has no record of it."""
        with self._snapshot():
            found = self._jobs(None, job_id)
        return found[0] if found else None

    def _jobs(self, since_ns: int | None, job_id: str | None) -> list[JobSummary]:
        where, params = ["c.job_id IS NOT NULL"], []
        if job_id is not None:
            where.append("c.job_id = ?")
            params.append(job_id)
        having, having_params = "", []
        if since_ns is not None:
            having, having_params = " HAVING max(c.max_time) >= ?", [since_ns]
        # A retention pass deletes a chunk's rows older than its cutoff and raises the
        # chunk's min_time to the cutoff, below which no chunk is left: the chunks at
        # their table's lowest min_time may hold fewer rows than their id range, so their
        # rows are counted. Every other chunk holds its whole id range.
        oldest = [
            self._query(f"SELECT min(min_time) FROM chunks WHERE tbl = {tbl}", ())[0][0]
            for tbl in (RECORDS, METRICS)
        ]
        rows = self._query(
            "SELECT c.job_id, min(c.min_time), max(c.max_time), max(c.max_severity), sum(CASE"
            f" WHEN c.tbl = {RECORDS} AND c.min_time <= ? THEN (SELECT count(*) FROM records x"
            "  WHERE x.id BETWEEN c.first_id AND c.last_id)"
            f" WHEN c.tbl = {METRICS} AND c.min_time <= ? THEN (SELECT count(*) FROM"
            "  metric_updates x WHERE x.id BETWEEN c.first_id AND c.last_id)"
            " ELSE c.last_id - c.first_id + 1 END)"
            f" FROM chunks c WHERE {' AND '.join(where)} GROUP BY c.job_id{having}",
            [*oldest, *params, *having_params],
        )
        if not rows:
            return []
        # All jobs, or the few asked for: then the row queries below name them.
        named = None if job_id is None and since_ns is None else [row[0] for row in rows]
        span_start: dict[str, int] = {}
        for job, start in self._per_jobs(
            f"SELECT c.job_id, min(r.start_unix_nano) {_SPAN_ROWS}", " GROUP BY c.job_id", named
        ):
            span_start[job] = int(start)
        span_error: dict[str, str] = {}
        for job, name, message in self._per_jobs(
            f"SELECT c.job_id, r.name, r.status_message {_SPAN_ROWS}"
            f" AND r.status_code = {STATUS_ERROR}",
            " ORDER BY r.time_unix_nano, r.id",
            named,
        ):
            span_error.setdefault(job, _first_line(message) or name or "")
        log_error: dict[str, str] = {}
        for job, body, exc_type, exc_message in self._per_jobs(
            "SELECT c.job_id, r.body, json_extract(r.attributes, '$.\"exception.type\"'),"
            " json_extract(r.attributes, '$.\"exception.message\"')"
            f" {_ERROR_LOG_ROWS}",
            " ORDER BY r.time_unix_nano, r.id",
            named,
        ):
            log_error.setdefault(job, _error_line(body, exc_type, exc_message))
        sources: dict[str, set[int]] = {}
        for job, sid in self._per_jobs(
            "SELECT DISTINCT c.job_id, c.source_id FROM chunks c WHERE c.job_id IS NOT NULL",
            "",
            named,
        ):
            sources.setdefault(job, set()).add(int(sid))
        out: list[JobSummary] = []
        for job, lo, hi, severity, count in rows:
            start = min(int(lo), span_start.get(job, int(lo)))
            failed = (severity is not None and severity >= SEVERITY_ERROR) or job in span_error
            error = log_error.get(job, span_error.get(job)) if failed else None
            origins = [self._source(sid) for sid in sources.get(job, ())]
            out.append(
                JobSummary(
                    job_id=job,
                    failed=failed,
                    start_unix_nano=start,
                    end_unix_nano=int(hi),
                    records=int(count),
                    machines=sorted({m for _s, m, _w in origins if m is not None}),
                    workers=sorted({w for _s, _m, w in origins if w is not None}),
                    first_error=error,
                )
            )
        return out

    def _per_jobs(self, select: str, tail: str, jobs: Sequence[str] | None) -> Iterator[Any]:
        """The rows of ``select`` (conditions on ``chunks c`` included) + ``tail``: for
        every job, or for ``jobs`` only, a batch of them at a time."""
        if jobs is None:
            yield from self._query(select + tail, ())
            return
        for i in range(0, len(jobs), _IN_BATCH):
            batch = list(jobs[i : i + _IN_BATCH])
            marks = ", ".join("?" * len(batch))
            yield from self._query(f"{select} AND c.job_id IN ({marks}){tail}", batch)

    def job_failure(self, job_id: str, *, logs: int = 20) -> JobFailure | None:
        """Why a job failed: the failure record, the failing span's path from the root,
        the exception, and the last ``logs`` logs before the failure (``JobFailure``).
        None when the store has no record of the job; only the summary for a job that
        did not fail."""
        with self._snapshot():
            found = self._jobs(None, job_id)
            if not found:
                return None
            report = JobFailure(found[0])
            if report.job.failed:
                self._fill_failure(report, logs)
        return report

    def _fill_failure(self, report: JobFailure, logs: int) -> None:
        job = report.job.job_id
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} {_ERROR_LOG_ROWS} AND c.job_id = ? AND +r.job_id = ?"
            f" ORDER BY NOT {_HAS_EXCEPTION}, r.time_unix_nano, r.id LIMIT 1",
            (job, job),
        )
        failure_log = self._record(rows[0]) if rows else None
        errored = [
            self._record(row)
            for row in self._query(
                f"SELECT {_RECORD_COLUMNS} {_SPAN_ROWS} AND r.status_code = {STATUS_ERROR}"
                " AND c.job_id = ? AND +r.job_id = ? ORDER BY r.time_unix_nano, r.id",
                (job, job),
            )
        ]
        failure = failure_log if failure_log is not None else errored[0] if errored else None
        if failure is None:  # a failed job has one or the other; a damaged index may not
            return
        report.failure = failure
        # The failing span: the one the failure record belongs to, else the errored span
        # that ended first (a span ends after its children: the innermost).
        path = self._span_path(failure) if failure.kind == "log" else []
        if not path and errored:
            path = self._span_path(errored[0])
        report.span_path = path
        if failure_log is not None and _exception_attrs(failure_log.attributes):
            report.exception = _exception_attrs(failure_log.attributes)
            report.exception_source = "log"
        else:
            seen = {s.id for s in path}
            for span in [*reversed(path), *(s for s in errored if s.id not in seen)]:
                event = next((e for e in span.events if e.get("name") == "exception"), None)
                attrs = _exception_attrs(dict((event or {}).get("attributes") or {}))
                if attrs:
                    report.exception, report.exception_source = attrs, "span event"
                    break
        report.logs = self._logs_before(job, failure, logs)

    def _span_path(self, rec: StoredRecord) -> list[StoredRecord]:
        """The span ``rec`` is (a span) or belongs to (a log), and its ancestors by
        ``parent_span_id`` within the trace, root first; empty when that span is not
        stored."""
        if rec.trace_id is None or rec.span_id is None:
            return []
        view = self.trace(rec.trace_id)
        if view is None:
            return []
        spans = {n.span.span_id: n.span for n in view.spans if n.span.span_id is not None}
        visited: set[str] = set()
        path: list[StoredRecord] = []
        at: str | None = rec.span_id
        while at is not None and at in spans and at not in visited:  # parent cycles end
            visited.add(at)
            path.append(spans[at])
            at = spans[at].parent_span_id
        path.reverse()
        return path

    def _logs_before(self, job: str, failure: StoredRecord, limit: int) -> list[StoredRecord]:
        """The job's newest ``limit`` logs at or before the failure's time, the failure
        itself left out, oldest first."""
        at = failure.time_unix_nano
        row_where = [f"+r.kind = {LOG}", "+r.job_id = ?", "+r.time_unix_nano <= ?"]
        row_params: list[Any] = [job, at]
        if failure.kind == "log":
            row_where.append("r.id != ?")
            row_params.append(failure.id)
        rows = self._newest(
            _RECORD_COLUMNS,
            "records r",
            # Only the chunks of logs (they have a severity) that start by then.
            ["c.tbl = ?", "c.job_id = ?", "c.max_severity IS NOT NULL", "c.min_time <= ?"],
            [RECORDS, job, at],
            row_where,
            row_params,
            limit,
        )
        rows.reverse()
        return [self._record(row) for row in rows]

    def machine_series(
        self,
        machines: Sequence[str],
        names: Sequence[str],
        since_ns: int,
        until_ns: int,
    ) -> list[MachineSeries]:
        """The gauges named ``names`` that the machines report about themselves (their
        sources without a worker id: the agent's machine metrics) from ``since_ns`` to
        ``until_ns``, both included; one series per machine, name, unit and attributes,
        in the order of ``machines`` and ``names``."""
        if not machines or not names:
            return []
        marks = ", ".join("?" * len(machines))
        sids = {
            int(sid): machine
            for sid, machine in self._query(
                f"SELECT id, machine_id FROM sources WHERE machine_id IN ({marks})"
                " AND worker_id IS NULL",
                list(machines),
            )
        }
        if not sids:
            return []
        sid_marks = ", ".join("?" * len(sids))
        name_marks = ", ".join("?" * len(names))
        rows = self._query(
            "SELECT m.source_id, m.name, m.unit, coalesce(m.attributes, ''), m.time_unix_nano,"
            " m.value FROM chunks c CROSS JOIN metric_updates m"
            " ON m.id BETWEEN c.first_id AND c.last_id"
            f" WHERE c.tbl = {METRICS} AND c.source_id IN ({sid_marks}) AND c.max_time >= ?"
            f" AND c.min_time <= ? AND +m.name IN ({name_marks}) AND +m.instrument = {GAUGE}"
            " AND +m.time_unix_nano BETWEEN ? AND ? AND +m.value IS NOT NULL"
            " ORDER BY m.time_unix_nano, m.id",
            [*sids, since_ns, until_ns, *names, since_ns, until_ns],
        )
        series: dict[tuple[str, str, str, str], MachineSeries] = {}
        for sid, name, unit, attrs, t, value in rows:
            key = (sids[int(sid)], name, unit, attrs)
            s = series.get(key)
            if s is None:
                s = series[key] = MachineSeries(
                    name=name,
                    unit=unit,
                    machine_id=sids[int(sid)],
                    attributes=json.loads(attrs) if attrs else {},
                    times=[],
                    values=[],
                )
            try:
                s.values.append(float(value))
            except (TypeError, ValueError) as exc:
                raise self._bad_row(exc) from None
            s.times.append(int(t))
        order = {m: i for i, m in enumerate(machines)}
        rank = {n: i for i, n in enumerate(names)}
        return sorted(
            series.values(),
            key=lambda s: (
                order[s.machine_id],
                rank[s.name],
                json.dumps(s.attributes, sort_keys=True),
            ),
        )
