"""Machine status metrics, collected for real on this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from emp_fastbuf.agent.machine import (
    MAX_MACHINE_IDS,
    collect_machine_metrics,
    machine_ids,
    machine_resource,
)
from emp_fastbuf.records import GAUGE, METRIC, Record
from support.agent import AgentProc, run_worker

# name -> unit, per the OpenTelemetry semantic conventions.
UNITS = {
    "system.cpu.utilization": "1",
    "system.memory.usage": "By",
    "system.memory.limit": "By",
    "system.memory.utilization": "1",
    "system.filesystem.usage": "By",
    "system.filesystem.limit": "By",
    "system.filesystem.utilization": "1",
    "hw.gpu.utilization": "1",
    "hw.gpu.memory.usage": "By",
    "hw.gpu.memory.limit": "By",
}


def nvml_initialises() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


def by_name(recs: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        out[r.name].append(r)
    return out


def test_every_record_is_a_semconv_gauge() -> None:
    now = time.time_ns()
    recs = collect_machine_metrics(now)
    assert recs
    for r in recs:
        assert r.kind == METRIC
        assert r.instrument == GAUGE
        assert r.name in UNITS, r.name
        assert r.unit == UNITS[r.name], r.name
        assert r.time_unix_nano == now
        assert r.description
        assert isinstance(r.value, int | float) and not isinstance(r.value, bool)
        if r.unit == "1":
            assert 0.0 <= r.value <= 1.0, (r.name, r.value, r.attributes)
        else:
            assert isinstance(r.value, int) and r.value >= 0, (r.name, r.value)


def test_cpu_utilization_overall_and_per_cpu() -> None:
    collect_machine_metrics()
    # Some real work between two readings, so the interval has busy time in it.
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        sum(range(1000))
    cpu = by_name(collect_machine_metrics())["system.cpu.utilization"]
    overall = [r for r in cpu if not r.attributes]
    per_cpu = sorted(r.attributes["cpu.logical_number"] for r in cpu if r.attributes)  # type: ignore[type-var]
    assert len(overall) == 1
    assert 0.0 < overall[0].value <= 1.0
    assert per_cpu == list(range(psutil.cpu_count(logical=True) or 0))


def test_memory_usage_and_utilization() -> None:
    groups = by_name(collect_machine_metrics())
    total = psutil.virtual_memory().total
    assert [r.value for r in groups["system.memory.limit"]] == [total]
    usage = {r.attributes["system.memory.state"]: r.value for r in groups["system.memory.usage"]}
    assert {"used", "free"} <= usage.keys()
    assert 0 < usage["used"] < total
    assert 0 < usage["free"] < total
    util = {
        r.attributes["system.memory.state"]: r.value for r in groups["system.memory.utilization"]
    }
    assert util.keys() == usage.keys()
    for state, value in usage.items():
        assert util[state] == pytest.approx(value / total)


def test_filesystem_per_mount_point() -> None:
    groups = by_name(collect_machine_metrics())
    mounts = {p.mountpoint for p in psutil.disk_partitions(all=False) if p.fstype != "squashfs"}
    usage = groups["system.filesystem.usage"]
    seen = {r.attributes["system.filesystem.mountpoint"] for r in usage}
    assert seen and seen <= mounts
    for mount in seen:
        states = {
            r.attributes["system.filesystem.state"]: r.value
            for r in usage
            if r.attributes["system.filesystem.mountpoint"] == mount
        }
        assert states.keys() == {"used", "free", "reserved"}
        (limit,) = [
            r.value
            for r in groups["system.filesystem.limit"]
            if r.attributes["system.filesystem.mountpoint"] == mount
        ]
        assert sum(states.values()) == limit == psutil.disk_usage(str(mount)).total
        (util,) = [
            r.value
            for r in groups["system.filesystem.utilization"]
            if r.attributes["system.filesystem.mountpoint"] == mount
        ]
        assert util == pytest.approx(states["used"] / limit)
        (sample,) = [r for r in usage if r.attributes["system.filesystem.mountpoint"] == mount][:1]
        assert sample.attributes["system.filesystem.mode"] in ("ro", "rw")
        assert sample.attributes["system.filesystem.type"]


def test_gpu_metrics_only_when_nvml_works() -> None:
    recs = collect_machine_metrics()
    gpu = [r for r in recs if r.name.startswith("hw.gpu.")]
    if not nvml_initialises():
        assert gpu == []
        return
    groups = by_name(gpu)
    assert groups.keys() == {"hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit"}
    ids = {r.attributes["hw.id"] for r in gpu}
    assert len(groups["hw.gpu.utilization"]) == len(ids) >= 1
    for r in gpu:
        assert r.attributes["hw.vendor"] == "nvidia"
        assert r.attributes["hw.type"] == "gpu"
        assert isinstance(r.attributes["hw.name"], str) and r.attributes["hw.name"]
        assert str(r.attributes["hw.id"]).startswith(("GPU-", "MIG-"))
    for gid in ids:
        (used,) = [r.value for r in groups["hw.gpu.memory.usage"] if r.attributes["hw.id"] == gid]
        (limit,) = [r.value for r in groups["hw.gpu.memory.limit"] if r.attributes["hw.id"] == gid]
        assert 0 <= used <= limit and limit > 0


def test_records_encode_with_the_reference_codec() -> None:
    reference = pytest.importorskip("emp_fastbuf.records.reference")
    for r in collect_machine_metrics():
        assert reference.decode_record(reference.encode_record(r)) == r
    res = machine_resource("m-1")
    assert reference.decode_resource(reference.encode_resource(res)) == res


def test_now_ns_is_validated() -> None:
    with pytest.raises(TypeError):
        collect_machine_metrics("now")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        collect_machine_metrics(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        collect_machine_metrics(-1)


def test_machine_resource() -> None:
    res = machine_resource("rack7-node3")
    attrs = res.attributes
    assert attrs["service.name"] == "emp-fastbuf-agent"
    assert attrs["emp.machine_id"] == "rack7-node3"
    assert attrs["host.name"] == socket.gethostname()
    assert attrs["process.pid"] == os.getpid()
    assert isinstance(attrs["service.instance.id"], str) and attrs["service.instance.id"]
    # Stable for the life of the agent process.
    assert (
        machine_resource("other").attributes["service.instance.id"] == attrs["service.instance.id"]
    )
    assert res.scope_name == "emp_fastbuf"
    with pytest.raises(TypeError):
        machine_resource(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        machine_resource("")


def test_no_nvml_means_a_debug_line_and_no_error() -> None:
    # A fresh process, so the first (and only) NVML attempt is the one observed.
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "from emp_fastbuf.agent.machine import collect_machine_metrics\n"
        "recs = collect_machine_metrics()\n"
        "print(sum(r.name.startswith('hw.gpu.') for r in recs))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    if nvml_initialises():
        assert int(proc.stdout) > 0
    else:
        assert int(proc.stdout) == 0
        assert "GPU metrics off" in proc.stderr


def test_machine_ids_are_the_agents_then_each_other_one_declared() -> None:
    declared = ["m-1", None, "", "host-a", 3, "m-2", "m-1"]
    assert machine_ids("host-a", declared) == ["host-a", "m-1", "m-2"]
    many = machine_ids("own", (f"m{i}" for i in range(100)))
    assert len(many) == MAX_MACHINE_IDS and many[:2] == ["own", "m0"]


def test_machine_metrics_carry_the_machine_id_a_producer_configured(
    env_clean: Path, agent_ring: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker says ``configure(machine_id="m-1")``: the agent's machine metrics go
    out under that id too, so ``fastbuf metrics --machine m-1`` shows them; the agent's
    own id (the host name here) keeps them."""
    monkeypatch.delenv("EMP_MACHINE_ID", raising=False)
    run_worker(agent_ring, 3, "M")
    agent = AgentProc(agent_ring, env_clean)
    assert agent.stop() == 0
    env = {**os.environ, "EMP_FASTBUF_HOME": str(env_clean)}
    for machine in ("m-1", socket.gethostname()):
        out = subprocess.run(
            [sys.executable, "-m", "emp_fastbuf", "metrics", "--machine", machine, "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        series = [json.loads(line) for line in out.stdout.splitlines()]
        machine_series = {s["name"] for s in series if s["service"] == "emp-fastbuf-agent"}
        assert {"system.memory.limit", "system.cpu.utilization"} <= machine_series, machine
        assert {s["machine_id"] for s in series} == {machine}
