"""Run the benchmark scenarios and write the reports.

    python -m bench.run [--quick] [--only PATTERN] [--calls N] [--out DIR]
                        [--compare PREVIOUS.json [--current LATEST.json]] [--fail-on-regression]

Scenarios come from ``bench.peers`` and, when present, ``bench.ours``; both register into
``bench.scenarios``. A run of every scenario (no ``--only``) also counts the spans that
survive a SIGKILL of the worker (``bench.survival``, when present). The sustained-load
sweep (``bench.sustained``, when present) runs with every scenario and with an ``--only``
pattern that matches ``sustained``; ``--quick`` shortens each of its loads. So does the
fixed-duration ``receiver.ingest`` run (``bench.receiver_ingest``) with a pattern that
matches its name. Exit status: 0
when every scenario ran (or was skipped with a reason) and every budget held; 1 when a
scenario, the survival run or a sustained run failed or a budget was missed, or, with
``--fail-on-regression``, when a P50/P99 regressed by more than the threshold; 2 for bad
arguments or unreadable results files.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gc
import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.harness import Result, Skip, measure, measure_processes, timer_floor
from bench.scenarios import BudgetOutcome, Scenario

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Roughly an on-demand x86 cloud vCPU hour, and internet egress from a cloud region per GB
# (10^9 bytes); only used for cost_per_million_usd and the cost object.
DEFAULT_USD_PER_CORE_HOUR = 0.05
DEFAULT_USD_PER_EGRESS_GB = 0.09
# The agent's CPU per record and the bytes on the wire come from this scenario of
# bench.pipeline.export (gzip: the agent's default compression).
AGENT_COST_SCENARIO = "agent.export"
SURVIVAL_SPANS = 10_000
SUSTAINED = "sustained"  # the name --only matches to select the sustained-load sweep
RECEIVER_INGEST = "receiver.ingest"  # the fixed-duration run of bench.receiver_ingest


def load_scenarios() -> None:
    """Import the modules that register scenarios (``bench.ours`` only if it exists) and
    the sustained-load budgets (``bench.sustained``, if it exists)."""
    importlib.import_module("bench.peers")
    if importlib.util.find_spec("bench.ours") is not None:
        importlib.import_module("bench.ours")
    if _have_sustained():
        importlib.import_module("bench.sustained").register_budgets()
    importlib.import_module("bench.receiver_ingest").register_budgets()


def _have_sustained() -> bool:
    return importlib.util.find_spec("bench.sustained") is not None


def matches(name: str, pattern: str | None) -> bool:
    """Whether ``name`` matches ``pattern``: a glob if it has ``*?[``, else a substring."""
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def select(all_scenarios: Sequence[Scenario], pattern: str | None) -> list[Scenario]:
    """Scenarios whose name matches ``pattern`` (see ``matches``)."""
    return [s for s in all_scenarios if matches(s.name, pattern)]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_scenario(s: Scenario, calls: int) -> Result:
    """Time one scenario; raises ``Skip`` when it cannot run here."""
    warmup = min(s.warmup, calls)
    if s.processes > 1:
        args: tuple[object, ...] = ()
        shared_teardown = None
        if s.shared is not None:
            args, shared_teardown = s.shared()
        said: object = None
        try:
            result = measure_processes(
                s.name,
                s.factory,
                processes=s.processes,
                calls=calls,
                warmup=warmup,
                peer=s.peer,
                args=args,
                items_per_call=s.items_per_call,
            )
        finally:
            if shared_teardown is not None:
                said = shared_teardown()
        # As for a single process: a non-empty string from the teardown becomes a note.
        if isinstance(said, str) and said:
            result = dataclasses.replace(result, notes=(*result.notes, said))
        return result
    fn, teardown = s.factory()
    return measure(
        s.name,
        fn,
        calls=calls,
        warmup=warmup,
        peer=s.peer,
        teardown=teardown,
        items_per_call=s.items_per_call,
    )


def cost_per_million(results: Sequence[Result], usd_per_core_hour: float) -> float | None:
    """CPU cost of a million items of the cost scenario, timer excluded; None if it did not run."""
    ns = _worker_ns_per_item(results)
    if ns is None:
        return None
    return float(f"{1e6 * ns * 1e-9 / 3600.0 * usd_per_core_hour:.4g}")


def _worker_ns_per_item(results: Sequence[Result]) -> float | None:
    name = scenarios.cost_scenario()
    r = next((r for r in results if r.name == name), None)
    if r is None:
        return None
    return max(0.0, r.mean_ns - (r.floor_mean_ns or 0.0)) / r.items_per_call


def _agent_measurement(results: Sequence[Result]) -> dict[str, Any] | None:
    """What ``bench.pipeline.export`` measured around the agent cost scenario's calls."""
    if not any(r.name == AGENT_COST_SCENARIO for r in results):
        return None
    module = sys.modules.get("bench.pipeline.export")
    if module is None:
        return None
    measured: dict[str, Any] | None = module.pipeline_measurements().get(AGENT_COST_SCENARIO)
    if not measured or not measured.get("records"):
        return None
    return measured


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def cost_model(
    results: Sequence[Result],
    usd_per_core_hour: float,
    usd_per_egress_gb: float,
    agent: dict[str, Any] | None = None,
    sustained: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The cost of a million events end to end, in parts, with the prices assumed.

    - worker CPU: the cost scenario's mean latency minus the timer's (``fastbuf.emit``);
    - agent CPU: process CPU time inside the ``agent.export`` calls (ring read, spool write
      and read, OTLP transcoding, compression, HTTP), per record;
    - egress: the bytes ``agent.export`` put on the wire (compressed bodies), per record.

    ``agent`` is ``bench.pipeline.export``'s measurement (looked up when None). Parts that did
    not run are listed in ``missing``; ``total_usd`` sums the others. None when no part ran.

    ``sustained`` (the sweep of ``bench.sustained``) adds ``agent_cpu_s_sustained``: the
    whole agent process's CPU per million records delivered in a sustained run (idle
    polling, threads, own metrics included), beside ``agent_cpu_s`` and not in the total.
    """
    worker_ns = _worker_ns_per_item(results)
    if agent is None:
        agent = _agent_measurement(results)
    per_million: dict[str, float] = {}
    missing: list[str] = []
    usd_per_core_s = usd_per_core_hour / 3600.0
    if worker_ns is not None:
        per_million["worker_cpu_s"] = _sig(worker_ns * 1e-3)  # ns per event -> s per 10^6
        per_million["worker_cpu_usd"] = _sig(worker_ns * 1e-3 * usd_per_core_s)
    else:
        missing.append(f"worker CPU ({scenarios.cost_scenario()} did not run)")
    if agent is not None:
        records = float(agent["records"])
        agent_s = float(agent["cpu_s"]) / records * 1e6
        wire = float(agent["wire_bytes"]) / records * 1e6
        per_million["agent_cpu_s"] = _sig(agent_s)
        per_million["agent_cpu_usd"] = _sig(agent_s * usd_per_core_s)
        per_million["wire_bytes"] = _sig(wire)
        per_million["egress_usd"] = _sig(wire / 1e9 * usd_per_egress_gb)
    else:
        missing.append(f"agent CPU and egress ({AGENT_COST_SCENARIO} did not run)")
    if not per_million:
        return None
    cpu_s = per_million.get("worker_cpu_s", 0.0) + per_million.get("agent_cpu_s", 0.0)
    per_million["cpu_s"] = _sig(cpu_s)
    per_million["total_usd"] = _sig(
        sum(per_million.get(k, 0.0) for k in ("worker_cpu_usd", "agent_cpu_usd", "egress_usd"))
    )
    whole = _sustained_agent_cpu(sustained)
    if whole is not None:
        per_million["agent_cpu_s_sustained"] = _sig(whole["cpu_s_per_million"])
        per_million["agent_cpu_usd_sustained"] = _sig(whole["cpu_s_per_million"] * usd_per_core_s)
    return {
        "per_million_events": per_million,
        "assumptions": {
            "usd_per_core_hour": usd_per_core_hour,
            "usd_per_egress_gb": usd_per_egress_gb,
            "bytes_per_gb": 1_000_000_000,
            "worker_scenario": scenarios.cost_scenario(),
            "agent_scenario": AGENT_COST_SCENARIO,
            "agent_compression": None if agent is None else agent.get("compression"),
            "agent_sustained_run": None if whole is None else whole["run"],
            "left_out": [
                "the agent's idle polling, own metrics, status file and retries",
                "the receiving backend's work",
            ],
        },
        "missing": missing,
    }


def _sustained_agent_cpu(sustained: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The agent's CPU per million records of the sustained OTLP run at the highest
    zero-loss rate (the lowest rate when every rate lost records)."""
    if not sustained:
        return None
    runs = sorted(
        (
            r
            for r in sustained.get("runs", [])
            if r["system"] == "fastbuf.otlp"
            and r["producers"] == 1
            and "error" not in r
            and (r.get("agent") or {}).get("cpu_s_per_million") is not None
        ),
        key=lambda r: r["target_per_s"],
    )
    if not runs:
        return None
    best = runs[0]
    for r in runs:
        if r["lost"] != 0:
            break
        best = r
    return {
        "cpu_s_per_million": float(best["agent"]["cpu_s_per_million"]),
        "run": f"sustained.fastbuf.otlp[{best['load']}]",
    }


def run_sustained(quick: bool) -> dict[str, Any]:
    """The sweep of ``bench.sustained``; a failure is kept as ``{"error": ...}``."""
    module = importlib.import_module("bench.sustained")
    duration = module.QUICK_DURATION_S if quick else module.DURATION_S
    _log(
        f"sustained: {len(module.loads())} loads x {len(module.SYSTEMS)} systems, "
        f"{duration:g} s each ..."
    )
    try:
        outcome: dict[str, Any] = module.run_all(quick=quick, log=_log)
    except Exception:
        _log(f"    FAILED:\n{traceback.format_exc()}")
        return {"error": traceback.format_exc(limit=3), "runs": [], "errors": ["sweep"]}
    return outcome


def run_survival(spans: int = SURVIVAL_SPANS) -> dict[str, object] | None:
    """The SIGKILL survival counts from ``bench.survival`` (None if that module is absent).

    A failure is kept as ``{"error": ...}`` so the report says what went wrong.
    """
    if importlib.util.find_spec("bench.survival") is None:
        return None
    _log(f"survival: {spans:,} spans per kind, worker SIGKILLed after its last span ...")
    try:
        module = importlib.import_module("bench.survival")
        outcome: dict[str, object] = module.run_all(spans)
    except Exception:
        _log(f"    FAILED:\n{traceback.format_exc()}")
        return {"spans": spans, "error": traceback.format_exc(limit=3)}
    for kind in ("fastbuf", "otel"):
        got = outcome.get(kind)
        if isinstance(got, dict):
            _log(f"    {kind}: {got.get('received')} of {got.get('ended')} spans arrived")
    return outcome


def evaluate_budgets(
    results: Sequence[Result], extra_rows: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[BudgetOutcome], list[str]]:
    """Check every registered budget; also return the names of those that could not be checked.

    ``extra_rows``: rows that are not timed scenarios (``bench.sustained.budget_rows``)."""
    rows: dict[str, Mapping[str, Any]] = {
        r.name: {**r.row(), "max_ns": r.max_ns, "mean_ns": r.mean_ns} for r in results
    }
    rows.update(extra_rows or {})
    outcomes, unchecked = [], []
    for budget in scenarios.budgets():
        outcome = budget.evaluate(rows)
        if outcome is None:
            unchecked.append(budget.name)
        else:
            outcomes.append(outcome)
    return outcomes, unchecked


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few calls per scenario (CI smoke run)")
    p.add_argument("--only", metavar="PATTERN", help="run matching scenarios (glob or substring)")
    p.add_argument("--calls", type=int, metavar="N", help="timed calls per scenario (overrides)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--compare", type=Path, metavar="PREVIOUS", help="earlier latest.json")
    p.add_argument(
        "--current",
        type=Path,
        metavar="LATEST",
        help="with --compare: compare this file instead of running the scenarios",
    )
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold (0.10)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 on a regression")
    p.add_argument(
        "--usd-per-core-hour",
        type=float,
        default=float(
            os.environ.get("EMP_FASTBUF_BENCH_USD_PER_CORE_HOUR", DEFAULT_USD_PER_CORE_HOUR)
        ),
        help=(
            "price of one core-hour for the cost per million events "
            f"(default {DEFAULT_USD_PER_CORE_HOUR}, or EMP_FASTBUF_BENCH_USD_PER_CORE_HOUR)"
        ),
    )
    p.add_argument(
        "--usd-per-egress-gb",
        type=float,
        default=float(
            os.environ.get("EMP_FASTBUF_BENCH_USD_PER_EGRESS_GB", DEFAULT_USD_PER_EGRESS_GB)
        ),
        help=(
            "price of one GB (10^9 bytes) sent to the OTLP endpoint "
            f"(default {DEFAULT_USD_PER_EGRESS_GB}, or EMP_FASTBUF_BENCH_USD_PER_EGRESS_GB)"
        ),
    )
    return p


def _print_regressions(regressions: Sequence[report.Regression], threshold: float) -> None:
    if regressions:
        print(f"WARNING: {len(regressions)} regression(s) above {threshold:.0%}:")
        for reg in regressions:
            print(f"  - {reg}")
    else:
        print(f"No P50/P99 regression above {threshold:.0%}.")


def _compare_files(previous: Path, current: Path, threshold: float, fail: bool) -> int:
    try:
        old = report.load_document(previous)
        new = report.load_document(current)
    except report.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    regressions = report.compare(old, new, threshold)
    _print_regressions(regressions, threshold)
    return 1 if regressions and fail else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.calls is not None and args.calls < 1:
        print("error: --calls must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.threshold < 10:
        print("error: --threshold must be a fraction such as 0.10", file=sys.stderr)
        return 2
    for flag, price in (
        ("--usd-per-core-hour", args.usd_per_core_hour),
        ("--usd-per-egress-gb", args.usd_per_egress_gb),
    ):
        if not 0 <= price < float("inf"):  # also refuses NaN
            print(f"error: {flag} must be a price >= 0", file=sys.stderr)
            return 2
    if args.current is not None:
        if args.compare is None:
            print("error: --current needs --compare", file=sys.stderr)
            return 2
        return _compare_files(args.compare, args.current, args.threshold, args.fail_on_regression)
    previous = None
    if args.compare is not None:
        try:
            previous = report.load_document(args.compare)
        except report.ReportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    load_scenarios()
    chosen = select(scenarios.scenarios(), args.only)
    want_sustained = _have_sustained() and matches(SUSTAINED, args.only)
    want_receiver = matches(RECEIVER_INGEST, args.only)
    if args.list:
        for s in scenarios.scenarios():
            print(f"{s.name:28} {s.peer or 'ours':28} {s.description}")
        if _have_sustained():
            print(
                f"{SUSTAINED:28} {'ours + opentelemetry-sdk':28} "
                "records/s offered for seconds through the agent and the SDK; what arrives"
            )
        print(
            f"{RECEIVER_INGEST:28} {'ours':28} "
            "OTLP/HTTP log requests through the agent's receiver to a loopback destination"
        )
        return 0
    if not chosen and not want_sustained and not want_receiver:
        print(f"error: no scenario matches {args.only!r}", file=sys.stderr)
        return 2

    started = time.monotonic()
    floor = timer_floor()
    _log(f"timer floor: P50 {report.fmt_ns(floor.p50_ns)}, P99 {report.fmt_ns(floor.p99_ns)}")
    results: list[Result] = [floor]
    notes: list[str] = []
    failed: list[str] = []
    for i, s in enumerate(chosen, 1):
        calls = args.calls or (s.quick_calls if args.quick else s.calls)
        procs = f" x {s.processes} processes" if s.processes > 1 else ""
        _log(f"[{i}/{len(chosen)}] {s.name}: {calls:,} calls{procs} ...")
        gc.collect()
        t0 = time.monotonic()
        try:
            r = run_scenario(s, calls)
        except Skip as exc:
            notes.append(f"{s.name} skipped: {exc}")
            _log(f"    skipped: {exc}")
            continue
        except Exception:
            failed.append(s.name)
            _log(f"    FAILED:\n{traceback.format_exc()}")
            continue
        results.append(r)
        _log(
            f"    P50 {report.fmt_ns(r.p50_ns)}  P99 {report.fmt_ns(r.p99_ns)}  "
            f"P99.9 {report.fmt_ns(r.p999_ns)}  {report.fmt_rate(r.ops_per_s)}  "
            f"({time.monotonic() - t0:.1f} s)"
        )

    sustained = None
    if want_sustained:
        sustained = run_sustained(args.quick)
        if sustained.get("errors"):
            failed.append(SUSTAINED)

    receiver_row = None
    if want_receiver:
        module = importlib.import_module("bench.receiver_ingest")
        receiver_row = module.run_logged(args.quick, _log)
        if "error" in receiver_row:
            failed.append(RECEIVER_INGEST)

    survival = None
    if args.only is None and not args.list:
        survival = run_survival()
        if survival is None:
            notes.append("survival not measured: bench.survival is missing")
        elif "error" in survival:
            failed.append("survival")

    extra_rows = None
    if sustained is not None:
        extra_rows = importlib.import_module("bench.sustained").budget_rows(sustained)
    if receiver_row is not None:
        extra_rows = {
            **(extra_rows or {}),
            **importlib.import_module("bench.receiver_ingest").budget_rows(receiver_row),
        }
    outcomes, unchecked = evaluate_budgets(results, extra_rows)
    notes += [f"budget not checked (its scenario did not run): {n}" for n in unchecked]
    notes += [f"scenario failed: {n}" for n in failed]
    cost = cost_model(results, args.usd_per_core_hour, args.usd_per_egress_gb, sustained=sustained)
    document = report.build_document(
        report.machine_info(),
        results,
        outcomes,
        None if cost is None else cost["per_million_events"]["total_usd"],
        survival,
        cost=cost,
        sustained=sustained,
    )
    if receiver_row is not None:
        document["receiver_ingest"] = receiver_row
    regressions = report.compare(previous, document, args.threshold) if previous else []
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "latest.json", document)
    by_name = {s.name: s for s in scenarios.scenarios()}
    markdown = report.render_markdown(document, results, by_name, notes, regressions)
    if receiver_row is not None:
        lines = importlib.import_module("bench.receiver_ingest").markdown_lines(receiver_row)
        markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(lines)
    (out / "latest.md").write_text(markdown, encoding="utf-8")
    report.write_cdf_png(out / "latest_cdf.png", results)
    charts = "latest_cdf.png"
    if sustained is not None and sustained.get("runs"):
        report.write_sustained_png(out / "latest_sustained.png", sustained)
        charts += " and latest_sustained.png"

    missed = [o for o in outcomes if not o.ok]
    if sustained is not None and sustained.get("runs"):
        print("\n" + "\n".join(report.sustained_lines(sustained)))
    sweep = " and the sustained sweep" if sustained is not None else ""
    print(
        f"\n{len(results) - 1} scenario(s){sweep} ran in {time.monotonic() - started:.0f} s; "
        f"reports in {out}/latest.{{json,md}}, {charts}"
    )
    for note in notes:
        print(f"note: {note}")
    for o in outcomes:
        verdict = "ok    " if o.ok else "MISSED"
        print(f"budget {verdict} {o.name} (value {o.value:.4g}, limit {o.limit:g})")
    if previous is not None:
        _print_regressions(regressions, args.threshold)
    status = 0
    if failed:
        print(f"FAILED scenarios: {', '.join(failed)}")
        status = 1
    if missed:
        print(f"MISSED budgets: {len(missed)}")
        status = 1
    if regressions and args.fail_on_regression:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
