"""``receiver.ingest``: OTLP/HTTP log requests through the agent's receiver, for seconds.

A real agent (``python -m emp_fastbuf agent --otlp-listen 127.0.0.1:0 --endpoint URL``, its
own home and ring) takes ``ExportLogsServiceRequest`` bodies of 1,000 log records each
(gzip, as SDKs send) from a sender process on the same machine: ``CONNECTIONS`` threads,
each with one keep-alive ``http.client`` connection, post for a fixed duration. The agent
spools every request durably before it answers 200 and exports the records to a loopback
OTLP/HTTP receiver in a process of its own (``ReceiverProcess(decode=False)``, as
``bench.sustained`` uses), which keeps the bodies; they are decoded after the run.

The bodies are built before the clock starts, every record with its own ``seq``
(``1 << 40 | index``, a 6-byte varint, so one template record is patched per record) and
``emp.job_id``: the downstream count checks that every accepted record arrived exactly
once. Figures: records/s accepted (200 answers) over the sender's window, records/s
delivered (from the start until the last request reached the downstream receiver), the
agent's CPU per record (utime + stime from ``/proc``) and its peak RSS.

Peer: the OpenTelemetry Collector is not installable here from a package registry (no
``otelcol`` in apt, PyPI or npm; the Go proxy serves its source modules, but the Go here,
apt's 1.19, is older than the collector needs), so the figure is absolute.
``python -m bench.receiver_ingest [--duration S]`` runs it on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import sustained

__all__ = [
    "BUDGET_RATE",
    "DURATION_S",
    "NAME",
    "QUICK_DURATION_S",
    "budget_rows",
    "build_bodies",
    "markdown_lines",
    "register_budgets",
    "run",
]

NAME = "receiver.ingest"
DURATION_S = 10.0
QUICK_DURATION_S = 3.0
RECORDS_PER_REQUEST = 1_000
CONNECTIONS = 3
BUDGET_RATE = 200_000  # the issue: at least 200k log records/s through the receiver
# Bodies are built ahead for this rate; a sender that runs out stops early and says so.
_PLANNED_RATE = 600_000
_SEQ_BASE = 1 << 40  # with index < 2^40 every seq is a 6-byte varint
PEER_NOTE = (
    "peer: the OpenTelemetry Collector is not installable here from a package registry "
    "(no otelcol in apt, PyPI or npm; the Go proxy serves its source modules, but apt's "
    "Go 1.19 is older than the collector needs): absolute figure only"
)

_START_TIMEOUT_S = 120.0
_SENDER_SLACK_S = 120.0  # beyond the duration: building the bodies, the last answers
_RECEIVER_TIMEOUT_S = 300.0
_REQUEST_TIMEOUT_S = 60.0


# ---- the bodies ---------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def build_bodies(first: int, count: int, records: int = RECORDS_PER_REQUEST) -> list[bytes]:
    """``count`` gzip'd ``ExportLogsServiceRequest`` bodies of ``records`` log records each,
    with ``seq`` = ``_SEQ_BASE + first`` onwards: every record of every body is distinct."""
    import numpy as np
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    if first + count * records >= _SEQ_BASE:
        raise ValueError("seq would not fit in 6 varint bytes")
    now = time.time_ns()
    template = LogRecord(
        time_unix_nano=now,
        observed_time_unix_nano=now,
        severity_number=9,
        severity_text="INFO",
        body=AnyValue(string_value="step done"),
        attributes=[
            KeyValue(key="emp.job_id", value=AnyValue(string_value=sustained.JOB_ID)),
            KeyValue(key="model", value=AnyValue(string_value="m-8b")),
            KeyValue(key="loss", value=AnyValue(double_value=2.5)),
            KeyValue(key="ok", value=AnyValue(bool_value=True)),
        ],
    ).SerializeToString()
    # attributes (field 6) += KeyValue{key "seq", value AnyValue{int_value (field 3)}}:
    # a repeated field may come after the others; only the 6 varint bytes differ.
    placeholder = _varint(_SEQ_BASE)
    seq_kv = _field(6, _field(1, b"seq") + _field(2, b"\x18" + placeholder))
    record = _field(2, template + seq_kv)  # ScopeLogs.log_records
    offset = len(record) - len(placeholder)
    scope = _field(1, InstrumentationScope(name="bench.receiver").SerializeToString())
    resource = _field(
        1,
        Resource(
            attributes=[KeyValue(key="service.name", value=AnyValue(string_value="bench-receiver"))]
        ).SerializeToString(),
    )
    rows = np.frombuffer(record * records, dtype=np.uint8).reshape(records, len(record)).copy()
    bodies = []
    for b in range(count):
        seqs = np.arange(records, dtype=np.uint64) + np.uint64(_SEQ_BASE + first + b * records)
        for k in range(6):
            byte = (seqs >> np.uint64(7 * k)) & np.uint64(0x7F)
            rows[:, offset + k] = byte | (np.uint64(0x80) if k < 5 else np.uint64(0))
        scope_logs = _field(2, scope + rows.tobytes())  # ResourceLogs.scope_logs
        # Level 6, zlib's default, as the Go and Java SDKs compress.
        bodies.append(gzip.compress(_field(1, resource + scope_logs), compresslevel=6))
    return bodies


# ---- the sender (a process of its own) ----------------------------------------------------


def _post_loop(
    address: str, bodies: list[bytes], end: float, out: dict[str, Any], lock: threading.Lock
) -> None:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=_REQUEST_TIMEOUT_S)
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    accepted = refused = wire = 0
    statuses: dict[str, int] = {}
    try:
        for body in bodies:
            if time.monotonic() >= end:
                break
            conn.request("POST", "/v1/logs", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                accepted += 1
                wire += len(body)
            else:
                refused += 1
                statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
        else:
            with lock:
                out["ran_out"] = True
    finally:
        conn.close()
        with lock:
            out["accepted_requests"] += accepted
            out["refused_requests"] += refused
            out["wire_bytes"] += wire
            for code, n in statuses.items():
                out["statuses"][code] = out["statuses"].get(code, 0) + n


def _sender_main(address: str, connections: int, duration: float) -> None:
    per_conn = -(-round(_PLANNED_RATE * duration / RECORDS_PER_REQUEST) // connections)
    t0 = time.monotonic()
    plans = [build_bodies(c * per_conn * RECORDS_PER_REQUEST, per_conn) for c in range(connections)]
    build_s = time.monotonic() - t0
    sustained._ready()
    out: dict[str, Any] = {
        "accepted_requests": 0,
        "refused_requests": 0,
        "wire_bytes": 0,
        "statuses": {},
        "ran_out": False,
    }
    lock = threading.Lock()
    start = time.monotonic()
    end = start + duration
    threads = [
        threading.Thread(target=_post_loop, args=(address, plan, end, out, lock)) for plan in plans
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["elapsed_s"] = time.monotonic() - start
    out["build_s"] = build_s
    out["bodies_built"] = per_conn * connections
    sys.stdout.write("result " + json.dumps(out) + "\n")
    sys.stdout.flush()


def _cpu_split(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of ``pid`` in seconds from ``/proc/<pid>/stat``; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return None


# ---- the run ------------------------------------------------------------------------------


def _listen_address(home: Path, ring: str, proc: subprocess.Popen[bytes]) -> str:
    """The receiver's bound address from the agent's status file (``agent.otlp_listen``)."""
    from emp_fastbuf import paths

    status = paths.status_path(home, ring)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = sustained._stderr_tail(proc)
            raise RuntimeError(f"the agent exited {proc.returncode}: {tail}")
        with contextlib.suppress(OSError, ValueError):
            listen = json.loads(status.read_text(encoding="utf-8"))["agent"]["otlp_listen"]
            if listen:
                return str(listen)
        time.sleep(0.05)
    raise RuntimeError("the agent did not report its OTLP receiver's address in time")


def _wait_delivered(receiver: Any, limit_s: float, started: float) -> tuple[int, float]:
    """Poll the downstream receiver until it stops receiving (``sustained._SETTLE_S``
    without a new request); returns the request count and the seconds from ``started``
    to the last one seen."""
    last_count = -1
    last_at = time.monotonic()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        count, _ = receiver.received()
        now = time.monotonic()
        if count != last_count:
            last_count, last_at = count, now
        elif now - last_at >= sustained._SETTLE_S:
            break
        time.sleep(0.05)
    return last_count, last_at - started


def run(duration: float = DURATION_S, connections: int = CONNECTIONS) -> dict[str, Any]:
    """One run; everything it started is stopped and removed before it returns. Raises
    ``RuntimeError`` when a record did not arrive exactly once."""
    row: dict[str, Any] = {
        "name": NAME,
        "duration_s": duration,
        "connections": connections,
        "records_per_request": RECORDS_PER_REQUEST,
        "compression": "gzip",
        "peer": PEER_NOTE,
        "load_average": list(os.getloadavg()),
    }
    home = Path(tempfile.mkdtemp(prefix="bench-receiver-"))
    os.chmod(home, 0o700)
    ring = f"bench-rx-{os.getpid()}"
    agent: subprocess.Popen[bytes] | None = None
    sender: subprocess.Popen[bytes] | None = None
    receiver = sustained.start_receiver()
    try:
        env = sustained._clean_env()
        env["EMP_FASTBUF_HOME"] = str(home)
        env["EMP_FASTBUF_RING"] = ring
        env["EMP_FASTBUF_LOG_LEVEL"] = "WARNING"
        agent = subprocess.Popen(
            [
                sys.executable, "-m", "emp_fastbuf", "agent",
                "--otlp-listen", "127.0.0.1:0", "--otlp-grpc-listen", "off",
                "--endpoint", receiver.url, "--compression", "gzip",
            ],
            cwd=sustained.REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        address = _listen_address(home, ring, agent)
        sender = subprocess.Popen(
            [
                sys.executable, "-m", "bench.receiver_ingest", "--sender", address,
                str(connections), repr(duration),
            ],
            cwd=sustained.REPO,
            env=sustained._clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT_S + _SENDER_SLACK_S
        if sustained._read_line(sender, deadline) != "ready":
            raise RuntimeError("the sender did not say ready")
        cpu0 = sustained._proc_cpu_s(agent.pid)
        split0 = _cpu_split(agent.pid)
        started = time.monotonic()
        assert sender.stdin is not None
        sender.stdin.write(b"go\n")
        sender.stdin.flush()
        line = sustained._read_line(sender, started + duration + _SENDER_SLACK_S)
        if not line.startswith("result "):
            raise RuntimeError(f"the sender said {line[:200]!r}")
        sent = json.loads(line.removeprefix("result "))
        sender.wait(timeout=30)
        _, delivered_s = _wait_delivered(receiver, sustained._SETTLE_MAX_S, started)
        cpu1 = sustained._proc_cpu_s(agent.pid)
        split1 = _cpu_split(agent.pid)
        if split0 is not None and split1 is not None:
            row["agent_user_s"] = round(split1[0] - split0[0], 3)
            row["agent_system_s"] = round(split1[1] - split0[1], 3)
        row["agent_peak_rss_bytes"] = sustained._proc_hwm(agent.pid)
        row["agent_exit"] = sustained._stop(agent, sustained._AGENT_STOP_TIMEOUT_S)
        counts = receiver.collect()
    finally:
        for proc in (sender, agent):
            if proc is not None:
                sustained._stop(proc, sustained._AGENT_STOP_TIMEOUT_S)
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        receiver.close()
        shutil.rmtree(home, ignore_errors=True)
    accepted = int(sent["accepted_requests"]) * RECORDS_PER_REQUEST
    delivered = int(counts["unique"])
    elapsed = float(sent["elapsed_s"])
    agent_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    row.update(
        accepted=accepted,
        accepted_per_s=round(accepted / elapsed, 1),
        refused_requests=int(sent["refused_requests"]),
        statuses=sent["statuses"],
        ran_out=bool(sent["ran_out"]),
        sender_elapsed_s=round(elapsed, 3),
        sender_build_s=round(float(sent["build_s"]), 2),
        sender_wire_bytes_per_record=round(sent["wire_bytes"] / max(1, accepted), 2),
        delivered=delivered,
        delivered_s=round(delivered_s, 3),
        delivered_per_s=round(delivered / delivered_s, 1) if delivered_s > 0 else 0.0,
        duplicates=int(counts["duplicates"]),
        wrong_job=int(counts["wrong_job"]),
        undecodable=int(counts["undecodable"]),
        downstream_requests=int(counts["requests"]),
        lost=accepted - delivered,
        agent_cpu_s=None if agent_cpu is None else round(agent_cpu, 3),
        agent_cpu_ns_per_record=(
            None if agent_cpu is None or not delivered else round(agent_cpu / delivered * 1e9, 1)
        ),
    )
    problems = []
    if row["lost"] or row["duplicates"] or row["wrong_job"] or row["undecodable"]:
        problems.append(
            f"not exactly once: accepted {accepted}, delivered {delivered}, duplicates "
            f"{row['duplicates']}, wrong job {row['wrong_job']}, undecodable {row['undecodable']}"
        )
    if counts["log_records"] != delivered + row["duplicates"]:
        problems.append(f"records without seq downstream: {counts['without_seq']}")
    if row["agent_exit"] != 0:
        problems.append(f"the agent exited {row['agent_exit']}")
    if problems:
        raise RuntimeError("; ".join(problems) + f" ({json.dumps(row)})")
    return row


# ---- budgets and report -------------------------------------------------------------------


def budget_rows(row: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The row for ``bench.scenarios`` budgets: ``ops_per_s`` is the end-to-end rate
    (records delivered over the time from the start until the last one arrived, never more
    than the accepted rate) and ``lost`` accepted records that did not arrive."""
    if not row or "error" in row:
        return {}
    rate = min(float(row["accepted_per_s"]), float(row["delivered_per_s"]))
    return {NAME: {"ops_per_s": rate, "lost": float(row["lost"])}}


