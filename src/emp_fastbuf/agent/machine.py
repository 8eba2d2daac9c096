"""Machine status metrics the agent reports about its host: CPU, memory, filesystems, GPUs.

Names, units and attributes follow the OpenTelemetry semantic conventions for system and
hardware metrics. Every value is a GAUGE record: in this pipeline an UPDOWNCOUNTER record
carries a delta that the aggregator sums, while these are absolute readings (semconv
lists ``*.usage`` and ``*.limit`` as UpDownCounters; a gauge of the same reading is what
a backend charts either way).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import psutil

from emp_fastbuf import records
from emp_fastbuf._version import __version__
from emp_fastbuf.records import GAUGE, METRIC, Attributes, Record, Resource

__all__ = ["collect_machine_metrics", "machine_ids", "machine_resource"]

log = logging.getLogger("emp_fastbuf.agent")

AGENT_SERVICE_NAME = "emp-fastbuf-agent"
# One id per agent process: distinguishes restarts of the agent on the same machine.
_INSTANCE_ID = str(uuid.uuid4())
# Machine ids the machine metrics go out under, the agent's own included: a bound on the
# copies, whatever the producers declare.
MAX_MACHINE_IDS = 16
# Read-only image mounts (snaps) are always 100% full; they only add noise.
_SKIP_FSTYPES = frozenset({"squashfs"})

_cpu_lock = threading.Lock()
_cpu_prev: tuple[float, float] | None = None
_cpu_prev_per: list[tuple[float, float]] = []

_nvml_lock = threading.Lock()
_nvml_state: str = "unknown"  # "unknown" (not tried), "ok", "unavailable"


def _gauge(
    now_ns: int, name: str, unit: str, description: str, value: float, attrs: Attributes
) -> Record:
    return Record(
        kind=METRIC,
        time_unix_nano=now_ns,
        instrument=GAUGE,
        name=name,
        unit=unit,
        description=description,
        value=value,
        attributes=attrs,
    )


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) seconds of a psutil cpu_times tuple, psutil's own accounting."""
    total = float(sum(times))
    # On Linux guest time is already counted in user time.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _utilization(now: tuple[float, float], prev: tuple[float, float] | None) -> float:
    busy, total = now
    if prev is not None:
        busy -= prev[0]
        total -= prev[1]
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, busy / total))


def _cpu(now_ns: int) -> list[Record]:
    """Utilization since the previous call (since boot on the first call)."""
    global _cpu_prev, _cpu_prev_per
    overall = _busy_total(psutil.cpu_times())
    per = [_busy_total(t) for t in psutil.cpu_times(percpu=True)]
    with _cpu_lock:
        prev, prev_per = _cpu_prev, _cpu_prev_per
        _cpu_prev, _cpu_prev_per = overall, per
    if len(prev_per) != len(per):  # first call, or CPUs came and went
        prev_per = []
    desc = "Fraction of CPU time spent busy (not idle or waiting for I/O)"
    out = [_gauge(now_ns, "system.cpu.utilization", "1", desc, _utilization(overall, prev), {})]
    for i, times in enumerate(per):
        value = _utilization(times, prev_per[i] if prev_per else None)
        out.append(
            _gauge(now_ns, "system.cpu.utilization", "1", desc, value, {"cpu.logical_number": i})
        )
    return out


def _memory(now_ns: int) -> list[Record]:
    vm = psutil.virtual_memory()
    total = int(vm.total)
    # "used" is what cannot be reclaimed (total - available), as psutil reports it.
    states = {"used": int(vm.total - vm.available), "free": int(vm.free)}
    for state in ("buffers", "cached"):
        value = getattr(vm, state, None)
        if value is not None:
            states[state] = int(value)
    out = [
        _gauge(now_ns, "system.memory.limit", "By", "Total memory available", total, {}),
    ]
    for state, value in states.items():
        attrs: Attributes = {"system.memory.state": state}
        out.append(_gauge(now_ns, "system.memory.usage", "By", "Memory in use", value, attrs))
        out.append(
            _gauge(
                now_ns,
                "system.memory.utilization",
                "1",
                "Fraction of memory in use",
                value / total if total else 0.0,
                dict(attrs),
            )
        )
    return out


