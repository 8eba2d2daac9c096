"""The query scenario: ``store.query.logs_job``, ``Store.logs(job=..., limit=1000)`` (what
``fastbuf logs --job`` runs) on a store of ``STORE_RECORDS`` LOG records, built once and
cached under ``bench/results/.cache/`` (see ``ensure_query_store``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.pipeline.common import Scenario
from bench.scenarios import register

REPO = Path(__file__).resolve().parent.parent.parent
CACHE_DIR = REPO / "bench" / "results" / ".cache"

STORE_RECORDS = 10_000_000
QUERY_CALLS = 200
QUERY_LIMIT = 1000  # the CLI's default --limit

# ---- the 10M-record store for the query ---------------------------------------------------------

# Bump when the rows the builder writes change: a cached store of another version is rebuilt.
_GENERATOR_VERSION = 3
_SOURCES = 64  # 8 machines x 8 GPUs
_CONCURRENT_JOBS = 16  # jobs running at any time; each on 4 of the 64 workers
_JOBS = 1024
_T0_NS = 1_700_000_000_000_000_000
_STEP_NS = 60_000_000  # 10M records span ~7 days
_QUERY_JOBS = 64


def _job_block(records: int) -> int:
    """Records per block of ``_CONCURRENT_JOBS`` jobs that run at the same time."""
    return max(1, records // (_JOBS // _CONCURRENT_JOBS))


def _row_values(i: int, records: int) -> tuple[Any, ...]:
    """Row ``i`` of the query store, as Python values (the SQL below computes the same)."""
    job = (i // _job_block(records)) * _CONCURRENT_JOBS + i % _CONCURRENT_JOBS
    return (
        _T0_NS + i * _STEP_NS,
        1 + i % _SOURCES,
        f"job-{job:05d}",
        {"gpu_id": i % 8, "batch_size": 128, "model": "m-8b", "step": i},
    )


def _row_sql(records: int) -> str:
    """``INSERT ... SELECT`` over a recursive counter: the rows of ``_row_values`` from
    ``_SOURCES`` to ``records - 1``, generated inside SQLite (no Python per row)."""
    block = _job_block(records)
    return f"""
        WITH RECURSIVE g(i) AS (SELECT {_SOURCES} UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?)
        INSERT INTO records (time_unix_nano, kind, source_id, job_id, body, severity_number,
                             severity_text, attributes)
        SELECT {_T0_NS} + i * {_STEP_NS}, 1, 1 + i % {_SOURCES},
               printf('job-%05d', (i / {block}) * {_CONCURRENT_JOBS} + i % {_CONCURRENT_JOBS}),
               'step done', 9, 'INFO',
               printf('{{"gpu_id":%d,"batch_size":128,"model":"m-8b","step":%d}}', i % 8, i)
        FROM g
    """


def _store_signature(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return sorted(
        conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != ?", ("",))
    )


def _build_query_store(path: Path, records: int) -> None:
    """Build the store at ``path``: the schema from ``Store``, one record per source through
    ``Store.ingest`` (the real path, which also creates the sources), then the rest in one
    transaction with the indexes dropped and re-created from their own SQL afterwards."""
    from emp_fastbuf.records import LOG, Record, Resource
    from emp_fastbuf.store import Store

    first = []
    for i in range(_SOURCES):
        t, _sid, job, attrs = _row_values(i, records)
        machine = f"node-{i // 8:02d}"
        res = Resource(
            {"service.name": "train", "emp.machine_id": machine, "emp.worker_id": f"{machine}-{i}"}
        )
        rec = Record(
            kind=LOG,
            time_unix_nano=t,
            context={"job_id": job},
            attributes=attrs,
            severity_number=9,
            severity_text="INFO",
            body="step done",
        )
        first.append((res, [rec]))
    with Store(path) as store:
        if store.ingest(first) != _SOURCES:
            raise RuntimeError("Store.ingest did not take the first records")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        reference = _store_signature(conn)
        # The generated rows must be what Store.ingest writes: compare the SQL's rows for
        # the ingested indexes with the ingested rows, every column but the id.
        columns = (
            "time_unix_nano, kind, source_id, job_id, name, body, severity_number, "
            "severity_text, trace_id, span_id, parent_span_id, start_unix_nano, status_code, "
            "status_message, span_kind, attributes, events, links"
        )
        ingested = conn.execute(f"SELECT {columns} FROM records ORDER BY id").fetchall()
        check = _row_sql(records).replace(f"SELECT {_SOURCES} UNION", "SELECT 0 UNION")
        conn.execute("CREATE TEMP TABLE check_rows AS SELECT * FROM main.records WHERE 0")
        conn.execute(check.replace("INSERT INTO records", "INSERT INTO check_rows"), (_SOURCES,))
        generated = conn.execute(
            f"SELECT {columns} FROM check_rows ORDER BY time_unix_nano"
        ).fetchall()
        conn.execute("DROP TABLE check_rows")
        if generated != ingested:
            raise RuntimeError(
                "the bulk rows differ from what Store.ingest writes: "
                f"{generated[:1]!r} != {ingested[:1]!r}"
            )
        conn.execute("PRAGMA journal_mode = OFF")  # a failed build is thrown away whole
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name IN ('records', 'chunks') AND sql IS NOT NULL"
        ).fetchall()
        conn.execute("BEGIN")
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute(_row_sql(records), (records,))
        # The chunk index as the agent writes it at this store's rate (16 records a second,
        # each from another worker, batches of one second): one chunk per record, the
        # least favourable case for the query.
        conn.execute(
            "INSERT INTO chunks (tbl, first_id, last_id, min_time, max_time, source_id, job_id,"
            " max_severity) SELECT 0, id, id, time_unix_nano, time_unix_nano, source_id, job_id,"
            " severity_number FROM records WHERE id > ?",
            (_SOURCES,),
        )
        conn.execute("UPDATE sequences SET next_id = ? WHERE tbl = 0", (records + 1,))
        for _name, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")  # as Store leaves it
        if _store_signature(conn) != reference:
            raise RuntimeError("the rebuilt indexes differ from the store's schema")
        count = conn.execute("SELECT max(id), count(*) FROM records").fetchone()
        if tuple(count) != (records, records):
            raise RuntimeError(f"built {count!r} records, expected {records}")
    finally:
        conn.close()


def _cache_meta(records: int) -> dict[str, int]:
    from emp_fastbuf.store import SCHEMA_VERSION

    return {
        "generator": _GENERATOR_VERSION,
        "schema_version": SCHEMA_VERSION,
        "records": records,
        "jobs": _JOBS,
    }


def _cached_store_ok(home: Path, records: int) -> bool:
    from emp_fastbuf.errors import StoreError
    from emp_fastbuf.store import Store

    try:
        meta = json.loads((home / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("layout") != _cache_meta(records):
        return False
    try:
        with Store(home / "store.sqlite", readonly=True) as store:  # checks the schema version
            return store.last_id() == records
    except StoreError:
        return False


def ensure_query_store(records: int = STORE_RECORDS) -> tuple[Path, str]:
    """The home folder of a store of ``records`` LOG records, built if the cache has none
    of this size, generator and schema version. Returns ``(home, how)``, ``how`` saying
    whether it was reused or built and in how many seconds."""
    home = CACHE_DIR / f"store-{records}"
    if _cached_store_ok(home, records):
        return home, "reused from the cache"
    CACHE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.rmtree(home, ignore_errors=True)
    tmp = CACHE_DIR / f".build-{records}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    try:
        _build_query_store(tmp / "store.sqlite", records)
        took = time.monotonic() - started
        meta = {"layout": _cache_meta(records), "build_s": round(took, 1)}
        (tmp / "build.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        os.rename(tmp, home)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return home, f"built in {took:.0f} s"


def _query_jobs(records: int) -> list[str]:
    """Jobs spread over the whole store (every one has about records/_JOBS records)."""
    step = _JOBS // _QUERY_JOBS
    return [f"job-{j:05d}" for j in range(step // 2, _JOBS, step)]


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMP_FASTBUF_")}


def _cli_logs(home: Path, job: str) -> str:
    """One ``fastbuf logs --job JOB`` in a subprocess, output to a pipe; what it took."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", job, "--home", str(home)],
        capture_output=True,
        env=_cli_env(),
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(
            f"fastbuf logs --job {job} exited {out.returncode}: {out.stderr[-500:]!r}"
        )
    lines = out.stdout.count(b"\n")
    return f"`fastbuf logs --job {job}` as a subprocess: {took:.2f} s wall, {lines:,} lines"


