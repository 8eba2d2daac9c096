"""Start a detached agent for a ring when no live agent holds it (the zero-config path).

Several workers may start at once: each may spawn an agent, exactly one takes the ring's
consumer role and the others exit at once (a spawned agent that finds the role taken
exits 0 quietly). A spawned agent exits by itself once no producer is attached and
everything is delivered or spooled (``--idle-exit``; the agent's default for ``--spawned``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from emp_fastbuf import paths
from emp_fastbuf.ring import Ring

_log = logging.getLogger("emp_fastbuf")

_last_spawn: dict[str, float] = {}
_warned: set[str] = set()
_lock = threading.Lock()
SPAWN_INTERVAL_S = 5.0


def _open_log(path: Path) -> int:
    """The agent's log, appended to; never through a symlink. A planted ``agent.log``
    symlink is removed (the link, not its target) and a new log started."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if not path.is_symlink():
            raise
        _log.warning("emp_fastbuf: %s was a symlink (%s): removed, a new log starts", path, exc)
        path.unlink()
        return os.open(path, flags | os.O_EXCL, 0o600)


def consumer_alive(ring: Ring) -> bool:
    lease = ring.stats()["consumer"]
    return bool(lease["pid"]) and bool(lease["alive"])


def ensure_agent(ring_name: str) -> int | None:
    """Spawn ``fastbuf agent --spawned`` for ``ring_name`` unless a live consumer holds the
    ring. Returns the new agent's pid, or None when none was started. Never raises: a
    worker must not fail because its drainer could not start (records wait in the ring)."""
    try:
        with _lock:
            now = time.monotonic()
            if now - _last_spawn.get(ring_name, -1e9) < SPAWN_INTERVAL_S:
                return None
            ring = Ring.open(ring_name)
            try:
                if consumer_alive(ring):
                    return None
            finally:
                ring.close()
            _last_spawn[ring_name] = now
            home = paths.home()
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            log_path = home / paths.AGENT_LOG
            fd = _open_log(log_path)
            argv = [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring_name, "--spawned"]
            idle = os.environ.get("EMP_FASTBUF_AGENT_IDLE_EXIT")  # seconds, or the agent's default
            if idle:
                argv += ["--idle-exit", idle]
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    start_new_session=True,  # survives the worker's process group being killed
                    close_fds=True,
                    env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
                )
            finally:
                os.close(fd)
            # Reap it in the background when it exits while we live (no zombie left).
            threading.Thread(target=proc.wait, name="emp-fastbuf-agent-reaper", daemon=True).start()
            return proc.pid
    except Exception as exc:
        # Said once per process and reason: records wait in the ring, but nobody drains
        # them until an agent runs (no home directory, say, as in some containers).
        reason = f"{type(exc).__name__}: {exc}"
        if reason not in _warned:
            _warned.add(reason)
            _log.warning(
                "emp_fastbuf: cannot start an agent for ring %r (%s); records wait in the "
                "ring until one runs (set EMP_FASTBUF_HOME, or run `fastbuf agent`)",
                ring_name,
                reason,
            )
        return None
