"""``fastbuf`` views: the short trace id in every record view and ``fastbuf trace PREFIX``,
``correlate`` limited to the job and its machine's metrics, the "no store" error when an
endpoint is configured, and ``fastbuf logs | grep -c JOB``.

Most tests call ``cli.main`` in the test process on a real store; those marked
"subprocess" run ``python -m emp_fastbuf`` (stdout a pipe), and the end-to-end ones real
worker processes and a real agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emp_fastbuf import cli
from emp_fastbuf.agent.status import shown_url
from emp_fastbuf.cli import render
from emp_fastbuf.store import Store, StoreError
from emp_fastbuf.testing.receiver import OTLPReceiver
from support.agent import AgentProc
from support.store import TRACE_A, TRACE_B, W1, W2, log, sample_groups

SHORT_A = TRACE_A.hex()[:8]  # 0af76519
# Shares its first four digits with trace A, and no more.
TRACE_C = bytes.fromhex("0af7ffffffffffffffffffffffffffff")


@pytest.fixture
def home(fastbuf_home: Path) -> Path:
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest(sample_groups())
    return fastbuf_home


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process calls show the terminal views, wide enough for one line a record."""
    monkeypatch.setattr(render, "piped", lambda: False)
    monkeypatch.setenv("COLUMNS", "220")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def fastbuf(
    args: list[str], home: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("fastbuf "), err
    for w in words:
        assert w in err, err


# ---- the short trace id in the views --------------------------------------------------------


def test_records_table_and_tail_show_the_short_trace_id(
    home: Path, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    code, out, _ = run(["logs", "--limit", "0"], capsys)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["time", "source", "job", "trace", "record", "attributes"]
    at = header.index("trace")
    by_body = {name: row for row in rows for name in ("loading data", "idle") if name in row}
    assert by_body["loading data"][at : at + 9] == f"{SHORT_A} "
    assert by_body["idle"][at : at + 2] == "- "  # a record of no trace
    code, out, _ = run(["correlate", "job-a"], capsys)
    assert code == 0
    (job_span,) = [row for row in out.splitlines() if re.search(r"span\s+job\b", row)]
    assert SHORT_A in job_span
    code, out, _ = run(["tail", "-n", "2", "--count", "2", "--job", "job-a"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split(" ")[3:6] for line in lines] == [
        ["m1/w1", "[job-a]", f"trace:{SHORT_A}"],
        ["m1/w1", "[job-a]", f"trace:{SHORT_A}"],
    ]


def test_piped_lines_show_the_short_id_that_trace_accepts_subprocess(home: Path) -> None:
    """subprocess: the piped ``logs`` line is ``time source [job] trace:SHORT record``;
    ``fastbuf trace SHORT`` shows the same trace as the whole id."""
    out = fastbuf(["logs", "--limit", "0", "--utc"], home)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if "loading data" in x]
    assert line.startswith(
        f"2023-11-14 22:13:21.500 +00:00 m1/w1 [job-a] trace:{SHORT_A} INFO  loading data"
    )
    (idle,) = [x for x in out.stdout.splitlines() if "idle" in x]
    assert "trace:" not in idle
    short = re.search(r" trace:([0-9a-f]+) ", line)
    assert short is not None and short.group(1) == SHORT_A
    by_short = fastbuf(["trace", short.group(1), "--json"], home)
    by_whole = fastbuf(["trace", TRACE_A.hex(), "--json"], home)
    assert by_short.returncode == 0, by_short.stderr
    assert by_short.stdout == by_whole.stdout and by_short.stdout
    corr = fastbuf(["correlate", "job-a"], home)
    assert corr.returncode == 0, corr.stderr
    (span_line,) = [x for x in corr.stdout.splitlines() if re.search(r"span\s+job\b", x)]
    assert f"[job-a] trace:{SHORT_A} span" in span_line


# ---- fastbuf trace PREFIX, --trace PREFIX ---------------------------------------------------


@pytest.fixture
def two_traces(home: Path) -> Path:
    """Traces A and C share their first four digits (0af7)."""
    with Store(home / "store.sqlite") as store:
        store.ingest([(W2, [log("in trace c", 2, trace=TRACE_C, context={"job_id": "job-c"})])])
    return home


def test_trace_takes_a_unique_prefix(two_traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = run(["trace", TRACE_A.hex(), "--json"], capsys)
    assert whole[0] == 0
    for prefix in ("0af76", "0AF765", SHORT_A, TRACE_A.hex()[:31]):  # odd counts too
        assert run(["trace", prefix, "--json"], capsys) == whole, prefix
    code, out, _ = run(["trace", "0af7f", "--json"], capsys)
    assert code == 0
    assert [json.loads(x)["name"] for x in out.splitlines()] == ["in trace c"]


def test_an_ambiguous_prefix_is_exit_2_naming_the_ids(
    two_traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["trace", "0af7"], ["logs", "--trace", "0af7"], ["tail", "--trace", "0AF7"]):
        code, out, err = run(argv, capsys)
        assert (code, out) == (2, ""), argv
        one_line_error(err, "'0af7'", TRACE_A.hex(), TRACE_C.hex(), "more digits")
        assert "and more" not in err


def test_an_ambiguous_prefix_names_a_few_of_the_ids(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [f"beef{i:x}" + "0" * 27 for i in range(8)]
    with Store(fastbuf_home / "store.sqlite") as store:
        store.ingest([(W1, [log(f"t{i}", i, trace=bytes.fromhex(t)) for i, t in enumerate(ids)])])
    code, _, err = run(["trace", "beef"], capsys)
    assert code == 2
    one_line_error(err, *ids[:5], "and more", "more digits")
    assert ids[5] not in err


def test_a_prefix_of_no_trace_is_exit_1(
    two_traces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["trace", "0af8"], capsys)
    assert (code, out) == (1, "")
    one_line_error(err, "no trace id starting with 0af8")
    code, out, err = run(["logs", "--trace", "0af8"], capsys)
    assert (code, out) == (1, "")
    one_line_error(err, "no trace id starting with 0af8")
    code, _, err = run(["trace", TRACE_B.hex()], capsys)  # a whole id: said as it is
    assert code == 1
    one_line_error(err, f"no trace {TRACE_B.hex()} in the store")


@pytest.mark.parametrize("bad", ["0af", "0af7x", TRACE_A.hex() + "0", " "])
def test_a_prefix_that_is_not_one_is_exit_2(
    two_traces: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    for argv in (["trace", bad], ["logs", "--trace", bad], ["tail", "--trace", bad]):
        code, out, err = run(argv, capsys)
        assert (code, out) == (2, ""), argv
        one_line_error(err, "32 hex digits", "first 4 or more")


def test_logs_and_tail_take_a_prefix(two_traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["logs", "--trace", "0af76", "--json", "--limit", "0"], capsys)
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert {o["trace_id"] for o in lines} == {TRACE_A.hex()}
    assert [o["name"] for o in lines] == [
        "loading data",
        "slow step",
        "epoch_end",
        "train failed",
        "lost span",
    ]
    code, out, _ = run(["tail", "--trace", "0af7f", "--json", "-n", "5", "--count", "1"], capsys)
    assert code == 0
    assert [json.loads(x)["name"] for x in out.splitlines()] == ["in trace c"]


def test_tail_with_a_prefix_no_trace_has_yet_follows_it(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tail --trace beef`` before any trace starts with beef shows the records of the
    traces that then come with it, and nothing else."""
    resolved = threading.Event()
    real_trace_ids = Store.trace_ids

    def trace_ids(self: Store, prefix: str, limit: int = 10) -> list[str]:
        found = real_trace_ids(self, prefix, limit)
        resolved.set()  # tail has looked: the trace comes after
        return found

    monkeypatch.setattr(Store, "trace_ids", trace_ids)
    beef = bytes.fromhex("beef" + "0" * 28)

    def write() -> None:
        assert resolved.wait(60)
        with Store(home / "store.sqlite") as store:
            store.ingest([(W1, [log("other", 10, trace=TRACE_B)])])
            store.ingest([(W1, [log("in beef", 11, trace=beef)])])

    writer = threading.Thread(target=write)
    writer.start()
    argv = ["tail", "--trace", "beef", "--json", "-n", "5", "--count", "1", "--max-seconds", "60"]
    code, out, _ = run(argv, capsys)
    writer.join()
    assert code == 0
    assert [(json.loads(x)["name"], json.loads(x)["trace_id"]) for x in out.splitlines()] == [
        ("in beef", beef.hex())
    ]


# ---- the "no store" error when an endpoint is configured ------------------------------------

SECRET_URL = "https://robot:pa55w0rd@collector.example:4318/otlp?api_key=s3cr3t#frag"
SHOWN_URL = "https://collector.example:4318/otlp"
STORE_COMMANDS = [["logs"], ["trace", SHORT_A], ["metrics"], ["correlate", "job-a"]]


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith(("OTEL_", "DASH0_")) or var == "EMP_FASTBUF_LOCAL_COPY":
            monkeypatch.delenv(var)


def assert_names_endpoint(err: str, *shown: str) -> None:
    one_line_error(
        err, "no store at", *shown, "fastbuf agent --local-copy", "EMP_FASTBUF_LOCAL_COPY=1"
    )
    for secret in ("robot", "pa55w0rd", "s3cr3t", "api_key", "frag"):
        assert secret not in err, err


def test_shown_url_keeps_nothing_a_credential_may_be_in() -> None:
    assert shown_url(SECRET_URL) == SHOWN_URL
    assert shown_url(" http://[::1]:4318/v1/logs ") == "http://[::1]:4318/v1/logs"
    assert shown_url("https://h.example?token=x") == "https://h.example"
    assert shown_url("http://h:99999") == "(unreadable)"
    assert shown_url("collector:4318") == "(unreadable)"
    assert shown_url("http://h/a\x1b[31mb") == "http://h/a?[31mb"  # stays one plain line


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_no_store_says_where_the_environment_sends_records(
    fastbuf_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", SECRET_URL)
    code, out, err = run(command, capsys)
    assert (code, out) == (1, "")
    assert_names_endpoint(err, f"{SHOWN_URL} ($OTEL_EXPORTER_OTLP_ENDPOINT)", str(fastbuf_home))
    assert not (fastbuf_home / "store.sqlite").exists()


def test_tail_waiting_says_where_the_environment_sends_records(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", SECRET_URL)
    monkeypatch.setenv("DASH0_ENDPOINT", "https://ingress.eu.dash0.example")
    code, out, err = run(["tail", "--max-seconds", "0.3"], capsys)
    assert (code, out) == (0, "")
    assert_names_endpoint(
        err,
        "https://ingress.eu.dash0.example ($DASH0_ENDPOINT)",  # the traces and metrics
        f"{SHOWN_URL} ($OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)",
        "waiting for it (Ctrl-C stops)",
    )


def test_no_endpoint_or_a_local_copy_is_the_plain_no_store_error(
    fastbuf_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    code, _, plain = run(["logs"], capsys)
    assert code == 1
    one_line_error(plain, "no store at", "the agent writes it when it runs with no endpoint")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", SECRET_URL)
    monkeypatch.setenv("EMP_FASTBUF_LOCAL_COPY", "true")  # that agent writes the store too
    assert run(["logs"], capsys) == (1, "", plain)
    monkeypatch.setenv("EMP_FASTBUF_LOCAL_COPY", "")  # empty: unset, as the agent reads it
    code, _, err = run(["logs"], capsys)
    assert code == 1
    assert_names_endpoint(err, SHOWN_URL)


def test_no_store_says_where_the_agent_status_sends_records(
    env_clean: Path,
    agent_ring: str,
    receiver: OTLPReceiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real agent that exported to a real receiver left its status file: with nothing in
    the environment, the error names that agent's endpoints."""
    monkeypatch.delenv("EMP_FASTBUF_LOCAL_COPY", raising=False)
    agent = AgentProc(agent_ring, env_clean, "--endpoint", receiver.url)
    agent.wait_ready()
    assert agent.stop() == 0
    assert not (env_clean / "store.sqlite").exists()
    shown = [f"{receiver.url}/v1/{s} (the agent of ring {agent_ring!r})" for s in ("logs",
             "metrics", "traces")]  # fmt: skip
    for command in STORE_COMMANDS:
        code, out, err = run(command, capsys)
        assert (code, out) == (1, ""), command
        assert_names_endpoint(err, ", ".join(shown))


# ---- end to end: real workers, a real agent -------------------------------------------------

# One worker process runs two jobs at the same time on machine m-views: each gets a log
# and a counter increment, then (after a line on stdin) another; a gauge of the worker in
# no job's context in between.
TWO_JOBS = r"""
import sys
import emp_fastbuf as fastbuf
fastbuf.configure(service="trainer", machine_id="m-views", worker_id="w-1", ring=sys.argv[1],
                  agent="external")
steps = fastbuf.metrics.counter("steps")
def step(phase):
    for job in ("job-north", "job-south"):
        with fastbuf.context(job_id=job):
            fastbuf.log.info(f"{phase} {job}")
            steps.inc(1, phase=phase)
step("start")
print("started", flush=True)
sys.stdin.readline()
fastbuf.metrics.gauge("worker.queue").set(3)
step("end")
"""


def _wait_for_store(home: Path, predicate: str) -> None:
    """Until the store holds a log whose body contains ``predicate``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (home / "store.sqlite").exists():
            try:
                with Store(home / "store.sqlite", readonly=True) as store:
                    if store.logs(grep=predicate):
                        return
            except StoreError:
                pass  # the agent is creating it
        time.sleep(0.05)
    raise AssertionError(f"no {predicate!r} in the store")


def test_correlate_two_overlapping_jobs_on_one_machine_through_a_real_agent(
    env_clean: Path, agent_ring: str
) -> None:
    """Two jobs run at the same time in one worker on one machine. The agent reports the
    machine's metrics when it starts and when it stops: the first agent does both while
    the jobs run, the second after they ended. ``correlate`` of each job shows its own
    records, never the other job's or the worker's untagged gauge, and the first agent's
    machine metrics, labelled, but not the second's."""
    home, env = env_clean, {"EMP_MACHINE_ID": "m-views"}
    with subprocess.Popen(
        [sys.executable, "-c", TWO_JOBS, agent_ring],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        assert worker.stdout.readline() == "started\n"
        during = AgentProc(agent_ring, home, env=env)
        _wait_for_store(home, "start job-south")
        assert during.stop() == 0
        worker.stdin.write("go\n")
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    after = AgentProc(agent_ring, home, env=env)
    _wait_for_store(home, "end job-south")
    assert after.stop() == 0

    with Store(home / "store.sqlite", readonly=True) as store:
        series = store.metrics(machine="m-views")
    agent_times = {s.time_unix_nano for s in series if s.worker_id is None}
    assert agent_times  # the machine reported, and when it last did is after the jobs
    for job, other in (("job-north", "job-south"), ("job-south", "job-north")):
        out = fastbuf(["correlate", job, "--json"], home)
        assert out.returncode == 0, out.stderr
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        own = [o for o in lines if o["scope"] == "job"]
        machine = [o for o in lines if o["scope"] == "machine"]
        assert {o["job_id"] for o in own} == {job}
        assert sorted(o["name"] for o in own if o["kind"] == "log") == [
            f"end {job}",
            f"start {job}",
        ]
        steps = [o for o in own if o["name"] == "steps"]
        assert sorted(o["attributes"]["phase"] for o in steps) == ["end", "start"]
        assert other not in out.stdout and "worker.queue" not in out.stdout
        start = min(o["time_unix_nano"] for o in own)
        end = max(o["time_unix_nano"] for o in own)
        assert machine, "no machine metrics inside the job's window"
        assert {(o["machine_id"], o["worker_id"], o["service"]) for o in machine} == {
            ("m-views", None, "emp-fastbuf-agent")
        }
        assert all(start <= o["time_unix_nano"] <= end for o in machine)
        assert max(agent_times) > end  # the second agent's reports: left out
        # The view for people labels the same records as machine metrics.
        piped = fastbuf(["correlate", job], home)
        assert piped.returncode == 0, piped.stderr
        heading, *rows = piped.stdout.splitlines()
        assert f"; {len(machine)} machine metric update" in heading and "of m-views" in heading
        assert sum(" machine metric " in row for row in rows) == len(machine)
        assert len(rows) == len(lines)


# Workers of three jobs: numbered logs in the job's context, one exception with its stack
# trace (newlines) in it, and logs in no job's context.
JOBS = {"job-alpha": 40, "job-bravo": 25, "job-charlie": 7}
GREP_WORKER = r"""
import sys
import emp_fastbuf as fastbuf
ring, job, n, worker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fastbuf.configure(service="trainer", machine_id="m-grep", worker_id=worker, ring=ring,
                  agent="external")
fastbuf.log.info("worker up", tag="none")
with fastbuf.context(job_id=job):
    for i in range(n - 1):
        fastbuf.log.info("step", seq=i)
    try:
        raise RuntimeError("CUDA out of memory\nwhile loading the unet")
    except RuntimeError:
        fastbuf.log.exception("step failed")
fastbuf.log.info("worker down")
"""


def test_logs_piped_through_grep_counts_each_jobs_log_records(
    env_clean: Path, agent_ring: str
) -> None:
    """``fastbuf logs --limit 0 | grep -c JOB``, through a real shell pipe and grep, is the
    number of log records each job's worker emitted in the job's context; the stack
    traces keep one line a record."""
    agent = AgentProc(agent_ring, env_clean)
    for i, (job, n) in enumerate(JOBS.items()):
        worker = subprocess.run(
            [sys.executable, "-c", GREP_WORKER, agent_ring, job, str(n), f"w{i}"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
        )
        assert worker.returncode == 0, worker.stderr
    assert agent.stop() == 0  # a stopping agent stores everything in the ring first
    env = {**os.environ, "EMP_FASTBUF_HOME": str(env_clean)}
    fb = f"{sys.executable} -m emp_fastbuf logs --limit 0"
    for job, n in JOBS.items():
        out = subprocess.run(
            ["sh", "-c", f'{fb} | grep -c "$0"', job], capture_output=True, text=True, env=env
        )
        assert (out.returncode, out.stdout, out.stderr) == (0, f"{n}\n", ""), job
    total = subprocess.run(["sh", "-c", f"{fb} | wc -l"], capture_output=True, text=True, env=env)
    assert int(total.stdout) == sum(JOBS.values()) + 2 * len(JOBS)
    failed = subprocess.run(
        ["sh", "-c", f"{fb} | grep -c 'Traceback (most recent call last)'"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.stdout == f"{len(JOBS)}\n"
