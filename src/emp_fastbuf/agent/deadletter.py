"""Dead letters for ``fastbuf deadletter`` and ``fastbuf status``: listing what the
exporter kept in ``<home>/dead-letter/``, and replaying it with the current configuration
(after a token was fixed, for example).

A replay sends each request again with the real exporter (:class:`Replayer`): one the
endpoint accepts is removed, one that fails again stays, its sidecar updated with the new
status, message and body. With dataset routes, a request goes to the dataset of its
resources under the current routes; one whose resources the routes now send to several
datasets goes as one request per dataset, and stays whole (every part sent again next
time) unless all of them are accepted. Replays of one home take turns (a lock on the directory), so
two of them never send the same request twice.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from emp_fastbuf import paths
from emp_fastbuf.agent import datasets
from emp_fastbuf.agent.config import AgentConfig, ConfigError, Signal
from emp_fastbuf.agent.otlp import deadletter_files
from emp_fastbuf.agent.otlp.deadletter_files import Damaged, DamagedFile, DeadLetter
from emp_fastbuf.agent.otlp.http import OTLPExporter, RetryPolicy

__all__ = [
    "REPLAY_OPTIONS",
    "Damaged",
    "DamagedFile",
    "DeadLetter",
    "ReplayResult",
    "Replayer",
    "count",
    "directory",
    "replay_config",
    "scan",
    "secrets_from_env",
]

#: The ``fastbuf agent`` flags a replay takes, as ``AgentConfig.from_env`` overrides.
REPLAY_OPTIONS = ("endpoint", "headers", "compression", "timeout", "dataset", "home")

# A replay is run by someone waiting at a terminal: a failing endpoint is reported after
# a few retries, not after the agent's minute.
REPLAY_POLICY = RetryPolicy(max_elapsed_s=15.0, breaker_threshold=3)


def directory(home: Path) -> Path:
    """``<home>/dead-letter``."""
    return home / paths.DEAD_LETTER_DIR


def count(home: Path) -> int:
    """How many dead letters ``home`` holds (readable or not)."""
    return deadletter_files.count(directory(home))


def scan(home: Path) -> tuple[list[DeadLetter], list[Damaged]]:
    """The dead letters of ``home``, oldest first, and the sidecars that cannot be read.
    Raises ``OSError`` when the directory exists but cannot be listed."""
    return deadletter_files.scan(directory(home))


def replay_config(
    overrides: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """The configuration a replay sends with: the environment, as the agent reads it, and
    the ``fastbuf agent`` flags in ``REPLAY_OPTIONS`` (``timeout`` in seconds). Raises
    ``ConfigError``."""
    unknown = set(overrides) - set(REPLAY_OPTIONS)
    if unknown:
        raise ConfigError(f"not a replay option: {', '.join(sorted(unknown))}")
    return AgentConfig.from_env(os.environ if environ is None else environ, overrides)


def secrets_from_env(home: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The credentials the current configuration holds, to keep out of what is shown; none
    when it does not parse (then nothing could have been sent with them either)."""
    try:
        config = replay_config({"home": home}, environ)
    except ConfigError:
        return []
    return [s for s in config.secrets() if len(s) >= 4]


@dataclass(frozen=True)
class ReplayResult:
    """What one replay did: ``sent`` (accepted, removed) or ``failed`` (kept)."""

    letter: DeadLetter
    outcome: Literal["sent", "failed"]
    #: The endpoint's HTTP status; None when no answer came.
    http_status: int | None
    message: str
    #: Records the endpoint rejected in a partial success.
    rejected: int = 0


class Replayer:
    """Sends dead letters of ``config.home`` again, one at a time, while it holds the
    directory's lock::

        with Replayer(config) as replayer:
            letters, damaged = replayer.scan()
            for letter in letters:
                result = replayer.send(letter)
    """

    def __init__(self, config: AgentConfig, policy: RetryPolicy = REPLAY_POLICY) -> None:
        self.config = config
        self.directory = directory(config.home)
        self._exporter = OTLPExporter(config, policy, dead_letter=False)
        self._secrets = [s for s in config.secrets() if len(s) >= 4]
        self._lock_fd: int | None = None

    def __enter__(self) -> Replayer:
        try:
            self._lock_fd = _lock(self.directory)
        except BaseException:
            self._exporter.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scan(self) -> tuple[list[DeadLetter], list[Damaged]]:
        """The dead letters as they are now (under the lock: none is being replayed)."""
        return deadletter_files.scan(self.directory)

    def send(self, letter: DeadLetter) -> ReplayResult:
        """Send ``letter`` to the current endpoint of its signal; removed when accepted,
        kept with its sidecar updated when not. Raises :class:`DamagedFile` when its
        payload cannot be read (it is then left as it is)."""
        if self._lock_fd is None:
            raise RuntimeError("Replayer.send outside its with block")
        if self.config.endpoint(letter.signal) is None:
            message = f"no OTLP endpoint is configured for {letter.signal}"
            return self._failed(letter, None, message, b"")
        payload = deadletter_files.read_payload(letter.directory, letter.id)
        status: int | None = None
        rejected = 0
        messages: list[str] = []
        for dataset, part in self._by_dataset(letter.signal, payload):
            result = self._exporter.export(letter.signal, part, dataset)
            if not result.ok:
                return self._failed(letter, result.http_status, result.message, result.body)
            status = result.http_status
            rejected += result.rejected
            messages += [result.message] if result.message else []
        deadletter_files.remove(letter)
        return ReplayResult(letter, "sent", status, "; ".join(messages), rejected)

    def _by_dataset(self, signal: Signal, payload: bytes) -> list[tuple[str | None, bytes]]:
        """The payload as the requests the current dataset routes make of it: itself, with
        the dataset of its resources (one, as the agent built it), or one request per
        dataset when the routes changed since. A payload that does not parse goes as it
        is, with the configured headers."""
        routes = self.config.datasets
        if routes is None:
            return [(None, payload)]
        request = deadletter_files.parse_request(signal, payload)
        if request is None:
            return [(None, payload)]
        parts = datasets.split_request(signal, request, routes)
        if len(parts) == 1:
            return [(parts[0][0], payload)]
        return [(dataset, part.SerializeToString()) for dataset, part in parts]

    def _failed(
        self, letter: DeadLetter, status: int | None, message: str, body: bytes
    ) -> ReplayResult:
        try:
            deadletter_files.record_failure(letter, status, message, body, self._secrets)
        except (OSError, DamagedFile) as exc:
            # It stays a dead letter either way; only its last status is not kept.
            message = f"{message}; its sidecar was not updated ({exc})"
        return ReplayResult(letter, "failed", status, message)

    def close(self) -> None:
        """Close the exporter's connections and let the next replay run."""
        self._exporter.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None


def _lock(path: Path) -> int:
    """Wait for, then hold, the lock of the dead-letter directory ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd
