"""The ``fastbuf`` command: queries, JSON Lines fields, exit codes and messages, tail.

Most tests call ``cli.main(argv)`` in the test process (fast); the ones marked
"subprocess" run ``python -m emp_fastbuf`` as a real process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emp_fastbuf import cli
from emp_fastbuf.cli import render
from emp_fastbuf.cli.commands import delegate
from emp_fastbuf.records import COUNTER, HISTOGRAM
from emp_fastbuf.store import SCHEMA_VERSION, Store
from support.store import (
    JOB_A,
    T0,
    TRACE_A,
    TRACE_B,
    W1,
    W2,
    S,
    log,
    metric,
    sample_groups,
)

RECORD_FIELDS = {
    "time_unix_nano",
    "time",
    "kind",
    "name",
    "body",
    "severity",
    "trace_id",
    "span_id",
    "parent_span_id",
    "job_id",
    "machine_id",
    "worker_id",
    "service",
    "attributes",
}
SPAN_FIELDS = RECORD_FIELDS | {"start_unix_nano", "end_unix_nano", "duration_ns", "status"}
METRIC_RECORD_FIELDS = RECORD_FIELDS | {"instrument", "unit", "value", "count", "sum", "min", "max"}
SERIES_FIELDS = {
    "name",
    "kind",
    "unit",
    "service",
    "machine_id",
    "worker_id",
    "attributes",
    "time_unix_nano",
    "time",
}
SCALAR_SERIES_FIELDS = SERIES_FIELDS | {"value"}
HISTOGRAM_SERIES_FIELDS = SERIES_FIELDS | {
    "count",
    "sum",
    "min",
    "max",
    "p50",
    "p90",
    "p99",
    "bounds",
    "bucket_counts",
}


@pytest.fixture(autouse=True)
def in_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process calls show the terminal views (``COLUMNS`` sets the width); the
    views for a pipe are tested through real processes, whose stdout is one."""
    monkeypatch.setattr(render, "piped", lambda: False)


@pytest.fixture
def home(fastbuf_home: Path) -> Path:
    """EMP_FASTBUF_HOME with the sample store in it."""
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest(sample_groups())
    return fastbuf_home


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def one_line_error(err: str, *words: str) -> None:
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith("fastbuf ")
    for w in words:
        assert w in err, err


def run_process(args: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMP_FASTBUF_HOME": str(home), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- value parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 1000 * S - 30 * S),
        ("10m", 1000 * S - 600 * S),
        ("2h", 1000 * S - 7200 * S),
        ("7d", 1000 * S - 7 * 86400 * S),
        ("1970-01-01T00:00:10Z", 10 * S),
        ("1970-01-01T00:00:10.5Z", 10 * S + 500_000_000),
        ("1970-01-01T00:00:10.123456789Z", 10 * S + 123_456_789),
        ("1970-01-01T01:00:10+01:00", 10 * S),
        ("1970-01-01 00:00:10z", 10 * S),
    ],
)
def test_parse_since(text: str, expected: int) -> None:
    assert cli.parse_since(text, 1000 * S) == expected


@pytest.mark.parametrize(
    "text",
    [
        "bogus",
        "",
        "10",
        "-5m",
        "1.5h",
        "10y",
        "2024-01-01",
        "2024-01-01T00:00:00",
        "2024-13-01T00:00:00Z",
        "2300-01-01T00:00:00Z",  # after the latest time the store holds (2262)
        "9999-12-31T23:59:59-23:59",
        "99999999999d",
        "²s",
    ],
)
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(cli.UsageError):
        cli.parse_since(text, 1000 * S)


def test_parse_level() -> None:
    assert [
        cli.parse_level(x) for x in ("debug", "INFO", "warn", "warning", "error", "fatal", "3")
    ] == [
        5,
        9,
        13,
        13,
        17,
        21,
        3,
    ]
    for bad in ("loud", "0", "25", "-1", "", "³", "1²"):
        with pytest.raises(cli.UsageError):
            cli.parse_level(bad)


