"""Fixtures the agent's tests share."""

from __future__ import annotations

import pytest

from support.parsers import IMPLEMENTATIONS, Implementation


@pytest.fixture(scope="session", params=IMPLEMENTATIONS, ids=lambda impl: impl.name)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    """The native parsers, then their reference implementations: a test that takes this
    checks what both must do."""
    impl: Implementation = request.param
    return impl
