"""The sustained-load harness (``bench/sustained.py``) on a very short load: real producer
processes, a real agent, the loopback receiver, the store and the OpenTelemetry SDK.

Nothing here asserts a speed: only that the harness counts what it offered and what arrived
consistently, and that every process, ring and home is gone afterwards."""

from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from emp_fastbuf.testing.receiver import Body
from support import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run as bench_run
from bench import scenarios, sustained


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) is not running either.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _our_rings() -> list[str]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return [p.name for p in shm.iterdir() if p.name.startswith(f"bench-su-{os.getpid()}-")]


@pytest.mark.slow
def test_short_sweep_counts_every_record_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load = sustained.Load(producers=2, rate=2500)
    doc = sustained.run_all(duration=1.0, chosen=[load])
    assert doc["errors"] == []
    assert [r["system"] for r in doc["runs"]] == list(sustained.SYSTEMS)
    for r in doc["runs"]:
        assert r["load"] == "2x2500"
        assert r["offered"] > 0
        assert 0 < r["delivered"] <= r["offered"]
        assert r["lost"] == r["offered"] - r["delivered"]
        assert r["delivered_fraction"] == pytest.approx(r["delivered"] / r["offered"])
        assert r["wrong_job"] == 0
        if r["system"] != "otel":
            drops = r["dropped_by_reason"]
            assert set(drops) >= {"full", "no_lane", "too_large"}
            assert r["unaccounted"] == r["lost"] - sum(drops.values())
            agent = r["agent"]
            assert agent["exit"] == 0
            assert agent["cpu_s"] is not None and agent["cpu_s"] >= 0
            assert not _alive(agent["pid"])
            assert r["ring_shm_bytes"] >= 64 << 20  # the default ring: 64 MiB of lanes
        if r["system"] != "fastbuf.store":
            assert r["received"]["undecodable"] == 0
    assert _our_rings() == []
    assert list(tmp_path.iterdir()) == []  # every home removed

    md = "\n".join(sustained.markdown_lines(doc))
    assert "Highest zero-loss rate" in md
    sustained.write_chart(tmp_path / "sustained.png", doc)
    assert (tmp_path / "sustained.png").stat().st_size > 0


def _body(seqs: list[int | None], job: str = sustained.JOB_ID) -> bytes:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for seq in seqs:
        rec = records.add()
        rec.attributes.append(KeyValue(key="emp.job_id", value=AnyValue(string_value=job)))
        if seq is not None:
            rec.attributes.append(KeyValue(key="seq", value=AnyValue(int_value=seq)))
    return gzip.compress(request.SerializeToString())


def test_receiver_counts_distinct_records_and_duplicates_apart() -> None:
    p1 = 1 << sustained.SEQ_SHIFT
    bodies = [
        Body("/v1/logs", "gzip", _body([0, 1, 2, p1])),
        Body("/v1/logs", "gzip", _body([2, p1, 200_000, None])),  # a resent batch overlaps
        Body("/v1/logs", "gzip", _body([3], job="another")),
        Body("/v1/logs", "gzip", b"not gzip"),
        Body("/v1/metrics", "gzip", b""),
    ]
    counts = sustained.count_log_bodies(bodies)
    assert counts["log_records"] == 9
    assert counts["unique"] == 6  # 0 1 2 3 200000 of producer 0, 0 of producer 1
    assert counts["duplicates"] == 2
    assert counts["without_seq"] == 1
    assert counts["wrong_job"] == 1
    assert counts["undecodable"] == 1
    assert counts["other_requests"] == 1
    assert counts["requests"] == 4


def _row(system: str, rate: int, lost: int, producers: int = 1) -> dict[str, Any]:
    load = sustained.Load(producers, rate)
    offered = rate * producers * 10
    return {
        "system": system,
        "load": load.label,
        "producers": producers,
        "target_per_s": load.total,
        "offered_per_s": float(load.total),
        "offered": offered,
        "delivered": offered - lost,
        "delivered_fraction": (offered - lost) / offered,
        "lost": lost,
    }