def test_format_time_of_a_time_no_date_shows() -> None:
    assert cli.format_time(2**63 - 1) == "2262-04-11T23:47:16.854775807Z"
    assert cli.format_time(10**30) == f"{10**30}ns"  # only a damaged store holds one


def test_format_time() -> None:
    assert cli.format_time(T0 + 123) == "2023-11-14T22:13:20.000000123Z"
    assert cli.format_time(0) == "1970-01-01T00:00:00.000000000Z"


def test_sparkline() -> None:
    assert cli.sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert cli.sparkline([3, 3]) == "▅▅"
    assert cli.sparkline([]) == ""


# ---- logs ---------------------------------------------------------------------------------


def test_logs_json_fields_and_order(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["logs", "--json"], capsys)
    assert (code, err) == (0, "")
    lines = json_lines(out)
    assert len(lines) == 9
    for obj in lines:
        assert set(obj) == RECORD_FIELDS
        assert obj["kind"] in ("log", "event")
    assert [o["time_unix_nano"] for o in lines] == sorted(o["time_unix_nano"] for o in lines)
    warn = next(o for o in lines if o["body"] == "slow step")
    assert warn == {
        "time_unix_nano": T0 + int(3.3 * S),
        "time": cli.format_time(T0 + int(3.3 * S)),
        "kind": "log",
        "name": "slow step",
        "body": "slow step",
        "severity": "WARN",
        "trace_id": TRACE_A.hex(),
        "span_id": "04" * 8,
        "parent_span_id": None,
        "job_id": "job-a",
        "machine_id": "m1",
        "worker_id": "w1",
        "service": "trainer",
        "attributes": {},
    }
    event = next(o for o in lines if o["kind"] == "event" and o["name"] == "epoch_end")
    assert (event["body"], event["severity"], event["attributes"]) == (None, None, {"epoch": 3})


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--job", "job-b"], ["job b running", "job b event"]),
        (
            ["--trace", TRACE_A.hex().upper()],
            ["loading data", "slow step", "epoch_end", "train failed", "lost span"],
        ),
        (["--machine", "m2"], ["job b running", "job b event"]),
        (["--worker", "w2"], ["idle", "heartbeat"]),
        (["--level", "warn"], ["slow step", "train failed"]),
        (["--grep", "step"], ["slow step"]),
        (["--limit", "2"], ["lost span", "heartbeat"]),
        (["--since", "1970-01-01T00:00:00Z", "--limit", "0", "--level", "17"], ["train failed"]),
    ],
)
def test_logs_filters(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]
) -> None:
    code, out, _ = run(["logs", "--json", *args], capsys)
    assert code == 0
    assert [o["name"] for o in json_lines(out)] == names


