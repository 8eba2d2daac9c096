"""The ``receiver.ingest`` bench (``bench/receiver_ingest.py``) on a short run: a real agent
with its OTLP receiver, a real sender process, a real loopback destination.

Nothing here asserts a speed: only that every accepted record is counted downstream
exactly once, that the bodies are what they claim, and that the budgets read the row."""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from support import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import receiver_ingest, scenarios, sustained
from bench import run as bench_run


def test_bodies_hold_distinct_records_with_their_job() -> None:
    bodies = receiver_ingest.build_bodies(5_000, 3, records=10)
    seqs = []
    for raw in bodies:
        request = ExportLogsServiceRequest.FromString(gzip.decompress(raw))
        (rl,) = request.resource_logs
        assert rl.resource.attributes[0].value.string_value == "bench-receiver"
        for rec in rl.scope_logs[0].log_records:
            attrs = {kv.key: kv.value for kv in rec.attributes}
            assert attrs["emp.job_id"].string_value == sustained.JOB_ID
            assert rec.body.string_value == "step done"
            seqs.append(attrs["seq"].int_value - (1 << 40))
    assert seqs == list(range(5_000, 5_030))
    counts = sustained.count_log_bodies(
        [("/v1/logs", "gzip", b, "application/x-protobuf") for b in bodies]
    )
    assert counts["unique"] == 30 and counts["duplicates"] == 0 and counts["wrong_job"] == 0


def test_seq_must_fit_the_template() -> None:
    with pytest.raises(ValueError, match="6 varint bytes"):
        receiver_ingest.build_bodies((1 << 40) - 5, 1, records=10)


def test_budgets_read_the_row() -> None:
    row = {"accepted_per_s": 300_000.0, "delivered_per_s": 150_000.0, "lost": 0}
    rows = receiver_ingest.budget_rows(row)
    assert rows == {"receiver.ingest": {"ops_per_s": 150_000.0, "lost": 0.0}}
    assert receiver_ingest.budget_rows({"error": "x"}) == {}
    receiver_ingest.register_budgets()
    receiver_ingest.register_budgets()  # a second call adds nothing
    mine = [b for b in scenarios.budgets() if b.name.startswith("receiver.ingest:")]
    assert len(mine) == 2
    outcomes = {b.name: b.evaluate(rows) for b in mine}
    rate = outcomes["receiver.ingest: at least 200,000 log records/s"]
    assert rate is not None and not rate.ok and rate.value == 150_000.0
    lost = outcomes["receiver.ingest: every accepted record delivered"]
    assert lost is not None and lost.ok


@pytest.mark.slow
def test_short_run_delivers_every_accepted_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    row = receiver_ingest.run(duration=0.5, connections=2)
    assert row["accepted"] > 0
    assert row["accepted"] % receiver_ingest.RECORDS_PER_REQUEST == 0
    assert row["delivered"] == row["accepted"]
    assert row["duplicates"] == 0 and row["lost"] == 0 and row["wrong_job"] == 0
    assert row["agent_exit"] == 0
    assert row["agent_cpu_s"] is not None and row["agent_cpu_s"] > 0
    assert row["delivered_per_s"] > 0 and row["accepted_per_s"] > 0
    assert "not installable" in row["peer"]
    md = "\n".join(receiver_ingest.markdown_lines(row))
    assert "receiver.ingest" in md
    assert list(tmp_path.iterdir()) == []  # the agent's home removed


def test_bench_run_lists_the_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_run.main(["--list"]) == 0
    assert "receiver.ingest" in capsys.readouterr().out
