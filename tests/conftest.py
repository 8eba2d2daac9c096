"""Fixtures every stage's tests use. Each stage folder's conftest.py holds the ones its own
tests share; helpers that are not fixtures are in the ``support`` package."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec, api

_ring_numbers = itertools.count()

# Agents the tests start listen for OTLP only where a test asks (on port 0): the default
# ports are the machine's, and tests run side by side.
os.environ.setdefault("EMP_FASTBUF_OTLP_LISTEN", "off")
os.environ.setdefault("EMP_FASTBUF_OTLP_GRPC_LISTEN", "off")


@pytest.fixture(autouse=True, scope="session")
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A home for the whole run where the environment names none: worker processes a test
    starts without a home of its own write their fatal-error files (producer.crash) there,
    not in the user's home. ``fastbuf_home`` gives a test its own."""
    if os.environ.get("EMP_FASTBUF_HOME", "").strip():
        yield
        return
    home = tmp_path_factory.mktemp("session-home")
    home.chmod(0o700)
    os.environ["EMP_FASTBUF_HOME"] = str(home)
    try:
        yield
    finally:
        os.environ.pop("EMP_FASTBUF_HOME", None)


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A unique ring name, unlinked after the test if the test left it behind. Short:
    macOS allows 31 characters in a shared-memory name."""
    name = f"emp-fastbuf-test-{os.getpid()}-{next(_ring_numbers)}"
    yield name
    try:
        from emp_fastbuf import Ring

        Ring.unlink(name)
    except Exception:
        pass


@pytest.fixture
def ring(ring_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[fastbuf.Ring]:
    """This process configured on a fresh ring, counters reset; limits restored after."""
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    fastbuf.configure(service="test-svc", machine_id="m1", worker_id="w1", ring=ring_name)
    _codec.reset_counters()
    r = api.ring()
    assert r is not None
    yield r
    api.shutdown()
    _codec.set_limits(attributes=128, key_length=128, value_length=4096)


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A loopback OTLP/HTTP receiver (``emp_fastbuf.testing.receiver``), up for the test."""
    from emp_fastbuf.testing.receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        yield rx


@pytest.fixture
def agent_ring(ring_name: str) -> Iterator[str]:
    """A 16-lane ring for an agent test, created ahead of the agent."""
    fastbuf.Ring.create(ring_name, 16 << 20, lanes=16).close()
    yield ring_name


@pytest.fixture
def fastbuf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private EMP_FASTBUF_HOME for the test."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("EMP_FASTBUF_HOME", str(home))
    return home


@pytest.fixture
def env_clean(monkeypatch: pytest.MonkeyPatch, fastbuf_home: Path) -> Path:
    """``fastbuf_home``, with no OTLP or Dash0 variable in the environment and no agent
    spawned by the producer API: what an agent started by the test sees."""
    for var in list(os.environ):
        if var.startswith(("OTEL_", "DASH0_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    return fastbuf_home
