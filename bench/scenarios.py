"""The scenario registry and the budgets checked after a run.

Adding a scenario is one factory and one ``register`` call::

    def emit4() -> tuple[Call, Teardown | None]:
        ring = ...                                   # set up outside the timed loop
        return (lambda: fastbuf.emit("x", a=1, b=2, c=3, d=4)), ring.close

    register("fastbuf.emit[4]", emit4, budget="p99_ns <= 2000", versus=("otel.log",))

The factory runs right before the scenario is timed and returns the call to time plus a
teardown (or None). A budget is ``METRIC [(SCENARIO)] [/ METRIC (SCENARIO)] OP NUMBER``;
a bare metric means the registering scenario's. Metrics: ``p50_ns p99_ns p999_ns max_ns
mean_ns ops_per_s`` (``p50``/``p99``/``p999`` are accepted for the ``_ns`` ones), and for
the rows of ``bench.sustained`` ``offered_per_s delivered_fraction lost zero_loss_rate
zero_loss_x_otel``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import Call, Factory, Teardown

__all__ = [
    "Budget",
    "BudgetOutcome",
    "Call",
    "Scenario",
    "Teardown",
    "add_budget",
    "budgets",
    "cost_scenario",
    "get",
    "parse_budget",
    "register",
    "scenarios",
    "set_cost_scenario",
]

# Rows of the sustained-load runs (``bench.sustained.budget_rows``).
SUSTAINED_METRICS = (
    "offered_per_s",
    "delivered_fraction",
    "lost",
    "zero_loss_rate",
    "zero_loss_x_otel",
)
METRICS = ("p50_ns", "p99_ns", "p999_ns", "max_ns", "mean_ns", "ops_per_s", *SUSTAINED_METRICS)
_ALIASES = {"p50": "p50_ns", "p99": "p99_ns", "p999": "p999_ns", "max": "max_ns", "mean": "mean_ns"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
_NAME = re.compile(r"^[A-Za-z0-9_.\[\]:/+-]+$")
_TERM = r"([a-z0-9_]+)\s*(?:\(\s*([^()\s]+)\s*\))?"
_EXPR = re.compile(
    rf"^\s*{_TERM}\s*(?:/\s*{_TERM}\s*)?(<=|>=|<|>)\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*$"
)

SharedSetup = Callable[[], tuple[tuple[object, ...], Teardown | None]]


@dataclass(frozen=True)
class Scenario:
    """One registered scenario; see ``register`` for the fields."""

    name: str
    factory: Factory
    peer: str | None
    calls: int
    quick_calls: int
    warmup: int
    items_per_call: int
    processes: int
    shared: SharedSetup | None
    versus: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Budget:
    """``metric(scenario) [/ metric(over)] op limit``."""

    name: str
    metric: str
    scenario: str
    op: str
    limit: float
    over_metric: str | None = None
    over_scenario: str | None = None

    def scenarios(self) -> tuple[str, ...]:
        """The scenarios this budget reads."""
        if self.over_scenario is None:
            return (self.scenario,)
        return (self.scenario, self.over_scenario)

    def evaluate(self, rows: Mapping[str, Mapping[str, Any]]) -> BudgetOutcome | None:
        """Check the budget against result rows keyed by scenario name.

        Returns None when a scenario it reads did not run (skipped or filtered out).
        """
        if any(s not in rows for s in self.scenarios()):
            return None
        value = float(rows[self.scenario][self.metric])
        if self.over_scenario is not None and self.over_metric is not None:
            denominator = float(rows[self.over_scenario][self.over_metric])
            if not denominator:
                # A zero divisor means a broken measurement: never let it pass a budget.
                return BudgetOutcome(self.name, self.limit, math.nan, False)
            value /= denominator
        return BudgetOutcome(self.name, self.limit, value, _OPS[self.op](value, self.limit))


@dataclass(frozen=True)
class BudgetOutcome:
    """A checked budget, as written to ``latest.json``."""

    name: str
    limit: float
    value: float
    ok: bool

    def to_json(self) -> dict[str, Any]:
        """``{"name", "limit", "value", "ok"}``."""
        value = round(self.value, 3) if math.isfinite(self.value) else None
        return {"name": self.name, "limit": self.limit, "value": value, "ok": self.ok}


def _metric(word: str) -> str:
    metric = _ALIASES.get(word, word)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {word!r}; use one of {', '.join(METRICS)}")
    return metric


def parse_budget(
    expr: str, *, default_scenario: str | None = None, name: str | None = None
) -> Budget:
    """Parse a budget expression; a term without ``(scenario)`` uses ``default_scenario``."""
    if not isinstance(expr, str):
        raise TypeError(f"budget must be a str, got {type(expr).__name__}")
    m = _EXPR.match(expr)
    if m is None:
        raise ValueError(f"bad budget {expr!r}: want 'METRIC[(SCENARIO)] [/ ...] OP NUMBER'")
    metric, scenario, over_metric, over_scenario, op, limit = m.groups()
    scenario = scenario or default_scenario
    if scenario is None:
        raise ValueError(f"budget {expr!r} names no scenario")
    if over_metric is not None:
        over_scenario = over_scenario or default_scenario
        if over_scenario is None:
            raise ValueError(f"budget {expr!r} names no scenario for the divisor")
    return Budget(
        name=name
        or (expr.strip() if default_scenario is None else f"{default_scenario}: {expr.strip()}"),
        metric=_metric(metric),
        scenario=scenario,
        op=op,
        limit=float(limit),
        over_metric=_metric(over_metric) if over_metric is not None else None,
        over_scenario=over_scenario if over_metric is not None else None,
    )


_registry: dict[str, Scenario] = {}
_budgets: list[Budget] = []
_cost_scenario: str | None = None


def _positive(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
    return value


def register(
    name: str,
    factory: Factory,
    *,
    peer: str | None = None,
    budget: str | Sequence[str] | None = None,
    calls: int = 1_000_000,
    quick_calls: int = 20_000,
    warmup: int | None = None,
    items_per_call: int = 1,
    processes: int = 1,
    shared: SharedSetup | None = None,
    versus: Sequence[str] = (),
    description: str = "",
) -> Scenario:
    """Add a scenario to the run.

    - ``factory()`` returns ``(fn, teardown)``; raise ``bench.harness.Skip`` to skip with a note.
    - ``peer``: the library a peer scenario measures (e.g. ``"opentelemetry-sdk"``); None for ours.
    - ``budget``: one or more budget expressions checked after the run.
    - ``calls``/``quick_calls``: timed calls in a full run and with ``--quick``; ``warmup``
      defaults to 2% of ``calls`` (at most 20,000).
    - ``items_per_call``: items each call handles (records in an encoded batch); throughput
      is reported in items per second.
    - ``processes`` > 1: that many spawned producers each run the loop (``calls`` each);
      ``shared()``, if given, runs in the parent first and returns ``(args, teardown)``: the
      args are passed to ``factory(*args)`` in every producer.
    - ``versus``: peer scenarios to show ratios against in ``latest.md``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad scenario name {name!r}")
    if name in _registry:
        raise ValueError(f"scenario {name!r} is already registered")
    if not callable(factory):
        raise TypeError("factory must be callable")
    calls = _positive("calls", calls)
    quick_calls = _positive("quick_calls", quick_calls)
    if warmup is None:
        warmup = min(20_000, max(1, calls // 50))
    elif isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    scenario = Scenario(
        name=name,
        factory=factory,
        peer=peer,
        calls=calls,
        quick_calls=quick_calls,
        warmup=warmup,
        items_per_call=_positive("items_per_call", items_per_call),
        processes=_positive("processes", processes),
        shared=shared,
        versus=tuple(versus),
        description=description,
    )
    exprs = [budget] if isinstance(budget, str) else list(budget or ())
    parsed = [parse_budget(e, default_scenario=name) for e in exprs]
    _registry[name] = scenario
    _budgets.extend(parsed)
    return scenario


def add_budget(expr: str, *, name: str | None = None) -> Budget:
    """Add a budget across scenarios, e.g. ``"p99_ns(otel.span) / p99_ns(fastbuf.span) >= 20"``."""
    budget = parse_budget(expr, name=name)
    _budgets.append(budget)
    return budget


def set_cost_scenario(name: str) -> None:
    """Choose the scenario whose CPU time per call gives ``cost_per_million_usd``."""
    global _cost_scenario
    _cost_scenario = name


def cost_scenario() -> str | None:
    """The scenario chosen by ``set_cost_scenario``, if any."""
    return _cost_scenario


def scenarios() -> list[Scenario]:
    """Registered scenarios in registration order."""
    return list(_registry.values())


def get(name: str) -> Scenario:
    """One registered scenario by name."""
    return _registry[name]


def budgets() -> list[Budget]:
    """All registered budgets."""
    return list(_budgets)
