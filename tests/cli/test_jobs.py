"""``fastbuf jobs`` and ``fastbuf why --job``: the job summaries and the failure report on
stores built here, so each definition in docs/cli.md is checked exactly (which job
failed, its first error line, start and duration, the failure, the failing span, the
exception and its fallback, the logs before, the machine metrics, the evidence), with
the exit codes and the ``--json`` fields. The end-to-end run through real workers and a
real agent is in test_jobs_e2e.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf import cli
from emp_fastbuf.cli import jobs as jobs_cli
from emp_fastbuf.cli import render
from emp_fastbuf.records import (
    EVENT,
    GAUGE,
    STATUS_ERROR,
    STATUS_OK,
    Record,
    Resource,
    SpanEvent,
)
from emp_fastbuf.store import Store
from support.store import M1, M2, T0, TRACE_B, W1, W2, W3, S, log, metric, span

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
JOB_FIELDS = {
    "job_id",
    "status",
    "start_unix_nano",
    "start",
    "end_unix_nano",
    "end",
    "duration_ns",
    "machines",
    "workers",
    "records",
    "first_error",
}
WHY_FIELDS = {
    "job",
    "status",
    "failure",
    "span_path",
    "exception",
    "logs",
    "machine_metrics",
    "evidence",
}
STACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/gen/run.py", line 88, in main\n'
    "    generate(prompt)\n"
    '  File "/srv/gen/unet.py", line 412, in load_weights\n'
    '    raise RuntimeError("CUDA out of memory")\n'
    "RuntimeError: CUDA out of memory\n"
)
CRASH_ATTRS = {
    "exception.type": "RuntimeError",
    "exception.message": "CUDA out of memory",
    "exception.stacktrace": STACK,
}
# Span ids of the crash job's trace (B): job > generate > load_model.
JOB_SPAN, GEN_SPAN, LOAD_SPAN = (bytes([0x10 + i]) * 8 for i in range(3))


@pytest.fixture(autouse=True)
def in_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "piped", lambda: False)
    monkeypatch.setenv("COLUMNS", "200")


def ctx(job: str) -> dict[str, object]:
    return {"job_id": job}


def errored(rec: Record, message: str = "") -> Record:
    return dataclasses.replace(rec, status_code=STATUS_ERROR, status_message=message)


def crash_job() -> list[Record]:
    """Job 'crash' on w1 (trace B, 10 s to 14 s): 25 info logs in load_model, an event, a
    plain ERROR log, then the crash record with exception attributes."""
    c = ctx("crash")
    recs = [
        errored(span("job", JOB_SPAN, None, 10.0, 14.0, trace=TRACE_B, context=c)),
        errored(span("generate", GEN_SPAN, JOB_SPAN, 10.5, 13.9, trace=TRACE_B, context=c)),
        errored(span("load_model", LOAD_SPAN, GEN_SPAN, 11.0, 13.8, trace=TRACE_B, context=c)),
    ]
    recs += [
        log(f"denoise step {i}", 11.0 + i * 0.1, trace=TRACE_B, span_id=LOAD_SPAN, context=c)
        for i in range(25)
    ]
    recs.append(Record(kind=EVENT, time_unix_nano=T0 + 13 * S, name="oom.near", context=c))
    recs.append(log("retrying allocation", 13.5, severity=17, text="ERROR", context=c))
    recs.append(
        log(
            "RuntimeError: CUDA out of memory",
            13.7,
            severity=17,
            text="ERROR",
            trace=TRACE_B,
            span_id=LOAD_SPAN,
            context=c,
            attributes=CRASH_ATTRS,
        )
    )
    recs.append(log("after the failure", 13.75, context=c))
    return recs


def groups() -> list[tuple[Resource, list[Record]]]:
    """Jobs: 'ok' (a span that starts before its records), 'warned' (a WARN log only),
    'logged' (ERROR logs on three workers of two machines), 'spanned' (an errored span
    with a status message), 'nameonly' (an errored span without one), 'crash'."""
    w1 = [
        span("job", b"\x01" * 8, None, 1.0, 2.0, status=STATUS_OK, context=ctx("ok")),
        log("ok step", 1.5, context=ctx("ok")),
        metric("steps", GAUGE, 1.6, 3, context=ctx("ok")),
        log("careful", 2.5, severity=13, text="WARN", context=ctx("warned")),
        log("logged starts", 3.0, context=ctx("logged")),
        errored(
            span("fetch", b"\x02" * 8, None, 5.0, 6.0, context=ctx("spanned")),
            "timeout after 30 s\nwhile fetching",
        ),
        span("outer", b"\x03" * 8, None, 4.5, 7.0, context=ctx("spanned")),
        errored(span("upload", b"\x04" * 8, None, 8.0, 8.5, context=ctx("nameonly"))),
        *crash_job(),
    ]
    w2 = [log("disk full", 3.6, severity=17, text="ERROR", context=ctx("logged"))]
    w3 = [log("first bad\nsecond line", 3.2, severity=21, text="FATAL", context=ctx("logged"))]
    m1 = [
        metric("system.cpu.utilization", GAUGE, -1.0, 0.99, unit="1"),  # before the window
        metric("system.cpu.utilization", GAUGE, 2.0, 0.25, unit="1"),
        metric("system.cpu.utilization", GAUGE, 12.0, 0.75, unit="1"),
        metric("system.cpu.utilization", GAUGE, 20.0, 0.5, unit="1"),
        metric(
            "system.cpu.utilization",
            GAUGE,
            12.0,
            1.0,
            unit="1",
            attributes={"cpu.logical_number": 0},
        ),
        metric(
            "system.memory.utilization",
            GAUGE,
            12.0,
            0.4,
            unit="1",
            attributes={"system.memory.state": "used"},
        ),
        metric(
            "system.memory.utilization",
            GAUGE,
            12.0,
            0.6,
            unit="1",
            attributes={"system.memory.state": "free"},
        ),
        *(
            metric(
                "hw.gpu.memory.usage",
                GAUGE,
                10.0 + i,
                (70 + i) * 2**30,
                unit="By",
                attributes={"hw.id": f"GPU-{g}", "hw.name": "NVIDIA H200"},
            )
            for i in range(5)
            for g in (0, 1)
        ),
        metric("hw.gpu.utilization", GAUGE, 12.0, 1.0, unit="1", attributes={"hw.id": "GPU-0"}),
        metric("system.cpu.utilization", GAUGE, 30.0, 0.1, unit="1"),  # after the window
    ]
    # A worker's own gauge of the same name and another machine's: not the job's machine.
    w1.append(metric("system.cpu.utilization", GAUGE, 12.0, 0.01, unit="1"))
    m2 = [metric("system.cpu.utilization", GAUGE, 12.0, 0.02, unit="1")]
    return [(W1, w1), (W2, w2), (W3, w3), (M1, m1), (M2, m2)]


@pytest.fixture
def home(fastbuf_home: Path) -> Path:
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest(groups())
    return fastbuf_home


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("fastbuf "), err
    for w in words:
        assert w in err, err


def fastbuf(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), "TZ": "UTC"},
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---- jobs ---------------------------------------------------------------------------------


def test_job_summaries_follow_the_definitions(home: Path) -> None:
    with Store(home / "store.sqlite", readonly=True) as store:
        found = {j.job_id: j for j in store.jobs()}
    assert set(found) == {"ok", "warned", "logged", "spanned", "nameonly", "crash"}
    ok = found["ok"]
    # The span starts before the job's first log; the span's end is the job's end.
    assert (ok.status, ok.start_unix_nano, ok.duration_ns) == ("ok", T0 + S, S)
    assert (ok.records, ok.machines, ok.workers, ok.first_error) == (3, ["m1"], ["w1"], None)
    assert found["warned"].status == "ok"
    logged = found["logged"]
    # The earliest ERROR+ log (the FATAL one on w3), its first line.
    assert (logged.status, logged.first_error) == ("failed", "first bad")
    assert (logged.machines, logged.workers) == (["m1", "m2"], ["w1", "w2", "w3"])
    assert (logged.start_unix_nano, logged.end_unix_nano) == (T0 + 3 * S, T0 + int(3.6 * S))
    assert logged.records == 3
    # No ERROR log: the errored span's status message (first line), else its name.
    assert (found["spanned"].status, found["spanned"].first_error) == (
        "failed",
        "timeout after 30 s",
    )
    assert found["spanned"].start_unix_nano == T0 + int(4.5 * S)
    assert (found["nameonly"].status, found["nameonly"].first_error) == ("failed", "upload")
    # An ERROR log with exception attributes is not preferred here: the earliest one is.
    assert found["crash"].first_error == "retrying allocation"
    assert found["crash"].records == 3 + 25 + 1 + 3


def test_the_first_error_line_of_a_logged_exception_is_its_cause(fastbuf_home: Path) -> None:
    """``log.exception("job failed")``: the line names the exception, not the words."""
    c = ctx("logexc")
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest(
            [
                (
                    W1,
                    [
                        log(
                            "job failed",
                            1.0,
                            severity=17,
                            text="ERROR",
                            context=c,
                            attributes=CRASH_ATTRS,
                        ),
                        log("later", 2.0, severity=17, text="ERROR", context=c),
                    ],
                )
            ]
        )
        (job,) = store.jobs()
    assert (job.status, job.first_error) == ("failed", "RuntimeError: CUDA out of memory")


def test_jobs_newest_first_and_only_failed(home: Path) -> None:
    with Store(home / "store.sqlite", readonly=True) as store:
        assert [j.job_id for j in store.jobs()] == [
            "crash",
            "nameonly",
            "spanned",
            "logged",
            "warned",
            "ok",
        ]
        assert [j.job_id for j in store.jobs(failed=True)] == [
            "crash",
            "nameonly",
            "spanned",
            "logged",
        ]
        assert [j.job_id for j in store.jobs(failed=False)] == ["warned", "ok"]


def test_since_and_until_keep_the_jobs_whose_time_overlaps(home: Path) -> None:
    with Store(home / "store.sqlite", readonly=True) as store:

        def ids(since_s: float | None, until_s: float | None) -> list[str]:
            since = None if since_s is None else T0 + int(since_s * S)
            until = None if until_s is None else T0 + int(until_s * S)
            return [j.job_id for j in store.jobs(since_ns=since, until_ns=until)]

        # 'ok' runs 1 s to 2 s: still running at 2 s, not after.
        assert "ok" in ids(2.0, None) and "ok" not in ids(2.1, None)
        # 'spanned' starts at 4.5 s (its outer span), its first record ends at 6 s.
        assert "spanned" in ids(None, 4.6) and "spanned" not in ids(None, 4.4)
        assert ids(3.1, 3.5) == ["logged"]
        assert ids(100.0, None) == []


def test_jobs_human_table(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["jobs", "--utc"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["job", "status", "start"]
    row = next(x for x in lines if x.startswith("logged "))
    assert "failed" in row and "m1 +1" in row and "w1 +2" in row and "first bad" in row
    assert "2023-11-14 22:13:23.000 +00:00" in row and "600.0 ms" in row
    ok = next(x for x in lines if x.startswith("ok "))
    assert " ok " in ok and "1.00 s" in ok and ok.rstrip().endswith("-")


def test_jobs_table_on_a_narrow_terminal_cuts_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(["jobs", "--utc"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    # Wrapped cells share lines: every word of them is there.
    words = out.split()
    for text in ("retrying allocation", "timeout after 30 s", "first bad", "22:13:30.000"):
        assert all(w in words for w in text.split()), text
    assert "m1 +1" in out and "w1 +2" in out
    assert [x.split()[0] for x in lines if x and not x.startswith(" ")][1:] == [
        "crash",
        "nameonly",
        "spanned",
        "logged",
        "warned",
        "ok",
    ]


def test_jobs_json_lines(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["jobs", "--failed", "--json"], capsys)
    assert code == 0
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["job_id"] for o in objs] == ["crash", "nameonly", "spanned", "logged"]
    for o in objs:
        assert set(o) == JOB_FIELDS
    logged = objs[-1]
    assert logged == {
        "job_id": "logged",
        "status": "failed",
        "start_unix_nano": T0 + 3 * S,
        "start": "2023-11-14T22:13:23.000000000Z",
        "end_unix_nano": T0 + int(3.6 * S),
        "end": "2023-11-14T22:13:23.600000000Z",
        "duration_ns": int(0.6 * S),
        "machines": ["m1", "m2"],
        "workers": ["w1", "w2", "w3"],
        "records": 3,
        "first_error": "first bad",
    }


def test_jobs_piped_is_one_line_per_job_subprocess(home: Path) -> None:
    """subprocess: in a pipe every job is one line with all its machines and workers."""
    out = fastbuf(["jobs", "--utc"], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and lines[0].startswith("crash  failed  ")
    logged = next(x for x in lines if x.startswith("logged "))
    assert logged == (
        "logged  failed  2023-11-14 22:13:23.000 +00:00  600.0 ms  m1,m2  w1,w2,w3  3 records"
        "  first bad"
    )
    assert "\x1b" not in out.stdout


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["jobs", "--since", "bogus"], 2, ["--since", "'bogus'"]),
        (["jobs", "--until", "2023-13-01T00:00:00Z"], 2, ["--until", "not a valid time"]),
        (["jobs", "--since", "1m", "--until", "2h"], 2, ["--until", "before --since"]),
        (["jobs", "--failed", "--since", "1m"], 1, ["no matching failed jobs"]),
        (["why"], 2, ["which job?", "--job ID"]),
        (["why", "--job", "nope"], 1, ["no records for job 'nope'"]),
    ],
)
def test_bad_arguments_and_unknown_jobs(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: list[str]
) -> None:
    got, out, err = run(argv, capsys)
    assert (got, out) == (code, "")
    one_line_error(err, f"fastbuf {argv[0]}:", *words)


def test_no_store_is_exit_1(fastbuf_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["jobs"], ["why", "--job", "x"]):
        code, _out, err = run(argv, capsys)
        assert code == 1
        one_line_error(err, "no store at")


# ---- why: the store's sections --------------------------------------------------------------


def test_the_failure_is_the_exception_log_and_its_span_path(home: Path) -> None:
    with Store(home / "store.sqlite", readonly=True) as store:
        report = store.job_failure("crash")
    assert report is not None and report.failure is not None
    # The earliest ERROR+ log with exception attributes, not the earlier plain one.
    assert report.failure.body == "RuntimeError: CUDA out of memory"
    assert [s.name for s in report.span_path] == ["job", "generate", "load_model"]
    assert (report.exception, report.exception_source) == (CRASH_ATTRS, "log")
    # The 20 newest logs at or before the failure: not the failure, not the event, not
    # the log after it; the plain ERROR log is one of them.
    bodies = [r.body for r in report.logs]
    assert len(bodies) == 20
    assert bodies[-1] == "retrying allocation"
    assert bodies[:-1] == [f"denoise step {i}" for i in range(6, 25)]


def test_the_exception_falls_back_to_the_span_event(fastbuf_home: Path) -> None:
    """No ERROR log: the failure is the errored span that ended first, and the exception
    comes from the exception event of the failing span."""
    c = ctx("handled")
    exc_attrs = {**CRASH_ATTRS, "exception.escaped": True}
    load = errored(
        span(
            "load_model",
            LOAD_SPAN,
            GEN_SPAN,
            1.0,
            2.0,
            trace=TRACE_B,
            context=c,
            events=[SpanEvent("exception", T0 + 2 * S, exc_attrs)],
        ),
        "RuntimeError: CUDA out of memory",
    )
    recs = [
        # A parent outside the job: the path still follows parent_span_id in the trace.
        span("request", JOB_SPAN, None, 0.5, 3.0, trace=TRACE_B, context={}),
        errored(span("generate", GEN_SPAN, JOB_SPAN, 0.8, 2.5, trace=TRACE_B, context=c)),
        load,
        log("loading", 1.5, context=c),
    ]
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest([(W1, recs)])
        report = store.job_failure("handled")
    assert report is not None and report.failure is not None
    assert (report.failure.kind, report.failure.name) == ("span", "load_model")
    assert [s.name for s in report.span_path] == ["request", "generate", "load_model"]
    assert report.exception == exc_attrs and report.exception_source == "span event"
    assert [r.body for r in report.logs] == ["loading"]
    assert report.job.first_error == "RuntimeError: CUDA out of memory"


def test_a_failure_outside_spans_takes_the_innermost_errored_span(fastbuf_home: Path) -> None:
    c = ctx("nospan")
    recs = [
        errored(span("job", JOB_SPAN, None, 1.0, 4.0, trace=TRACE_B, context=c)),
        errored(span("step", GEN_SPAN, JOB_SPAN, 2.0, 3.0, trace=TRACE_B, context=c)),
        log("gave up", 3.5, severity=17, text="ERROR", context=c),
    ]
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest([(W1, recs)])
        report = store.job_failure("nospan")
    assert report is not None and report.failure is not None
    assert report.failure.body == "gave up"
    assert [s.name for s in report.span_path] == ["job", "step"]
    assert report.exception is None


def test_why_report_sections_in_order(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["why", "--job", "crash", "--utc"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "job crash failed: retrying allocation"
    headings = [
        "failing span, from the root (trace 4bf92f35)",
        "exception (from the ERROR log)",
        "the last logs before the failure (up to 20)",
        "machine metrics of m1 from",
        "what could hide evidence",
    ]
    at = [next(i for i, x in enumerate(lines) if x.startswith(h)) for h in headings]
    assert at == sorted(at)
    path = lines[at[0] + 1 : at[0] + 4]
    assert [x.split()[0] for x in path] == ["job", "generate", "load_model"]
    assert path[2].endswith("error  <- the failing span") and "2.80 s" in path[2]
    section = "\n".join(lines[at[1] : at[2]])
    assert "RuntimeError: CUDA out of memory" in section
    assert "raised in load_weights at /srv/gen/unet.py:412" in section
    assert 'File "/srv/gen/run.py", line 88, in main' in section  # the full stack trace
    logs = lines[at[2] + 1 : at[3] - 1]
    assert len(logs) == 20 and "denoise step 6" in logs[0] and "retrying allocation" in logs[-1]
    assert (
        "2023-11-14 22:13:31.600 +00:00 m1/w1 [crash] trace:4bf92f35 INFO  denoise step 6"
        in logs[0]
    )
    metrics = [x.strip() for x in lines[at[3] + 1 : at[4] - 1]]
    # The job runs 10 s to 14 s: the window is 0 s to 24 s; the overall CPU and used
    # memory only, one line per GPU; the worker's own gauge and m2's are not m1's.
    assert metrics == [
        "hw.gpu.memory.usage NVIDIA H200 GPU-0  min 70.0 GiB  max 74.0 GiB  last 74.0 GiB  ▁▃▅▇█",
        "hw.gpu.memory.usage NVIDIA H200 GPU-1  min 70.0 GiB  max 74.0 GiB  last 74.0 GiB  ▁▃▅▇█",
        "hw.gpu.utilization gpu GPU-0  min 100%  max 100%  last 100%  ▅",
        "system.cpu.utilization  min 25%  max 75%  last 50%  ▁█▅",
        "system.memory.utilization  min 40%  max 40%  last 40%  ▅",
    ]
    assert lines[at[3]].startswith(
        "machine metrics of m1 from 2023-11-14 22:13:20.000 +00:00 to 2023-11-14 22:13:44.000"
    )


def test_why_json_has_the_same_sections(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["why", "--job", "crash", "--json"], capsys)
    assert code == 0 and out.count("\n") == 1
    obj = json.loads(out)
    assert set(obj) == WHY_FIELDS
    assert obj["status"] == "failed" and set(obj["job"]) == JOB_FIELDS
    assert obj["failure"]["kind"] == "log" and obj["failure"]["text"] == "retrying allocation"
    assert obj["failure"]["record"]["body"] == "RuntimeError: CUDA out of memory"
    assert [(s["name"], s["depth"]) for s in obj["span_path"]] == [
        ("job", 0),
        ("generate", 1),
        ("load_model", 2),
    ]
    assert obj["span_path"][2]["duration_ns"] == int(2.8 * S)
    assert obj["exception"] == {
        "type": "RuntimeError",
        "message": "CUDA out of memory",
        "stacktrace": STACK,
        "raised_at": {"file": "/srv/gen/unet.py", "line": 412, "function": "load_weights"},
        "source": "log",
    }
    assert len(obj["logs"]) == 20 and obj["logs"][0]["body"] == "denoise step 6"
    mm = obj["machine_metrics"]
    assert (mm["since_unix_nano"], mm["until_unix_nano"]) == (T0, T0 + 24 * S)
    assert mm["margin_ns"] == 10 * S
    cpu = next(s for s in mm["series"] if s["name"] == "system.cpu.utilization")
    assert cpu == {
        "name": "system.cpu.utilization",
        "unit": "1",
        "machine_id": "m1",
        "attributes": {},
        "min": 0.25,
        "max": 0.75,
        "last": 0.5,
        "values": [0.25, 0.75, 0.5],
        "times_unix_nano": [T0 + 2 * S, T0 + 12 * S, T0 + 20 * S],
        "sparkline": "▁█▅",
    }
    assert len(mm["series"]) == 5
    ev = obj["evidence"]
    assert set(ev) == {"home", "agents", "dead_letter_dir", "dead_letter_files"}
    assert (ev["agents"], ev["dead_letter_files"]) == ([], 0)


def test_why_of_a_job_that_succeeded(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["why", "--job", "ok", "--utc"], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "the job succeeded",
        "job ok: started 2023-11-14 22:13:21.000 +00:00, ran 1.00 s, 3 records, on m1 (worker w1)",
    ]
    code, out, _ = run(["why", "--job", "ok", "--json"], capsys)
    obj = json.loads(out)
    assert set(obj) == WHY_FIELDS and obj["status"] == "ok"
    assert (obj["failure"], obj["span_path"], obj["exception"], obj["logs"]) == (None, [], None, [])
    assert (obj["machine_metrics"], obj["evidence"]) == (None, None)


def test_a_long_series_sparkline_keeps_the_peaks() -> None:
    values = [0.0] * 100
    values[57] = 1.0
    line = jobs_cli.spark(values)
    assert len(line) == jobs_cli.SPARK_WIDTH
    # 100 values in 40 stretches of 2 or 3: value 57 is in stretch 23 (values 57 and 58).
    assert line.count("█") == 1 and line.index("█") == 23


# ---- why: what could hide evidence ----------------------------------------------------------


def write_status(home: Path, ring: str, status: dict[str, Any]) -> None:
    path = home / f"status-{ring}.json"
    path.write_text(json.dumps(status))
    path.chmod(0o600)


def producer(pid: int, worker: str | None, full: int = 0, no_lane: int = 0) -> dict[str, Any]:
    return {
        "pid": pid,
        "service": "gen",
        "worker_id": worker,
        "alive": False,
        "lanes": 1,
        "dropped_full": full,
        "dropped_no_lane": no_lane,
        "dropped_too_large": 0,
        "dropped": full + no_lane,
    }


def test_evidence_from_the_status_file_and_the_dead_letter_folder(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(
        home,
        "r1",
        {
            "agent": {
                "pid": 0,
                "updated_ns": T0 + 20 * S,
                "config": {"headers": {"Authorization": "Bearer SECRET-TOKEN"}},
            },
            "producers": [
                producer(11, "w1", full=5, no_lane=2),  # the job's worker
                producer(12, "w9", full=7),  # another worker
                producer(13, None, no_lane=1),  # unknown: it may be the job's
                producer(14, "w1"),  # dropped nothing
            ],
            "spool": {
                "files": 3,
                "bytes": 3 * 2**20,
                "evicted_files": 2,
                "evicted_records": 900,
                "quarantined_files": 0,
            },
            "export": {
                "failures": 4,
                "dead_lettered": 1,
                "partial_rejected": 0,
                "retries": 9,
                "last_error": "logs: HTTP 503 from the endpoint",
            },
            "store": None,
        },
    )
    dead = home / "dead-letter"
    dead.mkdir(mode=0o700)
    for name in ("1-logs-400.pb", "1-logs-400.json"):
        (dead / name).write_bytes(b"x")
    code, out, _ = run(["why", "--job", "crash", "--utc"], capsys)
    assert code == 0
    section = out.split("what could hide evidence\n", 1)[1].splitlines()
    assert section == [
        "  agent of ring 'r1' (not running, status of 2023-11-14 22:13:40.000 +00:00):",
        "    drops: pid 11 (worker w1) dropped 7 records: ring full 5, no free lane 2, too large 0",
        "    drops: pid 13 (worker unknown) dropped 1 records: ring full 0, no free lane 1,"
        " too large 0",
        "    spool: 3 files (3.0 MiB) not yet delivered; 2 files (900 records) evicted when it"
        " was full: lost",
        "    export: 4 failed requests, 1 dead-lettered, 0 records rejected; last error: logs:"
        " HTTP 503 from the endpoint",
        f"  dead letter: 2 files in {dead}",
    ]
    assert "SECRET-TOKEN" not in out
    code, out, _ = run(["why", "--job", "crash", "--json"], capsys)
    ev = json.loads(out)["evidence"]
    assert "SECRET-TOKEN" not in out
    assert ev["dead_letter_files"] == 2
    (agent,) = ev["agents"]
    assert set(agent) == {
        "ring",
        "alive",
        "updated_unix_nano",
        "drops",
        "spool",
        "export",
        "store_write_failures",
    }
    assert [p["pid"] for p in agent["drops"]] == [11, 13]
    assert set(agent["drops"][0]) == {
        "pid",
        "service",
        "worker_id",
        "alive",
        "dropped",
        "dropped_full",
        "dropped_no_lane",
        "dropped_too_large",
    }
    assert agent["spool"]["evicted_records"] == 900
    assert agent["export"] == {
        "failures": 4,
        "dead_lettered": 1,
        "partial_rejected": 0,
        "retries": 9,
        "last_error": "logs: HTTP 503 from the endpoint",
    }
    assert (agent["store_write_failures"], agent["alive"]) == (None, False)


def test_a_local_store_agent_without_problems(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(
        home,
        "r2",
        {
            "agent": {"pid": os.getpid(), "updated_ns": T0},
            "producers": [producer(11, "w1")],
            "spool": {"files": 0, "bytes": 0, "evicted_files": 0, "quarantined_files": 0},
            "export": None,
            "store": {"records": 10, "clamped_times": 0, "write_failures": 3},
        },
    )
    code, out, _ = run(["why", "--job", "crash", "--utc"], capsys)
    assert code == 0
    section = out.split("what could hide evidence\n", 1)[1].splitlines()
    assert section == [
        "  agent of ring 'r2' (running, status of 2023-11-14 22:13:20.000 +00:00):",
        "    drops: none by w1",
        "    spool: 0 files (0 B) not yet delivered",
        "    export: none (the agent writes the local store only)",
        "    store: writes failing (3 in a row)",
        f"  dead letter: 0 files in {home / 'dead-letter'}",
    ]


def test_without_a_status_file_why_says_so(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = Resource({"service.name": "gen", "emp.machine_id": "m9", "emp.worker_id": "w9"})
    with Store(home / "store.sqlite") as store:
        store.ingest([(elsewhere, [log("no disk", 50.0, severity=17, context=ctx("far"))])])
    code, out, _ = run(["why", "--job", "far"], capsys)
    assert code == 0
    assert (
        f"  no agent status file in {home}: drops, spool backlog and export errors are unknown"
        in out.splitlines()
    )
    # A job outside spans, without exception attributes, without machine metrics: said so.
    assert "failing span: none (the failure belongs to no stored span)" in out
    assert "exception: none recorded (the failure is an ERROR log without exception.*" in out
    assert "  none: no agent reported this machine's metrics then" in out


# ---- the chunk index: exact counts, and no log rows read -------------------------------------


def test_a_chunk_cut_by_retention_is_counted_by_its_rows(fastbuf_home: Path) -> None:
    path = fastbuf_home / "store.sqlite"
    with Store(path, retention_s=100) as store:
        store.ingest([(W1, [log(f"old {i}", float(i), context=ctx("long")) for i in range(10)])])
        store.ingest([(W1, [log(f"new {i}", 20.0 + i, context=ctx("long")) for i in range(5)])])
        # Retention keeps what is at most 100 s old at 105 s: the first chunk loses 0..4.
        assert store.enforce(T0 + 105 * S) == 5
        (job,) = store.jobs()
    assert (job.records, job.start_unix_nano) == (10, T0 + 5 * S)


def test_a_failure_that_retention_deleted_is_said_so(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chunk still says ERROR (its highest severity), its ERROR log is gone."""
    recs = [log(f"step {i}", float(i), context=ctx("cut")) for i in range(10)]
    recs[2] = log("oom", 2.0, severity=17, text="ERROR", context=ctx("cut"))
    with Store(fastbuf_home / "store.sqlite", retention_s=100) as store:
        store.ingest([(W1, recs)])
        store.enforce(T0 + 105 * S)
    code, out, _ = run(["why", "--job", "cut"], capsys)
    assert code == 0
    assert out.splitlines()[:3] == [
        "job cut failed: -",
        out.splitlines()[1],
        "  the failure record is no longer in the store",
    ]
    assert "what could hide evidence" in out
    code, out, _ = run(["why", "--job", "cut", "--json"], capsys)
    obj = json.loads(out)
    assert (obj["status"], obj["failure"], obj["job"]["first_error"]) == ("failed", None, None)
    assert obj["machine_metrics"]["series"] == [] and obj["evidence"] is not None


