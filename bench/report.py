"""Writing and reading benchmark reports: ``latest.json``, ``latest.md``, ``latest_cdf.png``
and ``latest_sustained.png``.

``latest.json`` holds ``machine``, ``results`` (one summary row per scenario), ``budgets``,
``cost_per_million_usd`` (the total of ``cost``), ``cost`` (its parts and the prices assumed)
and, when they were measured, ``survival`` (spans that reach their destination when the
worker is SIGKILLed) and ``sustained`` (``bench.sustained``: records offered for seconds,
what arrived); the Markdown adds the tails, GC activity, the timer floor and the ratios of
our scenarios against their peers.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Result
from bench.scenarios import BudgetOutcome, Scenario

LATENCY_METRICS = ("p50_ns", "p99_ns")
_ROW_KEYS = ("name", "p50_ns", "p99_ns", "p999_ns", "ops_per_s", "peer")


def cpu_model() -> str:
    """The CPU's marketing name, or the machine type when the OS does not say."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                        return value.strip()
        except OSError:
            pass
    elif sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "platform": platform.platform(),
        "gc": {
            "enabled": gc.isenabled(),
            "thresholds": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
        },
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def build_document(
    machine: Mapping[str, Any],
    results: Sequence[Result],
    budgets: Sequence[BudgetOutcome],
    cost_per_million_usd: float | None,
    survival: Mapping[str, Any] | None = None,
    *,
    cost: Mapping[str, Any] | None = None,
    sustained: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``latest.json`` document (``survival`` and ``sustained`` only when they were
    measured; ``cost`` is None when no cost part ran)."""
    document: dict[str, Any] = {
        "machine": dict(machine),
        "results": [r.row() for r in results],
        "budgets": [b.to_json() for b in budgets],
        "cost_per_million_usd": cost_per_million_usd,
        "cost": None if cost is None else dict(cost),
    }
    if survival is not None:
        document["survival"] = dict(survival)
    if sustained is not None:
        document["sustained"] = _without_tracebacks(sustained)
    return document


def _without_tracebacks(sustained: Mapping[str, Any]) -> dict[str, Any]:
    """The sustained document with each failed run's traceback cut to its last lines."""
    out = dict(sustained)
    runs = []
    for run in sustained.get("runs", []):
        run = dict(run)
        if "traceback" in run:
            run["traceback"] = str(run["traceback"]).strip().splitlines()[-3:]
        runs.append(run)
    out["runs"] = runs
    return out


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write the document atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class ReportError(ValueError):
    """A results file that is not a ``latest.json`` document."""


def load_document(path: Path) -> dict[str, Any]:
    """Read and check a ``latest.json`` written by this module."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read results: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ReportError(f"{path}: not a results document (no 'results' list)")
    for row in data["results"]:
        if not isinstance(row, dict) or any(k not in row for k in _ROW_KEYS):
            raise ReportError(f"{path}: result row {row!r} lacks one of {', '.join(_ROW_KEYS)}")
        if not isinstance(row["name"], str):
            raise ReportError(f"{path}: result name {row['name']!r} is not a string")
        for key in LATENCY_METRICS:
            if isinstance(row[key], bool) or not isinstance(row[key], int | float):
                raise ReportError(f"{path}: {row['name']}: {key} is not a number")
    return data


@dataclass(frozen=True)
class Regression:
    """A latency that grew by more than the threshold since the previous run."""

    name: str
    metric: str
    previous: float
    current: float

    @property
    def change(self) -> float:
        """Relative change, +0.25 for 25% slower."""
        return self.current / self.previous - 1.0 if self.previous else math.inf

    def __str__(self) -> str:
        return (
            f"{self.name} {self.metric}: {fmt_ns(self.previous)} -> {fmt_ns(self.current)} "
            f"({self.change:+.0%})"
        )


def compare(
    previous: Mapping[str, Any], current: Mapping[str, Any], threshold: float = 0.10
) -> list[Regression]:
    """P50/P99 regressions larger than ``threshold`` for scenarios present in both documents."""
    before = {row["name"]: row for row in previous["results"]}
    found = []
    for row in current["results"]:
        old = before.get(row["name"])
        if old is None:
            continue
        for metric in LATENCY_METRICS:
            was, now = float(old[metric]), float(row[metric])
            if was > 0 and now > was * (1.0 + threshold):
                found.append(Regression(row["name"], metric, was, now))
    return found


def fmt_ns(ns: float) -> str:
    """A latency for humans: ns, us or ms with three significant digits."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.3g} us"
    return f"{ns / 1_000_000:.3g} ms"


def fmt_rate(per_s: float) -> str:
    """A throughput for humans."""
    if per_s >= 1e6:
        return f"{per_s / 1e6:.3g} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.3g} k/s"
    return f"{per_s:.3g} /s"


def _ratio(peer_value: float, ours: float) -> str:
    return f"{peer_value / ours:.1f}x" if ours > 0 else "n/a"


def render_markdown(
    document: Mapping[str, Any],
    results: Sequence[Result],
    scenarios: Mapping[str, Scenario],
    notes: Sequence[str] = (),
    regressions: Sequence[Regression] = (),
) -> str:
    """The human-readable report."""
    m = document["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['python']}, "
        f"{m['platform']}, GC {'on' if m['gc']['enabled'] else 'off'}, {m['time']}.",
        "",
    ]
    floor = next((r for r in results if r.name == "timer.floor"), None)
    if floor is not None:
        lines += [
            f"Every latency includes the timer: an empty call measures {fmt_ns(floor.p50_ns)} "
            f"at P50 and {fmt_ns(floor.p99_ns)} at P99 here.",
            "",
        ]
    lines += [
        "| scenario | peer | calls | P50 | P99 | P99.9 | max | throughput | GC runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        unit = f" ({r.items_per_call} items/call)" if r.items_per_call > 1 else ""
        procs = f" x{r.processes} procs" if r.processes > 1 else ""
        lines.append(
            f"| {r.name}{procs} | {r.peer or 'ours'} | {r.calls:,} | {fmt_ns(r.p50_ns)} | "
            f"{fmt_ns(r.p99_ns)} | {fmt_ns(r.p999_ns)} | {fmt_ns(r.max_ns)} | "
            f"{fmt_rate(r.ops_per_s)}{unit} | {sum(r.gc.collections)} |"
        )
    by_name = {r.name: r for r in results}
    pairs = [
        (r, by_name[v])
        for r in results
        if r.peer is None and r.name in scenarios
        for v in scenarios[r.name].versus
        if v in by_name
    ]
    lines += ["", "## Ratios vs peers", ""]
    if pairs:
        lines += [
            "Peer latency over ours (above 1x: ours is faster); throughput: ours over the peer.",
            "",
            "| scenario | peer scenario | P50 | P99 | P99.9 | throughput |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for ours, peer in pairs:
            lines.append(
                f"| {ours.name} | {peer.name} | {_ratio(peer.p50_ns, ours.p50_ns)} | "
                f"{_ratio(peer.p99_ns, ours.p99_ns)} | {_ratio(peer.p999_ns, ours.p999_ns)} | "
                f"{_ratio(ours.ops_per_s, peer.ops_per_s)} |"
            )
    else:
        lines.append("No scenario of ours with a `versus` peer ran.")
    lines += ["", "## Budgets", ""]
    if document["budgets"]:
        lines += ["| budget | limit | value | ok |", "|---|---:|---:|---|"]
        for b in document["budgets"]:
            verdict = "yes" if b["ok"] else "**MISSED**"
            lines.append(f"| {b['name']} | {b['limit']:g} | {b['value']} | {verdict} |")
    else:
        lines.append("No budget was checked in this run.")
    cost_model = document.get("cost")
    if cost_model:
        lines += ["", *_cost_lines(cost_model)]
    elif document["cost_per_million_usd"] is not None:
        cost = document["cost_per_million_usd"]
        lines += ["", f"CPU cost per million items of the cost scenario: {cost:.4g} USD."]
    survival = document.get("survival")
    if survival:
        lines += ["", *_survival_lines(survival)]
    sustained = document.get("sustained")
    if sustained:
        lines += ["", *sustained_lines(sustained)]
    if regressions:
        lines += ["", "## Regressions (> threshold vs the previous run)", ""]
        lines += [f"- {reg}" for reg in regressions]
    all_notes = [*notes, *(f"{r.name}: {n}" for r in results for n in r.notes)]
    if all_notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in all_notes]
    return "\n".join(lines) + "\n"


def _cost_lines(cost: Mapping[str, Any]) -> list[str]:
    """The cost per million events, part by part, with the prices next to the figure."""
    per = cost["per_million_events"]
    assume = cost["assumptions"]
    lines = [
        "## Cost per million events",
        "",
        f"Prices assumed: {assume['usd_per_core_hour']:g} USD per core-hour "
        "(`--usd-per-core-hour`), "
        f"{assume['usd_per_egress_gb']:g} USD per GB of egress, 1 GB = 10^9 bytes "
        "(`--usd-per-egress-gb`).",
        "",
        "| part | measured from | per million events | USD |",
        "|---|---|---:|---:|",
    ]
    if "worker_cpu_s" in per:
        lines.append(
            f"| worker CPU | {assume['worker_scenario']} (mean minus timer) | "
            f"{per['worker_cpu_s']:.4g} CPU-s | {per['worker_cpu_usd']:.4g} |"
        )
    if "agent_cpu_s" in per:
        lines.append(
            f"| agent CPU | {assume['agent_scenario']} (process CPU time, "
            f"{assume.get('agent_compression')}) | {per['agent_cpu_s']:.4g} CPU-s | "
            f"{per['agent_cpu_usd']:.4g} |"
        )
        lines.append(
            f"| egress | {assume['agent_scenario']} (compressed request bodies) | "
            f"{per['wire_bytes'] / 1e6:.4g} MB | {per['egress_usd']:.4g} |"
        )
    lines.append(f"| **total** | | {per['cpu_s']:.4g} CPU-s | **{per['total_usd']:.4g}** |")
    if "agent_cpu_s_sustained" in per:
        lines.append(
            f"| agent CPU, whole process (not in the total) | {assume['agent_sustained_run']} "
            f"(utime + stime per delivered record) | {per['agent_cpu_s_sustained']:.4g} CPU-s | "
            f"{per['agent_cpu_usd_sustained']:.4g} |"
        )
    left_out = assume.get("left_out") or []
    if left_out:
        lines += ["", "Not included: " + "; ".join(str(x) for x in left_out) + "."]
    for part in cost.get("missing") or []:
        lines += ["", f"Not measured in this run: {part}."]
    return lines


def _survival_lines(survival: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Survival of a SIGKILL",
        "",
        f"A worker ends {survival.get('spans', '?'):,} spans and is SIGKILLed "
        f"{1000 * float(survival.get('kill_after_s', 0.1)):.0f} ms after the last one; "
        "spans that reached their destination:",
        "",
    ]
    if "error" in survival:
        return [*lines, f"The survival run failed: `{str(survival['error']).strip()[-300:]}`"]
    lines += ["| kind | ended | arrived | fraction | method |", "|---|---:|---:|---:|---|"]
    for kind in ("fastbuf", "otel"):
        row = survival.get(kind)
        if not isinstance(row, Mapping):
            continue
        if "skipped" in row:
            lines.append(f"| {kind} | {row.get('ended', '?')} | | | skipped: {row['skipped']} |")
            continue
        fraction = row.get("fraction")
        shown = f"{fraction:.1%}" if isinstance(fraction, int | float) else "n/a"
        lines.append(
            f"| {kind} | {row['ended']:,} | {row['received']:,} | {shown} | {row['method']} |"
        )
    return lines


def sustained_lines(sustained: Mapping[str, Any]) -> list[str]:
    """The sustained-load section (``bench.sustained.markdown_lines``)."""
    if "error" in sustained and not sustained.get("runs"):
        detail = str(sustained["error"]).strip()[-300:]
        return ["## Sustained load", "", f"The sustained sweep failed: `{detail}`"]
    from bench.sustained import markdown_lines

    return markdown_lines(sustained)


def write_sustained_png(path: Path, sustained: Mapping[str, Any]) -> None:
    """Delivered fraction against offered rate, fastbuf and the SDK on one chart."""
    from bench.sustained import write_chart

    write_chart(path, sustained)


def write_cdf_png(path: Path, results: Sequence[Result]) -> None:
    """Latency CDF (left) and tail (right, 1 - quantile on a log axis), one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (body, tail) = plt.subplots(1, 2, figsize=(13, 5.5))
    for r in results:
        if not r.cdf:
            continue
        xs = [max(ns, 1) for _, ns in r.cdf]
        qs = [q for q, _ in r.cdf]
        (line,) = body.plot(xs, qs, label=r.name, linewidth=1.2)
        # 1 - q reaches 0 at the max; plot that point at one call's share instead.
        tail.plot(
            xs, [max(1.0 - q, 1.0 / r.calls) for q in qs], color=line.get_color(), linewidth=1.2
        )
    for ax in (body, tail):
        ax.set_xscale("log")
        ax.set_xlabel("latency per call (ns, log)")
        ax.grid(True, which="both", alpha=0.3)
    body.set_ylabel("fraction of calls at or below")
    body.set_title("Latency CDF")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of calls above (log)")
    tail.set_title("Tail")
    body.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