def _query_name(records: int) -> str:
    return (
        "store.query.logs_job" if records == STORE_RECORDS else f"store.query.logs_job[{records}]"
    )


def store_query_logs_job(records: int = STORE_RECORDS) -> Scenario:
    """``Store.logs(job=..., limit=1000)`` on the cached store, a different job each call."""
    from emp_fastbuf.store import Store

    home, how = ensure_query_store(records)
    store = Store(home / "store.sqlite", readonly=True)
    jobs = itertools.cycle(_query_jobs(records))
    logs = store.logs

    def call() -> None:
        found = logs(job=next(jobs), limit=QUERY_LIMIT)
        if len(found) != QUERY_LIMIT:
            raise RuntimeError(f"the query found {len(found)} records, expected {QUERY_LIMIT}")

    def teardown() -> str:
        job = _query_jobs(records)[0]
        try:
            started = time.perf_counter()
            whole = len(logs(job=job))  # ``--limit 0``: every record of the job
            took = time.perf_counter() - started
        finally:
            store.close()
        cli = _cli_logs(home, job)
        return (
            f"store of {records:,} records {how}; all {whole:,} records of {job} "
            f"(--limit 0) in {1e3 * took:.0f} ms; {cli}"
        )

    return call, teardown


def register_query() -> None:
    """Register ``store.query.logs_job``."""
    register(
        _query_name(STORE_RECORDS),
        store_query_logs_job,
        calls=QUERY_CALLS,
        quick_calls=20,
        warmup=5,
        budget="p50_ns < 100000000",
        description=f"Store.logs(job=..., limit={QUERY_LIMIT}) on {STORE_RECORDS:,} records",
    )