def test_logs_since_relative(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The sample is from 2023; records written now are within the last 30 s.
    with Store(home / "store.sqlite") as store:
        store.ingest([(W2, [log("just now", (time.time_ns() - T0) / S)])])
    code, out, _ = run(["logs", "--json", "--since", "30s"], capsys)
    assert code == 0
    assert [o["name"] for o in json_lines(out)] == ["just now"]


def test_logs_nothing_matches_is_exit_1(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["logs", "--job", "nope"], capsys)
    assert (code, out) == (1, "")
    one_line_error(err, "no matching")


def test_logs_human_table(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with Store(home / "store.sqlite") as store:
        store.ingest([(W2, [log("[bold]not markup[/bold]", 7, attributes={"k": "v"})])])
    code, out, _ = run(["logs"], capsys)
    assert code == 0
    assert "loading data" in out
    assert "WARN" in out and "ERROR" in out
    assert "m1/w1" in out and "job-a" in out
    assert "[bold]not markup[/bold]" in out  # bodies are text, never rich markup
    assert "tenant=acme" in out


def test_logs_human_table_on_a_narrow_terminal_cuts_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    body = "CUDA out of memory: tried to allocate 2.50 GiB on gpu 2 while loading the unet"
    with Store(home / "store.sqlite") as store:
        store.ingest([(W2, [log(body, 9, attributes={"exception.type": "OOM"})])])
    code, out, _ = run(["logs", "--worker", "w2", "--limit", "1"], capsys)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    # The record wraps between words: every word of it is there, none cut off.
    flat = " " + " ".join(out.split()) + " "
    for word in body.split():
        assert f" {word} " in flat, word
    # A long attribute folds across lines in its column; its characters are all there.
    lines = out.splitlines()
    at = lines[0].index("attributes")
    assert "".join(line[at:].strip() for line in lines[1:]) == "exception.type=OOM"


# ---- trace ----------------------------------------------------------------------------------


def test_trace_json_tree_order(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["trace", TRACE_A.hex(), "--json"], capsys)
    assert code == 0
    lines = json_lines(out)
    spans = [o for o in lines if o["kind"] == "span"]
    assert lines[: len(spans)] == spans  # spans first
    assert [(o["name"], o["depth"]) for o in spans] == [
        ("job", 0),
        ("load", 1),
        ("train", 1),
        ("step", 2),
    ]
    for o in spans:
        assert set(o) == SPAN_FIELDS | {"depth"}
        assert o["duration_ns"] == o["end_unix_nano"] - o["start_unix_nano"]
        assert o["end_unix_nano"] == o["time_unix_nano"]
    ids = {o["span_id"]: o for o in spans}
    assert ids[spans[3]["parent_span_id"]]["name"] == "train"
    assert ids[spans[1]["parent_span_id"]]["name"] == "job"
    assert [o["status"] for o in spans] == ["ok", "unset", "error", "unset"]
    rest = lines[len(spans) :]
    for o in rest:
        assert set(o) == RECORD_FIELDS
    assert [(o["kind"], o["name"], o["span_id"]) for o in rest] == [
        ("log", "loading data", "02" * 8),
        ("event", "checkpoint", "04" * 8),
        ("log", "slow step", "04" * 8),
        ("event", "epoch_end", "03" * 8),
        ("log", "train failed", "03" * 8),
        ("log", "lost span", "09" * 8),
    ]


def test_trace_human_waterfall(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["trace", TRACE_A.hex()], capsys)
    assert code == 0
    lines = out.splitlines()
    names = ["job", "load", "train", "step", "checkpoint", "epoch_end", "train failed", "lost span"]
    for name in names:
        assert any(name in line for line in lines), name
    bar = {
        n: next(line for line in lines if f" {n} " in line)
        for n in ("job", "load", "train", "step")
    }
    # Each bar starts where its span starts within the trace and is as long as the span.
    starts = {n: line.index("█") for n, line in bar.items()}
    widths = {n: line.count("█") for n, line in bar.items()}
    assert starts["job"] == starts["load"] < starts["train"] < starts["step"]
    assert widths["job"] > widths["train"] > widths["load"] > widths["step"]
    # A span's logs and events are listed under it, before the next span at its level.
    assert lines.index(next(x for x in lines if "slow step" in x)) < lines.index(
        next(x for x in lines if "epoch_end" in x)
    )


def test_trace_unknown_is_exit_1(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["trace", TRACE_B.hex()], capsys)
    assert (code, out) == (1, "")
    one_line_error(err, TRACE_B.hex())


@pytest.mark.parametrize("bad", ["xyz", "0af", "", TRACE_A.hex() + "00", "g" * 32, "0af7-"])
def test_trace_malformed_id_is_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    code, out, err = run(["trace", bad], capsys)
    assert (code, out) == (2, "")
    one_line_error(err, "hex")


# ---- metrics --------------------------------------------------------------------------------


def test_metrics_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["metrics", "--json"], capsys)
    assert code == 0
    lines = json_lines(out)
    assert len(lines) == 9
    for o in lines:
        want = HISTOGRAM_SERIES_FIELDS if o["kind"] == "histogram" else SCALAR_SERIES_FIELDS
        assert set(o) == want, o
    req = next(o for o in lines if o["name"] == "requests" and o["worker_id"] == "w1")
    assert (req["kind"], req["value"], req["machine_id"]) == ("counter", 6, "m1")
    assert req["time_unix_nano"] == T0 + int(3.1 * S)
    lat = next(o for o in lines if o["name"] == "latency")
    assert (lat["count"], lat["sum"], lat["min"], lat["max"], lat["unit"]) == (
        100,
        5050.0,
        1.0,
        100.0,
        "ms",
    )
    assert (lat["p50"], lat["p90"], lat["p99"]) == (50.0, 90.0, 99.0)
    assert lat["bucket_counts"] == [0, 5, 5, 15, 25, 25, 25] + [0] * 9
    assert len(lat["bounds"]) == 15
    gpu = [o for o in lines if o["name"] == "gpu.temp"]
    assert sorted((o["attributes"]["gpu"], o["value"]) for o in gpu) == [(0, 61.5), (1, 70.0)]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--name", "gpu.*"], {"gpu.temp"}),
        (["--machine", "m2"], {"system.cpu.utilization"}),
        (["--worker", "w2"], {"requests"}),
        (["--since", "2023-11-14T22:13:25Z"], {"system.cpu.utilization"}),
    ],
)
def test_metrics_filters(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: set[str]
) -> None:
    code, out, _ = run(["metrics", "--json", *args], capsys)
    assert code == 0
    assert {o["name"] for o in json_lines(out)} == names


