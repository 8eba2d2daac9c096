"""The store sink: a batch's rows of the stored signals into the embedded SQLite store.

One spool destination, ``store``. Until the store takes a file it stays in the spool: a
write that fails (another process holds the write lock, a full disk...) is tried again
after a growing pause (``Store.retry_in``); a damaged store file is moved aside and a new
store started. Retention runs every ``RETENTION_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from emp_fastbuf import paths
from emp_fastbuf.agent.batch import Batch
from emp_fastbuf.agent.config import SIGNALS, AgentConfig, Signal
from emp_fastbuf.agent.redact import RedactRules
from emp_fastbuf.agent.sinks import Delivery
from emp_fastbuf.errors import StoreDamaged, StoreError
from emp_fastbuf.store import Store

log = logging.getLogger("emp_fastbuf.agent")

RETENTION_INTERVAL_S = 60.0


class StoreSink:
    """Ingests the rows of ``signals`` (those with no OTLP endpoint, or all of them with
    ``--local-copy``) into ``store``."""

    name = "store"
    destinations: tuple[str, ...] = ("store",)

    def __init__(
        self,
        store: Store,
        signals: Sequence[Signal] = SIGNALS,
        redaction: RedactRules | None = None,
    ) -> None:
        self.store = store
        self.signals = tuple(signals)
        # Secrets are replaced as the rows are built; its counts are this sink's.
        self.redactor = (redaction or RedactRules()).redactor()
        self.next_retention = time.monotonic() + RETENTION_INTERVAL_S

    @classmethod
    def for_agent(cls, config: AgentConfig) -> StoreSink:
        """The agent's store under its home, for ``config.stored_signals()``; a damaged
        file is moved aside at opening, not fatal."""
        store = Store(
            paths.store_path(config.home),
            retention_s=config.store_retention_s,
            max_bytes=config.store_max_bytes,
            recover=True,
        )
        return cls(store, config.stored_signals(), config.redaction)

    def retry_in(self) -> float:
        """Seconds left of the pause after a failed write (0.0 when the last one worked)."""
        return self.store.retry_in()

    def deliver(self, batch: Batch) -> Delivery:
        """Ingest the batch's rows in one transaction; ``later`` while the store fails."""
        failed_before = self.store.write_failures
        rows, corrupt = batch.store_rows(self.signals, self.redactor)
        try:
            stored = self.store.ingest_rows(rows)
        except StoreDamaged:
            try:
                self.store.quarantine()  # logs the one ERROR line
            except StoreError as exc:
                if self.store.write_failures == 1:
                    log.error("%s", exc)
            return Delivery(later=True)
        except StoreError as exc:
            if self.store.write_failures == 1:
                log.warning("%s; retrying, the spool keeps the records meanwhile", exc)
            return Delivery(later=True)
        if failed_before:
            log.info("the store takes records again (after %d failed writes)", failed_before)
        return Delivery(("store",), taken=True, records=stored, corrupt=corrupt)

    def holds(self, file_id: str) -> bool:
        """Never: a stored file is done at once."""
        return False

    def tick(self, stopping: bool) -> list[tuple[str, str]]:
        """Enforce retention (age and size) every ``RETENTION_INTERVAL_S``."""
        if time.monotonic() >= self.next_retention:
            self.next_retention = time.monotonic() + RETENTION_INTERVAL_S
            try:
                self.store.enforce(time.time_ns())
            except Exception as exc:  # retention must never stop delivery
                log.warning("store retention failed: %s", exc)
        return []

    def status(self) -> dict[str, Any]:
        """Times clamped to 2262, the write failures in a row (0: writing works) and
        what redaction replaced (null when it is off)."""
        return {
            "clamped_times": self.store.clamped_times,
            "write_failures": self.store.write_failures,
            "redacted": None if self.redactor is None else self.redactor.counts(),
        }

    def close(self) -> None:
        """Close the store."""
        self.store.close()
