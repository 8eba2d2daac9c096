"""Small value helpers that more than one stage needs: the nearest-rank percentile and
JSON for values that may hold NaN or infinities (which JSON cannot spell)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, TypeVar

N = TypeVar("N", int, float)


def percentile(sorted_values: Sequence[N], p: float) -> N | None:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or
    below it. ``sorted_values`` is sorted ascending; None for no values."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN and infinity (in dicts, lists and tuples) as the strings
    "NaN", "Infinity" and "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps_safe(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never fails on a NaN or an infinity: strict first (the common
    case costs nothing extra), then with those values as strings."""
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(json_safe(value), allow_nan=False, **kwargs)