def _vm_steps(path: Path) -> int:
    """SQLite virtual machine steps (in thousands) that ``Store.jobs`` takes: the work it
    does, without a clock."""
    with Store(path, readonly=True) as store:
        steps = [0]

        def tick() -> int:
            steps[0] += 1
            return 0

        store._conn.set_progress_handler(tick, 1000)
        found = store.jobs()
        store._conn.set_progress_handler(None, 0)
    assert len(found) == 20
    return steps[0]


def test_jobs_reads_the_chunk_index_not_the_logs(tmp_path: Path) -> None:
    """20 jobs with a span each and 50 or 5,000 logs each: jobs() does about the same
    work for both stores (it reads the jobs' spans and chunks, not their logs)."""

    def build(path: Path, logs_per_job: int) -> None:
        with Store(path) as store:
            # The oldest chunk, whose rows jobs() counts (retention may have cut it): not a
            # job's.
            store.ingest([(W1, [log("boot", -1.0)])])
            for j in range(20):
                c = ctx(f"job-{j}")
                trace = bytes([j + 1]) * 16
                recs = [span("job", b"\x01" * 8, None, j, j + 1.0, trace=trace, context=c)]
                recs += [log("step", j + 0.5, context=c) for _ in range(logs_per_job)]
                store.ingest([(W1, recs)])
                if j % 4 == 0:  # a later batch: its own chunk
                    bad = log("bad", j + 0.9, severity=17, text="ERROR", context=c)
                    store.ingest([(W1, [bad])])

    build(small := tmp_path / "small.sqlite", 50)
    build(large := tmp_path / "large.sqlite", 5000)
    few, many = _vm_steps(small), _vm_steps(large)
    # Reading every log row would take 100 times the work (the same chunks, 100 times
    # the rows); the failed jobs' first error lines read the chunks that hold an ERROR log.
    assert many < 2 * few + 2, (few, many)
    with Store(large, readonly=True) as store:
        rows = store._conn.execute("SELECT count(*) FROM records").fetchone()[0]
    assert rows == 1 + 20 * 5001 + 5


# ---- agreements with the agent and the docs -----------------------------------------------


def test_the_machine_metrics_are_the_ones_the_agent_records() -> None:
    from emp_fastbuf.agent import machine

    recs = machine.collect_machine_metrics()
    for name, attrs in jobs_cli.MACHINE_METRICS.items():
        if name.startswith("hw.gpu."):
            # Only with NVML and a GPU: then there must be one; the name is the agent's.
            assert f'"{name}"' in Path(machine.__file__).read_text()
            if any(r.name.startswith("hw.gpu.") for r in recs):
                assert any(r.name == name for r in recs), name
            continue
        assert any(r.name == name and r.attributes == attrs for r in recs), name


def _doc_fields() -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", DOCS.read_text()))


def test_docs_list_every_json_field_of_jobs_and_why(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status(
        home,
        "r1",
        {
            "agent": {"pid": 0},
            "producers": [producer(1, "w1", full=1)],
            "spool": {},
            "export": {},
            "store": {},
        },
    )
    code, out, _ = run(["why", "--job", "crash", "--json"], capsys)
    assert code == 0
    obj = json.loads(out)
    names: set[str] = set(JOB_FIELDS) | set(obj)
    for section in ("failure", "exception", "machine_metrics", "evidence"):
        names |= set(obj[section])
    names -= {"record"}  # a record line, documented with the records
    names |= set(obj["exception"]["raised_at"])
    names |= set(obj["machine_metrics"]["series"][0])
    agent = obj["evidence"]["agents"][0]
    names |= set(agent) | set(agent["drops"][0]) | set(agent["spool"]) | set(agent["export"])
    names.add("depth")
    missing = sorted(names - _doc_fields())
    assert missing == [], f"not in docs/cli.md: {missing}"
    doc = DOCS.read_text()
    for phrase in (
        "fastbuf why: no records for job 'ID'",
        "fastbuf why: which job? give it as --job ID",
        "fastbuf jobs: no matching jobs",
        "the job succeeded",
    ):
        assert phrase in " ".join(doc.split()), phrase


def test_a_store_query_error_is_exit_1_with_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = sqlite3.connect(home / "store.sqlite")
    db.execute("DROP TABLE chunks")
    db.commit()
    db.close()
    code, _out, err = run(["jobs"], capsys)
    assert code == 1
    one_line_error(err, "fastbuf jobs:", "cannot read the store")