def test_metrics_human(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["metrics"], capsys)
    assert code == 0
    assert "latency" in out and "p99=99" in out
    assert "▁▄█" in out  # requests on w1: running totals 1, 3, 6


def test_metrics_none_is_exit_1(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["metrics", "--name", "nope*"], capsys)
    assert code == 1
    one_line_error(err, "no matching")


# ---- correlate ------------------------------------------------------------------------------


def test_correlate_json(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Store(home / "store.sqlite") as store:
        store.ingest(
            [
                (W1, [metric("latency", HISTOGRAM, 3.0, values=[1.0, 2.0, 100.0], context=JOB_A)]),
                (W1, [metric("requests", COUNTER, 3.0, 7, context={"job_id": "job-b"})]),
            ]
        )
    code, out, _ = run(["correlate", "--job", "job-a", "--json"], capsys)
    assert code == 0
    lines = json_lines(out)
    assert len(lines) == 15
    keys = [o.get("start_unix_nano", o["time_unix_nano"]) for o in lines]
    assert keys == sorted(keys)
    for o in lines:
        want = {"span": SPAN_FIELDS, "metric": METRIC_RECORD_FIELDS}.get(o["kind"], RECORD_FIELDS)
        assert set(o) == want | {"scope"}, o
    # The job's own records, and the machine metrics of its machine in its time window.
    machine = [o for o in lines if o["scope"] == "machine"]
    assert [
        (o["name"], o["machine_id"], o["worker_id"], o["value"], o["instrument"]) for o in machine
    ] == [("system.cpu.utilization", "m1", None, 0.5, "gauge")]
    assert {o["job_id"] for o in lines if o["scope"] == "job"} == {"job-a"}
    assert {o["scope"] for o in lines} == {"job", "machine"}
    assert [o["value"] for o in lines if o["name"] == "requests"] == [1, 2, 3]  # not job-b's
    lat = next(o for o in lines if o["name"] == "latency")
    assert (lat["value"], lat["count"], lat["max"]) == (None, 3, 100.0)


def test_correlate_human(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(["correlate", "job-a", "--utc"], capsys)
    assert code == 0
    assert out.startswith(
        "job job-a: 13 records from 2023-11-14 22:13:21.000 +00:00 over 4.00 s on m1/w1;"
        " 1 machine metric update of m1 in that time\n"
    )
    order = ["job", "loading data", "train", "checkpoint", "epoch_end", "lost span"]
    positions = [out.index(n) for n in order]
    assert positions == sorted(positions)
    (cpu,) = [line for line in out.splitlines() if "system.cpu.utilization" in line]
    assert "machine metric system.cpu.utilization = 0.5" in cpu
    assert "queue.depth" not in out  # w1's series in no job's context


def test_correlate_unknown_job_is_exit_1(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["correlate", "job-zzz"], capsys)
    assert (code, out) == (1, "")
    one_line_error(err, "job-zzz")


def test_correlate_job_as_option_or_argument(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_option = run(["correlate", "--job", "job-a", "--json"], capsys)
    by_argument = run(["correlate", "job-a", "--json"], capsys)
    assert by_option == by_argument and by_option[0] == 0
    assert run(["correlate", "job-a", "--job", "job-a", "--json"], capsys) == by_option


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["correlate"], ("which job", "--job")),
        (["correlate", "job-a", "--job", "job-b"], ("two different jobs",)),
    ],
)
def test_correlate_without_one_job_is_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: tuple[str, ...]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    one_line_error(err, *words)


