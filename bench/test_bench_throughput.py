"""Throughput of every registered single-process scenario, with pytest-benchmark.

Not part of ``make test`` (pytest's testpaths is ``tests/``). Run it with::

    .venv/bin/python -m pytest bench/test_bench_throughput.py -q            # benchmarks
    .venv/bin/python -m pytest bench/test_bench_throughput.py -q --benchmark-disable  # smoke

pytest-benchmark reports means and rounds; the tails (P99, P99.9) come from ``bench.run``.
Scenarios from ``bench.ours`` are picked up here as soon as that module registers them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import scenarios
from bench.harness import Call, Skip
from bench.run import load_scenarios

load_scenarios()
SINGLE = [s for s in scenarios.scenarios() if s.processes == 1]


@pytest.fixture(params=SINGLE, ids=[s.name for s in SINGLE])
def scenario_call(request: pytest.FixtureRequest) -> Iterator[tuple[scenarios.Scenario, Call]]:
    """The scenario's call, set up and torn down around the benchmark."""
    s: scenarios.Scenario = request.param
    try:
        fn, teardown = s.factory()
    except Skip as exc:
        pytest.skip(str(exc))
    try:
        yield s, fn
    finally:
        if teardown is not None:
            teardown()


def test_throughput(
    benchmark: BenchmarkFixture, scenario_call: tuple[scenarios.Scenario, Call]
) -> None:
    s, fn = scenario_call
    benchmark.group = s.peer or "ours"
    benchmark.extra_info["items_per_call"] = s.items_per_call
    benchmark(fn)
