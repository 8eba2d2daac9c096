"""Sizing the ring to the machine's shared memory.

A ring lives in ``/dev/shm``. Docker gives a container 64 MB there by default, less than the
default ring: the ring is then made smaller, with one warning that says how to get more
(``--shm-size``), instead of turning telemetry off. The rule (docs/ring-layout.md): the
ring takes at most half of the free space, so the worker's own users of ``/dev/shm``
(PyTorch's DataLoader, NCCL) keep the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from emp_fastbuf.errors import RingError
from emp_fastbuf.ring._ring import DEFAULT_SIZE, layout_for

SHM_DIR = "/dev/shm"
# Test hook: pretend ``/dev/shm`` has this many bytes free (where a test cannot mount a
# small tmpfs there).
FREE_OVERRIDE_ENV = "EMP_FASTBUF_SHM_FREE"
SIZE_ENV = "EMP_FASTBUF_RING_SIZE"
_LANE_STEP = 256 << 10  # the smallest lane of the default layout


def shm_free_bytes() -> int | None:
    """Bytes free in ``/dev/shm``, or None where it cannot be told."""
    override = os.environ.get(FREE_OVERRIDE_ENV)
    if override:
        try:
            return max(0, int(override))
        except ValueError:
            pass
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def ring_size_from_env(env: dict[str, str] | os._Environ[str]) -> tuple[int, str | None]:
    """``EMP_FASTBUF_RING_SIZE`` (bytes) or the default, with a warning for a value that
    cannot be used (the default is used instead: configuration never stops telemetry)."""
    raw = env.get(SIZE_ENV)
    if not raw:
        return DEFAULT_SIZE, None
    try:
        size = int(raw.strip())
        layout_for(size)
    except ValueError as exc:
        return DEFAULT_SIZE, (
            f"{SIZE_ENV}={raw[:40]!r} is not a usable ring size ({exc}); using the default "
            f"of {DEFAULT_SIZE >> 20} MiB"
        )
    return size, None


def fit_ring_size(size: int, free: int | None) -> tuple[int | None, str | None]:
    """The lane bytes to create a ring with when ``size`` was asked for and ``free`` bytes
    of ``/dev/shm`` are free: ``(size, None)`` when it fits, a smaller size and a warning
    when it does not, ``(None, warning)`` when not even the smallest ring fits."""
    layout_for(size)  # a bad size is the caller's error, raised here
    if free is None:
        return size, None
    budget = free // 2
    if layout_for(size)["segment_size"] <= budget:
        return size, None
    fitted: int | None = None
    candidate = min(size, budget) // _LANE_STEP * _LANE_STEP
    while candidate >= _LANE_STEP:
        if layout_for(candidate)["segment_size"] <= budget:
            fitted = candidate
            break
        candidate -= _LANE_STEP
    asked = layout_for(size)["segment_size"]
    advice = (
        "in a container, give it more with `docker run --shm-size=1g` (Kubernetes: an "
        "emptyDir with medium Memory mounted at /dev/shm), or set EMP_FASTBUF_RING_SIZE"
    )
    if fitted is None:
        return None, (
            f"/dev/shm has {free >> 20} MiB free, too little for even the smallest ring "
            f"({asked >> 20} MiB asked for); {advice}"
        )
    lay = layout_for(fitted)
    return fitted, (
        f"/dev/shm has {free >> 20} MiB free: the ring takes {lay['segment_size'] >> 20} MiB "
        f"({lay['lanes']} lanes) instead of {asked >> 20} MiB, so bursts and the number of "
        f"processes it holds are smaller; {advice}"
    )


def create_size(size: int, warn: Callable[[str], None]) -> int:
    """The size to create a ring with: ``size``, or less where ``/dev/shm`` is short, with
    ``fit_ring_size``'s warning (naming ``--shm-size``) passed to ``warn``. Raises
    RingError when not even the smallest ring fits."""
    fitted, warning = fit_ring_size(size, shm_free_bytes())
    if warning is not None:
        warn(warning)
    if fitted is None:
        raise RingError(warning or "no room for a ring in /dev/shm")
    return fitted