_BUDGETS = (
    (f"ops_per_s({NAME}) >= {BUDGET_RATE}", f"{NAME}: at least {BUDGET_RATE:,} log records/s"),
    (f"lost({NAME}) <= 0", f"{NAME}: every accepted record delivered"),
)


def register_budgets() -> None:
    """Add this scenario's budgets to ``bench.scenarios`` (a second call does nothing)."""
    from bench.scenarios import add_budget, budgets

    have = {b.name for b in budgets()}
    for expr, name in _BUDGETS:
        if name not in have:
            add_budget(expr, name=name)


def markdown_lines(row: Mapping[str, Any]) -> list[str]:
    """The scenario's section of ``latest.md``."""
    if "error" in row:
        return ["## receiver.ingest", "", f"failed: {row['error']}", ""]
    cpu = row.get("agent_cpu_ns_per_record")
    load = ", ".join(f"{x:.2f}" for x in row["load_average"])
    return [
        "## receiver.ingest (OTLP/HTTP logs through the agent's receiver)",
        "",
        "| accepted/s | delivered/s | accepted | delivered | duplicates | refused requests "
        "| agent CPU/record | agent peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['accepted_per_s']:,.0f} | {row['delivered_per_s']:,.0f} | {row['accepted']:,} "
        f"| {row['delivered']:,} | {row['duplicates']} | {row['refused_requests']} "
        f"| {'' if cpu is None else f'{cpu:,.0f} ns'} "
        f"| {(row.get('agent_peak_rss_bytes') or 0) / (1 << 20):.0f} MiB |",
        "",
        f"{row['duration_s']:g} s, {row['connections']} keep-alive connections, "
        f"{row['records_per_request']:,} records per gzip'd request "
        f"({row['sender_wire_bytes_per_record']} bytes/record on the wire); load average at "
        f"the start {load}.",
        "",
        row["peer"] + ".",
        "",
    ]


def run_logged(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """``run`` for ``bench.run``: a failure is kept as ``{"error": ...}``."""
    duration = QUICK_DURATION_S if quick else DURATION_S
    log(f"{NAME}: {CONNECTIONS} connections, {duration:g} s ...")
    try:
        row = run(duration)
    except Exception as exc:
        log(f"    FAILED: {exc}")
        return {"name": NAME, "error": str(exc)[:2000]}
    log(
        f"    accepted {row['accepted_per_s']:,.0f}/s, delivered {row['delivered_per_s']:,.0f}/s"
        f", {row['delivered']:,} records exactly once, agent "
        f"{row['agent_cpu_ns_per_record']} ns CPU/record"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.receiver_ingest``: one run, its report on stdout."""
    p = argparse.ArgumentParser(prog="python -m bench.receiver_ingest")
    p.add_argument("--duration", type=float, default=DURATION_S)
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    p.add_argument("--sender", nargs=3, metavar=("ADDRESS", "CONNECTIONS", "DURATION"))
    args = p.parse_args(argv)
    if args.sender:
        address, conns, duration = args.sender
        _sender_main(address, int(conns), float(duration))
        return 0
    if args.duration <= 0 or args.connections < 1:
        p.error("--duration must be > 0 and --connections >= 1")
    row = run(args.duration, args.connections)
    print(json.dumps(row, indent=2) if args.json else "\n".join(markdown_lines(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