def test_zero_loss_rate_stops_at_the_first_loss_and_budgets_read_the_rows() -> None:
    runs = [
        _row("fastbuf.otlp", 10_000, 0),
        _row("fastbuf.otlp", 50_000, 0),
        _row("fastbuf.otlp", 100_000, 5),
        _row("fastbuf.otlp", 200_000, 0),  # above a loss: does not count
        _row("fastbuf.otlp", 50_000, 0, producers=4),  # 4 producers: not in the rate
        _row("otel", 10_000, 3),
    ]
    assert sustained.zero_loss_rate(runs, "fastbuf.otlp") == 50_000
    assert sustained.zero_loss_rate(runs, "otel") == 0.0
    doc = {"runs": runs, "zero_loss_rate": {"fastbuf.otlp": 50_000.0, "otel": 0.0}}
    rows = sustained.budget_rows(doc)
    assert rows["sustained.fastbuf.otlp[1x200k]"]["lost"] == 0
    assert rows["sustained.fastbuf.otlp"]["zero_loss_x_otel"] == float("inf")

    sustained.register_budgets()
    sustained.register_budgets()  # once only
    names = [b.name for b in scenarios.budgets() if b.name.startswith("sustained:")]
    assert len(names) == len(set(names)) == 5
    outcomes, unchecked = bench_run.evaluate_budgets([], rows)
    by_name = {o.name: o for o in outcomes}
    assert by_name[names[0]].ok  # no loss at 200k (OTLP)
    assert any(n.startswith("sustained:") and "store" in n for n in unchecked)
    ratio = next(o for o in outcomes if "OpenTelemetry" in o.name)
    assert ratio.ok and ratio.to_json()["value"] is None  # inf: the SDK lost at every rate


def test_pace_emits_what_is_due_and_runs_its_duration() -> None:
    got: list[tuple[int, int]] = []
    sent, elapsed = sustained.pace(lambda first, n: got.append((first, n)), 2000, 0.2)
    assert 0 < sent <= 400
    assert elapsed >= 0.2
    # Bursts are contiguous: every record once, in order.
    assert [first for first, _ in got] == [sum(n for _, n in got[:i]) for i in range(len(got))]
    assert sum(n for _, n in got) == sent


def test_bench_run_only_sustained_reports_it_with_its_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [_row(s, r, 0) for s in sustained.SYSTEMS for r in sustained.SINGLE_RATES]
    for r in runs:
        if r["system"] != "otel":
            r["agent"] = {"cpu_s": 1.0, "cpu_s_per_million": 2.5, "peak_rss_bytes": 1 << 27}
            r["dropped_by_reason"] = {"full": 0, "no_lane": 0, "too_large": 0}
            r["ring_shm_bytes"] = 64 << 20
        r["duplicates"] = 0
    zero = {s: sustained.zero_loss_rate(runs, s) for s in sustained.SYSTEMS}
    doc = {
        "duration_s": 3.0,
        "quick": True,
        "runs": runs,
        "zero_loss_rate": zero,
        "zero_loss_x_otel": 1.0,
        "otel_lost_at_every_rate": False,
        "errors": [],
    }
    asked: list[bool] = []

    def fake_run_all(quick: bool = False, **_: Any) -> dict[str, Any]:
        asked.append(quick)
        return doc

    monkeypatch.setattr(sustained, "run_all", fake_run_all)
    status = bench_run.main(["--only", "sustained", "--quick", "--out", str(tmp_path)])
    assert asked == [True]
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["sustained"]["zero_loss_rate"]["fastbuf.otlp"] == 400_000
    checked = {b["name"]: b for b in latest["budgets"] if b["name"].startswith("sustained:")}
    assert len(checked) == 5
    ratio = next(b for n, b in checked.items() if "OpenTelemetry" in n)
    assert ratio["ok"] is False and ratio["value"] == 1.0  # 1x the SDK: the budget is missed
    assert status == 1
    md = (tmp_path / "latest.md").read_text()
    assert "## Sustained load" in md and "fastbuf -> agent -> store" in md
    assert (tmp_path / "latest_sustained.png").stat().st_size > 0
    assert "## Sustained load" in capsys.readouterr().out


def test_cost_model_puts_the_sustained_agent_cpu_beside_the_batch_figure() -> None:
    runs = [_row("fastbuf.otlp", 10_000, 0), _row("fastbuf.otlp", 50_000, 7)]
    runs[0]["agent"] = {"cpu_s_per_million": 9.0}
    runs[1]["agent"] = {"cpu_s_per_million": 3.0}
    measured = {"records": 1e6, "cpu_s": 1.5, "wire_bytes": 8.6e6, "compression": "gzip"}
    cost = bench_run.cost_model([], 0.05, 0.09, agent=measured, sustained={"runs": runs})
    assert cost is not None
    per = cost["per_million_events"]
    assert per["agent_cpu_s"] == 1.5
    assert per["agent_cpu_s_sustained"] == 9.0  # the highest rate that lost nothing
    assert per["total_usd"] == pytest.approx(per["agent_cpu_usd"] + per["egress_usd"], rel=1e-3)
    assert cost["assumptions"]["agent_sustained_run"] == "sustained.fastbuf.otlp[1x10k]"
