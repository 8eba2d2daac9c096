"""The OpenTelemetry SDK variables the producer honours: the trace sampler and the
attribute limits (docs/configuration.md, "Sampling and attribute limits").

The environment must never stop a worker: a bad value gives one warning (once per
variable and value in a process, however often ``configure()`` reads it) and counts as
unset, so the default applies. An empty variable is unset.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping

from emp_fastbuf.producer._codec import SAMPLERS

_logger = logging.getLogger("emp_fastbuf")

SAMPLER_ENV = "OTEL_TRACES_SAMPLER"
SAMPLER_ARG_ENV = "OTEL_TRACES_SAMPLER_ARG"
DEFAULT_SAMPLER = "parentbased_always_on"
DEFAULT_RATIO = 1.0
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")

# The attribute limits: (variable, the set_limits argument it feeds, largest value). The
# general forms come first; a span or log record form beats them for its records.
COUNT_LIMIT_ENV = "OTEL_ATTRIBUTE_COUNT_LIMIT"
VALUE_LIMIT_ENV = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
SPAN_COUNT_LIMIT_ENV = "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"
SPAN_VALUE_LIMIT_ENV = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"
LOG_COUNT_LIMIT_ENV = "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT"
LOG_VALUE_LIMIT_ENV = "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT"
MAX_COUNT = 65535
MAX_VALUE_LENGTH = 1 << 24
LIMIT_VARIABLES: tuple[tuple[str, str, int], ...] = (
    (COUNT_LIMIT_ENV, "attributes", MAX_COUNT),
    (VALUE_LIMIT_ENV, "value_length", MAX_VALUE_LENGTH),
    (SPAN_COUNT_LIMIT_ENV, "span_attributes", MAX_COUNT),
    (SPAN_VALUE_LIMIT_ENV, "span_value_length", MAX_VALUE_LENGTH),
    (LOG_COUNT_LIMIT_ENV, "log_attributes", MAX_COUNT),
    (LOG_VALUE_LIMIT_ENV, "log_value_length", MAX_VALUE_LENGTH),
)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(name: str, value: str, why: str, fallback: str) -> None:
    with _warned_lock:
        if (name, value) in _warned:
            return
        _warned.add((name, value))
    _logger.warning("emp_fastbuf: %s=%r ignored: %s; using %s", name, value[:40], why, fallback)


def sampler(env: Mapping[str, str]) -> tuple[str, float]:
    """(sampler name, ratio) from ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``.

    Default ``parentbased_always_on``. The argument is read only for the two ratio
    samplers: a number from 0 to 1, default 1.0. Names compare case-insensitively.
    """
    raw = env.get(SAMPLER_ENV, "")
    name = raw.strip().lower()
    if not name:
        name = DEFAULT_SAMPLER
    elif name not in SAMPLERS:
        _warn_once(SAMPLER_ENV, raw, f"not one of {', '.join(SAMPLERS)}", DEFAULT_SAMPLER)
        name = DEFAULT_SAMPLER
    ratio = DEFAULT_RATIO
    arg = env.get(SAMPLER_ARG_ENV, "")
    if name in RATIO_SAMPLERS and arg.strip():
        try:
            value = float(arg.strip())
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:  # NaN fails both
            ratio = value
        else:
            _warn_once(SAMPLER_ARG_ENV, arg, "not a number from 0 to 1", f"{DEFAULT_RATIO}")
    return name, ratio


def _positive_int(env: Mapping[str, str], name: str, largest: int) -> int | None:
    raw = env.get(name, "")
    text = raw.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit() and 1 <= int(text) <= largest:
        return int(text)
    _warn_once(name, raw, f"not a whole number from 1 to {largest}", "the default")
    return None


def limits(
    env: Mapping[str, str], attributes: int | None, value_length: int | None
) -> dict[str, int | None]:
    """The keyword arguments of ``_codec.set_limits`` for the attribute limits: the
    ``configure()`` arguments ``attributes`` and ``value_length`` where given (for every
    record kind), else the variables; None leaves a limit as it is."""
    found = {arg: _positive_int(env, name, largest) for name, arg, largest in LIMIT_VARIABLES}
    if attributes is not None:
        found.update(attributes=attributes, span_attributes=None, log_attributes=None)
    if value_length is not None:
        found.update(value_length=value_length, span_value_length=None, log_value_length=None)
    return found
