"""Where records go when there is no local store: the OTLP endpoint that the environment
configures (the variables the agent reads, docs/configuration.md) or that an agent's
status file in the home records. The query commands' "no store" error names it, without
credentials or query string, and says how to keep a local copy."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emp_fastbuf.agent.status import shown_url

# The agent's endpoint variables, in its order of precedence: the base URL (or Dash0's
# when it is unset), then one per signal.
_BASE_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "DASH0_ENDPOINT")
_SIGNAL_VARS = tuple(f"OTEL_EXPORTER_OTLP_{s}_ENDPOINT" for s in ("TRACES", "METRICS", "LOGS"))
LOCAL_COPY_ENV = "EMP_FASTBUF_LOCAL_COPY"
_TRUE = frozenset({"1", "true", "yes", "on"})
#: How to keep a local copy while exporting (the agent's flag and its variable).
LOCAL_COPY_HINT = (
    f"to keep a local copy too, run the agent as `fastbuf agent --local-copy` or with"
    f" {LOCAL_COPY_ENV}=1"
)


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None  # empty counts as unset, as the agent reads it


def env_endpoints(environ: Mapping[str, str]) -> list[str]:
    """The endpoints an agent started with ``environ`` exports to, each with the variable
    that sets it; none when that agent keeps a local copy (``EMP_FASTBUF_LOCAL_COPY``)."""
    if (_env(environ, LOCAL_COPY_ENV) or "").lower() in _TRUE:
        return []
    names = [name for name in _SIGNAL_VARS if _env(environ, name) is not None]
    base = next((name for name in _BASE_VARS if _env(environ, name) is not None), None)
    if base is not None and len(names) < len(_SIGNAL_VARS):  # a signal goes to the base
        names.insert(0, base)
    return [f"{shown_url(_env(environ, name))} (${name})" for name in names]


def status_endpoints(home: Path) -> list[str]:
    """The endpoints that the agents whose status files are in ``home`` export to without
    keeping a local copy, each with the agent's ring."""
    found: list[str] = []
    for path in sorted(home.glob("status-*.json")):
        ring = path.name.removeprefix("status-").removesuffix(".json")
        config = _status_config(path)
        endpoints = config.get("endpoints")
        if config.get("local_copy") or not isinstance(endpoints, dict):
            continue
        urls = sorted({shown_url(u) or "" for u in endpoints.values() if isinstance(u, str) and u})
        found.extend(f"{url} (the agent of ring {ring!r})" for url in urls)
    return found


def _status_config(path: Path) -> dict[str, Any]:
    """The agent configuration a status file records (``agent.config``: its
    ``describe()``); empty when the file cannot be read or is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    agent = data.get("agent") if isinstance(data, dict) else None
    config = agent.get("config") if isinstance(agent, dict) else None
    return config if isinstance(config, dict) else {}


def no_store_message(path: Path, home: Path, environ: Mapping[str, str] | None = None) -> str:
    """The error of a query command that finds no store at ``path``: where the records go
    instead when an endpoint is configured (``environ``, by default the process's, or an
    agent's status in ``home``) and how to keep a local copy; else when the agent writes
    the store."""
    endpoints = env_endpoints(os.environ if environ is None else environ)
    endpoints += status_endpoints(home)
    if not endpoints:
        return f"no store at {path} (the agent writes it when it runs with no endpoint)"
    return (
        f"no store at {path}: records go to {', '.join(endpoints)}, and no local copy is"
        f" kept; {LOCAL_COPY_HINT}"
    )