# ---- usage errors, missing and bad stores ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["logs", "--since", "bogus"],
        ["logs", "--limit", "-3"],
        ["logs", "--limit", "ten"],
        ["logs", "--limit", "²"],
        ["logs", "--limit", "9223372036854775808"],
        ["logs", "--since", ""],
        ["logs", "--level", ""],
        ["logs", "--home", ""],
        ["logs", "--level", "loud"],
        ["logs", "--trace", "abc"],
        ["metrics", "--since", "yesterday"],
        ["tail", "--lines", "-1"],
        ["tail", "--count", "x"],
        ["tail", "--since", "5x"],
    ],
)
def test_value_errors_are_exit_2_with_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    one_line_error(err, argv[0])


@pytest.mark.parametrize("argv", [["logs", "--bogus"], ["nosuch"], ["trace"], ["metrics", "extra"]])
def test_syntax_errors_are_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, out) == (2, "")
    assert "error" in err


def test_no_command_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2
    assert "a command is required" in err


@pytest.mark.parametrize(
    "command", ["logs", "trace", "metrics", "correlate", "tail", "agent", "status", "demo"]
)
def test_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    assert f"fastbuf {command}" in out


def test_help_lists_agent_flags(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["agent", "--help"], capsys)
    for flag in ("--endpoint", "--headers", "--compression", "--timeout", "--dataset", "--home",
                 "--ring", "--local-copy", "--idle-exit"):  # fmt: skip
        assert flag in out
    assert "--spawned" not in out
    parser = cli.build_parser()
    args = parser.parse_args(["agent", "--spawned", "--compression", "zstd", "--timeout", "500"])
    assert (args.spawned, args.compression, args.timeout) == (True, "zstd", 500)
    args = parser.parse_args(["demo"])
    assert (args.workers, args.jobs, args.seconds) == (4, 20, 0.0)
    args = parser.parse_args(["status", "--json", "--ring", "r"])
    assert (args.json, args.ring) == (True, "r")


def test_delegate_to_a_missing_module_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    handler = delegate("emp_fastbuf.no_such_module", "run")
    assert handler(argparse.Namespace(command="demo")) == 1
    one_line_error(capsys.readouterr().err, "emp_fastbuf.no_such_module")
    handler = delegate("emp_fastbuf.records", "no_such_function")
    assert handler(argparse.Namespace(command="demo")) == 1
    one_line_error(capsys.readouterr().err, "no_such_function")


@pytest.mark.parametrize("dependency", ["fastbuf_dep_probe_missing", "fastbuf_dep_probe"])
def test_delegate_shows_a_missing_dependency_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dependency: str
) -> None:
    # The module is there but imports one that is not: that is the error to see, also when
    # the missing name happens to begin the module's own ("fastbuf_dep_probe").
    (tmp_path / "fastbuf_dep_probe_cmd.py").write_text(f"import {dependency}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = delegate("fastbuf_dep_probe_cmd", "run")
    with pytest.raises(ModuleNotFoundError) as caught:
        handler(argparse.Namespace(command="demo"))
    assert caught.value.name == dependency


@pytest.mark.parametrize(
    "command", [["logs"], ["trace", TRACE_A.hex()], ["metrics"], ["correlate", "j"]]
)
def test_missing_store_is_exit_1(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = run(command, capsys)
    assert (code, out) == (1, "")
    one_line_error(err, "no store at", str(fastbuf_home))
    assert not (fastbuf_home / "store.sqlite").exists()  # a reader never creates the store


def test_home_option_selects_the_store(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    with Store(other / "store.sqlite") as store:
        store.ingest([(W1, [log("from the other home", 1)])])
    code, out, _ = run(["logs", "--json", "--home", str(other)], capsys)
    assert code == 0
    assert [o["name"] for o in json_lines(out)] == ["from the other home"]


def test_bad_store_files_are_exit_1_or_2_with_one_line(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fastbuf_home / "store.sqlite"
    path.write_bytes(b"garbage" * 1000)
    code, _, err = run(["logs"], capsys)
    assert code == 2  # damaged: something to repair
    one_line_error(err, "is not an emp-fastbuf store")

    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    code, _, err = run(["metrics"], capsys)
    assert code == 1
    one_line_error(err, "is not an emp-fastbuf store")

    path.unlink()
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    code, _, err = run(["trace", TRACE_A.hex()], capsys)
    assert code == 1
    one_line_error(err, "schema version 7", f"reads version {SCHEMA_VERSION}")


# ---- tail -----------------------------------------------------------------------------------


def test_tail_backlog_then_count(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["tail", "--json", "-n", "2", "--count", "2"], capsys)
    assert code == 0
    assert [o["name"] for o in json_lines(out)] == ["lost span", "heartbeat"]


def test_tail_max_seconds_without_new_records(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["tail", "--json", "-n", "0", "--max-seconds", "0.3"], capsys)
    assert (code, out) == (0, "")


def test_tail_follows_new_records_subprocess(home: Path) -> None:
    """subprocess: ``python -m emp_fastbuf tail`` sees records written after it started."""
    env = {**os.environ, "EMP_FASTBUF_HOME": str(home)}
    with subprocess.Popen(
        [sys.executable, "-m", "emp_fastbuf", "tail", "--json", "-n", "0", "--count", "3",
         "--max-seconds", "30", "--level", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        with Store(home / "store.sqlite") as store:
            deadline = time.monotonic() + 30
            i = 0
            while proc.poll() is None and time.monotonic() < deadline:
                store.ingest([(W1, [log(f"live {i}", 100 + i), log("quiet", 100, severity=5)])])
                i += 1
                time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    names = [o["name"] for o in json_lines(out)]
    assert len(names) == 3, names
    # Whatever came after tail started, in order, without the DEBUG records.
    first = int(names[0].split()[1])
    assert names == [f"live {first}", f"live {first + 1}", f"live {first + 2}"]


def test_tail_ctrl_c_is_exit_0_subprocess(home: Path) -> None:
    """subprocess: SIGINT stops ``tail`` with exit 0."""
    env = {**os.environ, "EMP_FASTBUF_HOME": str(home)}
    with subprocess.Popen(
        [sys.executable, "-m", "emp_fastbuf", "tail", "-n", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the backlog line: tail is running
        assert "heartbeat" in first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# ---- as a real process ----------------------------------------------------------------------


def test_module_entry_point_subprocess(home: Path) -> None:
    """subprocess: ``python -m emp_fastbuf`` with EMP_FASTBUF_HOME; exit codes 0, 1, 2."""
    ok = run_process(["logs", "--json", "--job", "job-b"], home)
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(x)["name"] for x in ok.stdout.splitlines()] == [
        "job b running",
        "job b event",
    ]
    missing = run_process(["trace", TRACE_B.hex()], home)
    assert missing.returncode == 1
    one_line_error(missing.stderr, "no trace")
    usage = run_process(["logs", "--since", "bogus"], home)
    assert usage.returncode == 2
    one_line_error(usage.stderr, "--since")
    human = run_process(["trace", TRACE_A.hex()], home)
    assert human.returncode == 0
    assert "█" in human.stdout and "train failed" in human.stdout


def test_broken_pipe_is_quiet_subprocess(home: Path) -> None:
    """subprocess: ``fastbuf logs --json | head -1`` ends without a traceback."""
    with Store(home / "store.sqlite") as store:
        store.ingest([(W1, [log(f"many {i}", 10 + i / 1000) for i in range(20000)])])
    env = {**os.environ, "EMP_FASTBUF_HOME": str(home)}
    with subprocess.Popen(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--json", "--limit", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