def _filesystems(now_ns: int) -> list[Record]:
    out: list[Record] = []
    seen: set[str] = set()
    # all=False: only filesystems backed by a device (no proc, sysfs, tmpfs, network).
    for part in psutil.disk_partitions(all=False):
        mount = part.mountpoint
        if mount in seen or part.fstype in _SKIP_FSTYPES or not os.path.isdir(mount):
            continue
        seen.add(mount)
        try:
            usage = psutil.disk_usage(mount)
        except OSError as exc:
            log.debug("filesystem metrics: skipping %s: %s", mount, exc)
            continue
        total = int(usage.total)
        used, free = int(usage.used), int(usage.free)
        base: Attributes = {
            "system.device": part.device,
            "system.filesystem.mountpoint": mount,
            "system.filesystem.type": part.fstype,
            "system.filesystem.mode": "ro" if "ro" in part.opts.split(",") else "rw",
        }
        # Blocks reserved for the superuser are neither used nor free to others.
        states = {"used": used, "free": free, "reserved": max(0, total - used - free)}
        for state, value in states.items():
            attrs = {**base, "system.filesystem.state": state}
            out.append(
                _gauge(now_ns, "system.filesystem.usage", "By", "Filesystem space", value, attrs)
            )
        out.append(
            _gauge(now_ns, "system.filesystem.limit", "By", "Filesystem size", total, dict(base))
        )
        out.append(
            _gauge(
                now_ns,
                "system.filesystem.utilization",
                "1",
                "Fraction of filesystem space used",
                used / total if total else 0.0,
                dict(base),
            )
        )
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None (remembered) when NVML cannot be used."""
    global _nvml_state
    with _nvml_lock:
        if _nvml_state == "unavailable":
            return None
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            log.debug("GPU metrics off: pynvml (nvidia-ml-py) is not installed")
            _nvml_state = "unavailable"
            return None
        if _nvml_state == "unknown":
            try:
                pynvml.nvmlInit()
            except Exception as exc:  # NVMLError, or OSError from a broken driver install
                log.debug("GPU metrics off: NVML did not initialise: %s", exc)
                _nvml_state = "unavailable"
                return None
            _nvml_state = "ok"
        return pynvml


def _gpus(now_ns: int) -> list[Record]:
    nvml = _nvml()
    if nvml is None:
        return []
    out: list[Record] = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        log.debug("GPU metrics skipped: NVML device count failed: %s", exc)
        return []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            attrs: Attributes = {
                "hw.id": _text(nvml.nvmlDeviceGetUUID(handle)),
                "hw.name": _text(nvml.nvmlDeviceGetName(handle)),
                "hw.vendor": "nvidia",
                "hw.type": "gpu",
            }
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            # MIG slices and some boards refuse these queries; skip that device only.
            log.debug("GPU metrics skipped for device %d: %s", index, exc)
            continue
        out.append(
            _gauge(
                now_ns,
                "hw.gpu.utilization",
                "1",
                "Fraction of time the GPU was executing kernels",
                min(1.0, max(0.0, util.gpu / 100.0)),
                attrs,
            )
        )
        out.append(
            _gauge(now_ns, "hw.gpu.memory.usage", "By", "GPU memory used", int(mem.used), {**attrs})
        )
        out.append(
            _gauge(
                now_ns, "hw.gpu.memory.limit", "By", "GPU memory size", int(mem.total), {**attrs}
            )
        )
    return out


def collect_machine_metrics(now_ns: int | None = None) -> list[records.Record]:
    """One reading of this machine's CPU, memory, filesystems and (NVIDIA) GPUs.

    CPU utilization covers the time since the previous call in this process (since boot
    on the first call). Without NVML or a GPU there are simply no ``hw.gpu.*`` records.
    """
    if now_ns is None:
        now_ns = time.time_ns()
    elif not isinstance(now_ns, int) or isinstance(now_ns, bool):
        raise TypeError(f"now_ns must be an int, not {type(now_ns).__name__}")
    elif now_ns < 0:
        raise ValueError("now_ns must not be negative")
    return _cpu(now_ns) + _memory(now_ns) + _filesystems(now_ns) + _gpus(now_ns)


def machine_ids(own: str, declared: Iterable[object]) -> list[str]:
    """The machine ids this machine's metrics go out under: ``own`` (the agent's), then
    each other non-empty id in ``declared`` (the ``emp.machine_id`` of the producers'
    resources), first seen first, ``MAX_MACHINE_IDS`` in all. Every producer of a ring
    runs on the agent's machine (the ring is shared memory), so each id a producer
    configured names this machine: ``fastbuf metrics --machine ID`` finds the readings
    under any of them."""
    out = [own]
    for value in declared:
        if len(out) >= MAX_MACHINE_IDS:
            break
        if isinstance(value, str) and value and value not in out:
            out.append(value)
    return out


def machine_resource(machine_id: str) -> records.Resource:
    """The resource of the agent's own telemetry on this machine."""
    if not isinstance(machine_id, str):
        raise TypeError(f"machine_id must be a str, not {type(machine_id).__name__}")
    if not machine_id:
        raise ValueError("machine_id must not be empty")
    return Resource(
        attributes={
            "service.name": AGENT_SERVICE_NAME,
            "service.instance.id": _INSTANCE_ID,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
            "emp.machine_id": machine_id,
        },
        scope_name="emp_fastbuf",
        scope_version=__version__,
    )
