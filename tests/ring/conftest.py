"""Fixtures of the ring's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import support.ring_workers as w


@pytest.fixture(scope="module", autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Every segment a test of the module created is unlinked by the end of it."""
    before = w.shm_names(w.name_prefix())
    yield
    left = w.shm_names(w.name_prefix()) - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"
