"""``fastbuf`` query ergonomics: piped output one record per line, ``--grep`` over attribute
values, ``--attr``, ``--service``, ``--until``, the ``--limit`` notice, ``tail`` waiting for
the store, ``--version``, and docs/cli.md against the parser.

The piped views run ``python -m emp_fastbuf`` as a real process: its stdout is a pipe."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emp_fastbuf import cli
from emp_fastbuf._version import __version__
from emp_fastbuf.cli import render
from emp_fastbuf.cli.parser import build_parser
from emp_fastbuf.records import GAUGE, Resource
from emp_fastbuf.store import Store
from support.store import T0, TRACE_A, W1, W2, S, log, metric, sample_groups

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
EVAL = Resource({"service.name": "evaluator", "emp.machine_id": "m2", "emp.worker_id": "e1"})
STACK = (
    "Traceback (most recent call last):\n"
    + "".join(
        f'  File "/srv/train/model_{i}.py", line {100 + i}, in forward_{i}\n    x = layer_{i}(x)\n'
        for i in range(12)
    )
    + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.50 GiB on gpu 2"
)
JOB_X = 30  # log records of job-x
JOB_Y = 20


def rfc3339(at_s: float) -> str:
    return datetime.fromtimestamp((T0 + int(at_s * S)) / 1e9, UTC).isoformat()


@pytest.fixture
def home(fastbuf_home: Path) -> Path:
    """A store with 30 logs of job-x, 20 of job-y, one failure with a long stack trace (job-x's
    last), and 5 logs of another service."""
    x = [
        log(f"step {i}", i, context={"job_id": "job-x"}, attributes={"gpu": i % 4, "phase": "load"})
        for i in range(JOB_X - 1)
    ]
    x.append(
        log(
            "step failed",
            JOB_X,
            severity=17,
            text="ERROR",
            context={"job_id": "job-x"},
            attributes={
                "exception.type": "torch.OutOfMemoryError",
                "exception.message": "CUDA out of memory. Tried to allocate 2.50 GiB on gpu 2",
                "exception.stacktrace": STACK,
                "ok": False,
            },
        )
    )
    y = [
        log(f"eval {i}", 0.5 + i, context={"job_id": "job-y"}, attributes={"gpu": 2})
        for i in range(JOB_Y)
    ]
    other = [log(f"score {i}", 40 + i, attributes={"phase": "load"}) for i in range(5)]
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest([(W1, x), (W2, y), (EVAL, other)])
    return fastbuf_home


def fastbuf(args: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMP_FASTBUF_HOME": str(home), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def bodies(out: str) -> list[str]:
    return [json.loads(line)["name"] for line in out.splitlines()]


def one_line_error(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("fastbuf "), err
    for w in words:
        assert w in err, err


# ---- piped output ---------------------------------------------------------------------------


def test_piped_logs_are_one_record_per_line_in_full_subprocess(home: Path) -> None:
    """subprocess: ``fastbuf logs | grep -c job-x`` counts job-x's records; nothing wraps
    at 80 columns, nothing is cut, no colour."""
    out = fastbuf(["logs", "--limit", "0"], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == JOB_X + JOB_Y + 5
    assert sum("job-x" in line for line in lines) == JOB_X
    assert sum("job-y" in line for line in lines) == JOB_Y
    assert "\x1b" not in out.stdout
    failed = next(line for line in lines if "step failed" in line)
    assert len(failed) > 80
    # The whole stack trace, on the record's one line (its newlines shown as \n).
    assert STACK.replace("\n", "\\n") in failed
    assert "ERROR" in failed and "m1/w1" in failed


def test_piped_tail_and_correlate_are_one_record_per_line_subprocess(home: Path) -> None:
    """subprocess: ``tail`` and ``correlate`` piped: one line per record, in full."""
    tail = fastbuf(["tail", "-n", "3", "--count", "3", "--job", "job-x"], home)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3
    assert "step failed" in lines[-1] and STACK.replace("\n", "\\n") in lines[-1]
    corr = fastbuf(["correlate", "job-x"], home)
    assert corr.returncode == 0, corr.stderr
    heading, *rest = corr.stdout.splitlines()
    assert heading.startswith(f"job job-x: {JOB_X} records")
    assert len(rest) == JOB_X
    assert all(line.startswith("+") and "job-x" in line for line in rest)
    assert STACK.replace("\n", "\\n") in rest[-1]


def test_one_line_escapes_control_characters() -> None:
    assert render.one_line("a\nb\r\tc\x1b[31md\x7f") == "a\\nb\\r\\tc\\x1b[31md\\x7f"


# ---- --grep, --attr, --service, --until -----------------------------------------------------


def test_grep_matches_attribute_values_and_exception_text(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["logs", "--json", "--grep", "CUDA out of memory"], capsys)
    assert code == 0
    assert bodies(out) == ["step failed"]
    code, out, _ = run(["logs", "--json", "--grep", "forward_11"], capsys)  # in the stack trace
    assert (code, bodies(out)) == (0, ["step failed"])
    code, out, _ = run(["logs", "--json", "--grep", "eval 1", "--limit", "0"], capsys)  # bodies
    assert bodies(out) == ["eval 1", *(f"eval {i}" for i in range(10, 20))]
    code, _, err = run(["logs", "--grep", "no such text"], capsys)
    assert code == 1
    one_line_error(err, "no matching")


def test_attr_filters(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["logs", "--json", "--limit", "0", "--attr", "gpu=2"], capsys)
    assert code == 0
    names = bodies(out)
    assert names.count("step 2") == 1 and "step 3" not in names  # an int attribute as text
    assert len(names) == len(range(2, JOB_X - 1, 4)) + JOB_Y
    # Repeated: every one must match.
    code, out, _ = run(
        ["logs", "--json", "--limit", "0", "--attr", "gpu=2", "--attr", "phase=load"], capsys
    )
    assert bodies(out) == [f"step {i}" for i in range(2, JOB_X - 1, 4)]
    code, out, _ = run(["logs", "--json", "--attr", "ok=false"], capsys)  # a bool as in JSON
    assert bodies(out) == ["step failed"]
    code, out, _ = run(
        ["logs", "--json", "--attr", "exception.type=torch.OutOfMemoryError"], capsys
    )
    assert bodies(out) == ["step failed"]
    code, out, _ = run(["logs", "--attr", "gpu=7"], capsys)
    assert (code, out) == (1, "")


@pytest.mark.parametrize("bad", ["gpu", "=2", "", " =x"])
def test_attr_bad_syntax_is_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    for command in ("logs", "tail"):
        code, out, err = run([command, "--attr", bad], capsys)
        assert (code, out) == (2, "")
        one_line_error(err, "--attr", "KEY=VALUE")


def test_attr_that_is_not_utf8_is_exit_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    value = os.fsdecode(b"gpu=\xff")  # what Python makes of such an argv item
    code, out, err = run(["logs", "--attr", "phase=load", "--attr", value], capsys)
    assert (code, out) == (2, "")
    one_line_error(err, "not valid UTF-8")


def test_service_filter(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["logs", "--json", "--service", "evaluator"], capsys)
    assert code == 0
    assert bodies(out) == [f"score {i}" for i in range(5)]
    assert {json.loads(line)["service"] for line in out.splitlines()} == {"evaluator"}
    code, _, _ = run(["logs", "--service", "nobody"], capsys)
    assert code == 1


def test_until_bounds_the_time(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["logs", "--json", "--job", "job-x", "--until", rfc3339(3)], capsys)
    assert code == 0
    assert bodies(out) == ["step 0", "step 1", "step 2", "step 3"]  # at or before: included
    code, out, _ = run(
        ["logs", "--json", "--since", rfc3339(2), "--until", rfc3339(3), "--job", "job-x"], capsys
    )
    assert bodies(out) == ["step 2", "step 3"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--until", "bogus"], ("--until", "bogus")),
        (["--until", ""], ("--until", "empty")),
        (["--until", "2999-01-01T00:00:00Z"], ("--until", "2262")),
        (["--since", "1970-01-02T00:00:00Z", "--until", "1970-01-01T00:00:00Z"], ("--until",)),
    ],
)
def test_bad_until_is_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: tuple[str, ...]
) -> None:
    for command in ("logs", "tail"):
        code, out, err = run([command, *args], capsys)
        assert (code, out) == (2, "")
        one_line_error(err, *words)


def test_trace_filter_exists(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["logs", "--trace", "00" * 16], capsys)
    assert code == 1  # well-formed, matches nothing
    code, _, err = run(["logs", "--trace", "xyz"], capsys)
    assert code == 2
    one_line_error(err, "--trace")


# ---- --limit says when it cuts --------------------------------------------------------------


def test_limit_that_cuts_says_so_on_stderr(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = JOB_X + JOB_Y + 5
    code, out, err = run(["logs", "--json", "--limit", "10"], capsys)
    assert code == 0
    assert len(out.splitlines()) == 10  # stdout stays JSON Lines
    notice = f"showing the newest 10 of {total}; --limit N shows more, --limit 0 all"
    assert err == f"fastbuf logs: {notice}\n"
    code, _, err = run(["logs", "--json", "--limit", "10", "--job", "job-y"], capsys)
    assert "showing the newest 10 of 20;" in err
    for args in (["--limit", "0"], ["--limit", str(total)], ["--job", "job-y", "--limit", "20"]):
        code, out, err = run(["logs", "--json", *args], capsys)
        assert (code, err) == (0, ""), args


def test_limit_notice_uses_thousands_separators(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest([(W1, [log(f"n {i}", i / 1000) for i in range(1234)])])
    code, out, err = run(["logs", "--json"], capsys)
    assert code == 0 and len(out.splitlines()) == 1000
    assert "showing the newest 1,000 of 1,234; --limit N" in err


# ---- tail waits for the store ---------------------------------------------------------------


def test_tail_waits_for_the_store_to_appear_subprocess(fastbuf_home: Path) -> None:
    """subprocess: ``tail`` started before any store exists follows it once the agent
    creates it."""
    env = {**os.environ, "EMP_FASTBUF_HOME": str(fastbuf_home)}
    with subprocess.Popen(
        [sys.executable, "-m", "emp_fastbuf", "tail", "--json", "-n", "0", "--count", "1",
         "--max-seconds", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        assert "waiting for it" in proc.stderr.readline()  # tail is up, and waits
        assert proc.poll() is None
        with Store(fastbuf_home / "store.sqlite") as store:
            deadline = time.monotonic() + 30
            i = 0
            while proc.poll() is None and time.monotonic() < deadline:
                store.ingest([(W1, [log(f"first {i}", i)])])
                i += 1
                time.sleep(0.1)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert bodies(out)[0].startswith("first ")
    assert "Traceback" not in err


def test_tail_without_a_store_stops_at_max_seconds(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["tail", "--max-seconds", "0.3"], capsys)
    assert (code, out) == (0, "")
    one_line_error(err, "no store at", "waiting")
    assert not (fastbuf_home / "store.sqlite").exists()  # a reader never creates the store


# ---- --version ------------------------------------------------------------------------------


def test_version_subprocess(tmp_path: Path) -> None:
    """subprocess: ``fastbuf --version`` prints the package version, exit 0."""
    out = fastbuf(["--version"], tmp_path)
    assert (out.returncode, out.stdout) == (0, f"fastbuf {__version__}\n"), out.stderr


# ---- docs/cli.md and the parser -------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command and subcommand, by its full name (``deadletter list``)."""
    found: dict[str, argparse.ArgumentParser] = {}
    todo = [("", build_parser())]
    while todo:
        prefix, parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix} {name}".strip()] = sub
                    todo.append((f"{prefix} {name}".strip(), sub))
    return found


