"""The receiver's settings: where it listens, its token, its body limit.

* ``--otlp-listen HOST:PORT`` / ``EMP_FASTBUF_OTLP_LISTEN``: OTLP/HTTP, default
  ``127.0.0.1:4318`` (off for an agent a worker spawned: the machine's collector is the
  agent one runs); ``off`` disables it, port 0 picks a free port.
* ``--otlp-grpc-listen HOST:PORT`` / ``EMP_FASTBUF_OTLP_GRPC_LISTEN``: OTLP/gRPC (the grpc
  extra), default ``127.0.0.1:4317`` where grpcio is installed, else off.
* ``EMP_FASTBUF_RECEIVER_TOKEN``: the bearer token senders must present. Required for a
  bind address that is not loopback (the agent refuses to start without it).
* ``EMP_FASTBUF_RECEIVER_MAX_BYTES``: the body limit after decompression, default 16 MiB.
* ``EMP_FASTBUF_RECEIVER_TIMEOUT``: seconds one request may take, and a kept-alive
  connection may sit idle, before it is cut off (slow-loris), default 30.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from emp_fastbuf.agent.config import ConfigError, parse_size

__all__ = ["DEFAULT_GRPC_LISTEN", "DEFAULT_LISTEN", "DEFAULT_MAX_BYTES", "ReceiverSettings"]

DEFAULT_LISTEN = "127.0.0.1:4318"
DEFAULT_GRPC_LISTEN = "127.0.0.1:4317"
DEFAULT_MAX_BYTES = 16 << 20
DEFAULT_TIMEOUT_S = 30.0
_MIN_MAX_BYTES = 1 << 10


def parse_listen(text: str, source: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:4318`` for IPv6) -> (host, port); ``off`` -> None."""
    value = text.strip()
    if value.lower() == "off":
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{source}: {value!r} is not HOST:PORT or off")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{source}: port {port} is out of range (0-65535; 0 picks a free one)")
    if any(c.isspace() or c in "/[]@" for c in host):
        raise ConfigError(f"{source}: {host!r} is not a host name or address")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port`` as status shows it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ReceiverSettings:
    http: tuple[str, int] | None
    grpc: tuple[str, int] | None
    token: str | None
    max_bytes: int
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:  # never the token
        return (
            f"ReceiverSettings(http={self.http!r}, grpc={self.grpc!r}, "
            f"token={'set' if self.token else None}, max_bytes={self.max_bytes})"
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        listen: str | None = None,
        grpc_listen: str | None = None,
        spawned: bool = False,
    ) -> ReceiverSettings:
        """Flags first, then the variables, then the defaults. Raises ``ConfigError``."""

        def pick(
            flag: str | None, flag_name: str, var: str, default: str
        ) -> tuple[str, int] | None:
            if flag is not None:
                return parse_listen(flag, flag_name)
            value = env.get(var, "").strip()
            if value:
                return parse_listen(value, var)
            return None if spawned else parse_listen(default, "the default")

        http = pick(listen, "--otlp-listen", "EMP_FASTBUF_OTLP_LISTEN", DEFAULT_LISTEN)
        grpc_default = DEFAULT_GRPC_LISTEN if importlib.util.find_spec("grpc") else "off"
        grpc = pick(grpc_listen, "--otlp-grpc-listen", "EMP_FASTBUF_OTLP_GRPC_LISTEN", grpc_default)
        if grpc is not None and importlib.util.find_spec("grpc") is None:
            raise ConfigError(
                "the OTLP/gRPC receiver needs grpcio: pip install 'emp-fastbuf[grpc]'"
            )
        token = env.get("EMP_FASTBUF_RECEIVER_TOKEN") or None
        if token is not None and (
            token != token.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token)
        ):
            raise ConfigError("EMP_FASTBUF_RECEIVER_TOKEN: must be printable ASCII without spaces")
        for bound, name in ((http, "--otlp-listen"), (grpc, "--otlp-grpc-listen")):
            if bound is not None and not is_loopback(bound[0]) and token is None:
                raise ConfigError(
                    f"{name}: {host_port(*bound)} is not a loopback address: anyone who "
                    "reaches it could send telemetry; set EMP_FASTBUF_RECEIVER_TOKEN (senders "
                    "then send 'Authorization: Bearer <token>') or bind 127.0.0.1"
                )
        max_bytes = DEFAULT_MAX_BYTES
        text = env.get("EMP_FASTBUF_RECEIVER_MAX_BYTES", "").strip()
        if text:
            max_bytes = parse_size(text, "EMP_FASTBUF_RECEIVER_MAX_BYTES")
            if max_bytes < _MIN_MAX_BYTES:
                raise ConfigError("EMP_FASTBUF_RECEIVER_MAX_BYTES: at least 1K")
        timeout_s = DEFAULT_TIMEOUT_S
        text = env.get("EMP_FASTBUF_RECEIVER_TIMEOUT", "").strip()
        if text:
            try:
                timeout_s = float(text)
            except ValueError:
                timeout_s = -1.0
            if not 0.1 <= timeout_s <= 3600:
                raise ConfigError(
                    f"EMP_FASTBUF_RECEIVER_TIMEOUT: {text!r} is not a number of seconds "
                    "from 0.1 to 3600"
                )
        return cls(http=http, grpc=grpc, token=token, max_bytes=max_bytes, timeout_s=timeout_s)
