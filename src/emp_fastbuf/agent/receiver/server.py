"""Starting and stopping the receivers of one agent; what status shows of them."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from emp_fastbuf.agent.receiver.ingest import Ingest
from emp_fastbuf.agent.receiver.settings import ReceiverSettings, host_port

if TYPE_CHECKING:
    from emp_fastbuf.agent.spool import Spool

__all__ = ["Receivers"]

log = logging.getLogger("emp_fastbuf.agent.receiver")


class Receivers:
    """The OTLP/HTTP and OTLP/gRPC receivers an agent runs. A port that is taken costs
    one warning and that receiver; the agent goes on draining its ring."""

    def __init__(self, settings: ReceiverSettings, spool: Spool, wake: threading.Event) -> None:
        self.settings = settings
        self.ingest: Ingest | None = None
        self.http: Any = None
        self.grpc: Any = None
        if settings.http is None and settings.grpc is None:
            return
        self.ingest = Ingest(spool, wake, settings.max_bytes)
        if settings.http is not None:
            from emp_fastbuf.agent.receiver.http import HTTPReceiver

            try:
                self.http = HTTPReceiver(
                    *settings.http, self.ingest, settings.token, settings.timeout_s
                )
            except OSError as exc:
                log.warning(
                    "OTLP/HTTP receiver: cannot listen on %s (%s); the agent runs without it",
                    host_port(*settings.http),
                    exc.strerror or exc,
                )
            else:
                log.info("OTLP/HTTP receiver listening on %s", self.http_listen)
        if settings.grpc is not None:
            from emp_fastbuf.agent.receiver.grpc import GRPCReceiver

            try:
                self.grpc = GRPCReceiver(*settings.grpc, self.ingest, settings.token)
            except OSError as exc:
                log.warning(
                    "OTLP/gRPC receiver: cannot listen on %s (%s); the agent runs without it",
                    host_port(*settings.grpc),
                    exc,
                )
            else:
                log.info("OTLP/gRPC receiver listening on %s", self.grpc_listen)

    @property
    def http_listen(self) -> str | None:
        return None if self.http is None else host_port(*self.http.address)

    @property
    def grpc_listen(self) -> str | None:
        return None if self.grpc is None else host_port(*self.grpc.address)

    def close(self) -> None:
        """Stop taking requests; what was answered 200 is in the spool."""
        for server in (self.http, self.grpc):
            if server is not None:
                try:
                    server.close()
                except Exception as exc:  # stopping must go on
                    log.warning("receiver did not stop cleanly: %s", exc)
        if self.ingest is not None:
            self.ingest.close()
        self.http = self.grpc = None

    def status(self) -> dict[str, Any] | None:
        if self.ingest is None:
            return None
        return {
            "max_bytes": self.settings.max_bytes,
            "token": self.settings.token is not None,
            **self.ingest.status(),
        }