def test_docs_name_every_command_and_flag_of_the_parser() -> None:
    doc = DOCS.read_text()
    synopsis = doc.split("```")[1]
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-n)\b", doc))
    for name, parser in _commands().items():
        assert re.search(rf"^fastbuf {name}\b", synopsis, re.M), name
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue  # for tests and the agent's own use
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert flag in documented, f"fastbuf {name} {flag} is not in docs/cli.md"
    assert "--version" in documented


def test_docs_name_no_flag_the_parser_lacks() -> None:
    flags = {"--version", "--help"}
    for parser in _commands().values():
        for action in parser._actions:
            flags.update(action.option_strings)
    documented = set(re.findall(r"`[^`]*?(?<![\w-])(--[a-z][a-z-]*)", DOCS.read_text()))
    assert documented - flags == set()


def test_piped_trace_and_metrics_are_one_line_each_subprocess(fastbuf_home: Path) -> None:
    """subprocess: ``trace`` and ``metrics`` piped: the tree one span or record per line
    with its waterfall, each series on one line; long names and attributes in full."""
    long_path = "/ckpt/" + "very-long-directory-name/" * 8 + "step-1000.pt"
    groups = sample_groups()
    groups.append((W1, [log("in the trace", 2.4, trace=TRACE_A, attributes={"p": long_path})]))
    groups.append((W1, [metric("gpu.memory.used", GAUGE, 1.0, 7, attributes={"p": long_path})]))
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest(groups)
    trace = fastbuf(["trace", TRACE_A.hex()], fastbuf_home)
    assert trace.returncode == 0, trace.stderr
    lines = trace.stdout.splitlines()
    assert lines[0].startswith(f"trace {TRACE_A.hex()}  4 spans")
    names = ["job", "load", "loading data", "train", "step", "checkpoint", "slow step"]
    positions = [next(i for i, x in enumerate(lines) if f" {n}" in x) for n in names]
    assert positions == sorted(positions)  # tree order, records under their spans
    bars = {n: next(x for x in lines if x.endswith(f" {n}") or f" {n} " in x) for n in names[:2]}
    assert bars["job"].count("█") == 40 and bars["load"].count("█") == 10  # 4 s and 1 s
    assert any(long_path in x and "in the trace" in x for x in lines)  # an orphan, in full
    assert "\x1b" not in trace.stdout
    metrics = fastbuf(["metrics", "--name", "gpu.*"], fastbuf_home)
    assert metrics.returncode == 0, metrics.stderr
    lines = metrics.stdout.splitlines()
    assert len(lines) == 3
    assert any(x.startswith("gpu.memory.used gauge m1/w1") and long_path in x for x in lines)
