"""Dataset routing: a resource's deployment environment -> the Dash0 dataset its requests go to.

The mapping comes from ``EMP_FASTBUF_DATASETS`` (``production=prod,staging=staging,*=dev``)
or from ``fastbuf agent --dataset ENV=DATASET`` (repeatable), which replaces the variable.
A resource's environment is its ``deployment.environment.name`` attribute, else the older
``deployment.environment`` (string values, compared exactly). For the records of one
resource, highest first:

1. the route of its environment;
2. the ``*`` route, for every environment the routes do not name (and resources without one);
3. the ``Dash0-Dataset`` header the configuration already sends (``DASH0_DATASET``, the
   HEADERS variables, ``--headers``), or no header when there is none.

A dataset of ``default`` means "no header" (the token's default dataset), as everywhere.
``--dataset NAME`` (no ``=``) keeps its meaning, the one dataset for everything: alone it
turns the routing off; next to ``ENV=DATASET`` forms it is their ``*``.

Routing is per resource (per lane chunk), never per record: the agent groups a batch's
chunks by dataset (:class:`Router`) and builds one set of requests per dataset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emp_fastbuf.errors import ConfigError
from emp_fastbuf.records import LaneChunk, reference

if TYPE_CHECKING:
    from google.protobuf.message import Message

VARIABLE = "EMP_FASTBUF_DATASETS"
FLAG = "--dataset"
#: The resource attributes that name the environment, the first one present winning.
ENVIRONMENT_KEYS = ("deployment.environment.name", "deployment.environment")
#: The route of every environment the others do not name.
FALLBACK = "*"
#: The dataset that means "send no Dash0-Dataset header".
OMIT = "default"
# The spool destination of a dataset: readable for plain slugs, a digest otherwise.
_SLUG_DESTINATION = re.compile(r"[A-Za-z0-9_-]{1,56}")
# A dataset is one printable ASCII token: it goes into an HTTP header and gRPC metadata.
_DATASET = re.compile(r"[\x21-\x7e]+")
# Resource blobs remembered with their dataset; past this many the memory starts over.
_MAX_CACHED = 4096


@dataclass(frozen=True)
class DatasetRoutes:
    """The environment -> dataset mapping; ``fallback`` is the ``*`` route (None: none)."""

    routes: Mapping[str, str] = field(default_factory=dict)
    fallback: str | None = None
    #: Where the mapping came from: ``EMP_FASTBUF_DATASETS`` or ``--dataset``.
    source: str = VARIABLE

    def dataset_for(self, environment: str | None) -> str | None:
        """The dataset of records from ``environment``: its route, else the ``*`` route;
        None when neither applies (the configured ``Dash0-Dataset`` header is sent)."""
        if environment is not None:
            dataset = self.routes.get(environment)
            if dataset is not None:
                return dataset
        return self.fallback

    def targets(self) -> tuple[str, ...]:
        """Every dataset a route names, each once, in the order given."""
        found = list(dict.fromkeys(self.routes.values()))
        if self.fallback is not None and self.fallback not in found:
            found.append(self.fallback)
        return tuple(found)

    def text(self) -> str:
        """``production -> prod, staging -> staging, * -> dev``."""
        pairs = [f"{env} -> {ds}" for env, ds in self.routes.items()]
        if self.fallback is not None:
            pairs.append(f"{FALLBACK} -> {self.fallback}")
        return ", ".join(pairs)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: ``source``, ``routes`` (environment -> dataset), ``fallback``."""
        return {"source": self.source, "routes": dict(self.routes), "fallback": self.fallback}


def destination(dataset: str | None) -> str:
    """The spool destination of the requests of ``dataset`` (None: the records no route
    maps, ``export`` as without routing). A plain slug is kept readable
    (``dataset-prod``); any other dataset is named by a digest of it."""
    if dataset is None:
        return "export"
    if _SLUG_DESTINATION.fullmatch(dataset):
        return f"dataset-{dataset}"
    return "dataset_" + hashlib.sha256(dataset.encode()).hexdigest()[:16]


def environment_of(attributes: Mapping[str, object]) -> str | None:
    """The deployment environment a resource's attributes name, or None."""
    for key in ENVIRONMENT_KEYS:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


# -- parsing --------------------------------------------------------------------------------


def _shown(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value.strip())[:60]


def check_dataset(value: str, source: str) -> str:
    """A dataset slug: printable ASCII without spaces, ``,`` or ``=``; returned stripped."""
    text = value.strip()
    if not text:
        raise ConfigError(f"{source}: the dataset is empty")
    if not _DATASET.fullmatch(text) or "," in text or "=" in text:
        raise ConfigError(
            f"{source}: {_shown(text)!r} is not a dataset slug (printable ASCII without "
            "spaces, ',' or '=')"
        )
    return text


def parse_routes(text: str, source: str, into: dict[str, str] | None = None) -> dict[str, str]:
    """``ENV=DATASET,ENV2=DATASET2`` -> {environment: dataset}, added to ``into``. Each
    entry needs both sides; an environment named twice (``*`` included) is an error."""
    routes: dict[str, str] = {} if into is None else into
    for index, entry in enumerate(text.split(","), 1):
        entry = entry.strip()
        if not entry:
            raise ConfigError(
                f"{source}: entry {index} is empty (expected ENV=DATASET,ENV2=DATASET2)"
            )
        env, sep, dataset = entry.partition("=")
        env = env.strip()
        if not sep:
            raise ConfigError(f"{source}: {_shown(entry)!r} is not ENV=DATASET")
        if not env:
            raise ConfigError(f"{source}: {_shown(entry)!r} names no environment before '='")
        if not env.isprintable():
            raise ConfigError(f"{source}: the environment {_shown(env)!r} has control characters")
        if not dataset.strip():
            raise ConfigError(f"{source}: {_shown(entry)!r} names no dataset after '='")
        if env in routes:
            raise ConfigError(f"{source}: the environment {env!r} is mapped twice")
        routes[env] = check_dataset(dataset, f"{source} ({env})")
    return routes


def _routes(routes: dict[str, str], source: str) -> DatasetRoutes:
    fallback = routes.pop(FALLBACK, None)
    return DatasetRoutes(routes, fallback, source)


def resolve(env: Mapping[str, str], flag: object) -> tuple[str | None, DatasetRoutes | None]:
    """The ``--dataset`` flags (None, one string or a list of them) and
    ``EMP_FASTBUF_DATASETS`` -> (the one dataset for everything, the routes).

    ``EMP_FASTBUF_DATASETS`` is checked even when flags replace it. Flags: ``NAME`` alone
    is the one dataset (no routes); ``ENV=DATASET`` forms (a comma list in one flag too)
    are the routes, with at most one ``NAME`` as their ``*``. Raises ``ConfigError``."""
    from_env: DatasetRoutes | None = None
    text = env.get(VARIABLE)
    if text is not None and text.strip():
        from_env = _routes(parse_routes(text, VARIABLE), VARIABLE)
    if flag is None:
        return None, from_env
    values = [flag] if isinstance(flag, str) else flag
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{FLAG}: expected a string or a list of strings")
    plain = [v for v in values if "=" not in v]
    mapped = [v for v in values if "=" in v]
    if len(plain) > 1:
        raise ConfigError(
            f"{FLAG}: the one dataset is given {len(plain)} times "
            f"({', '.join(repr(_shown(v)) for v in plain)}); give NAME once, or ENV=DATASET"
        )
    name = check_dataset(plain[0], FLAG) if plain else None
    if not mapped:
        return name, None
    routes: dict[str, str] = {}
    for value in mapped:
        parse_routes(value, FLAG, routes)
    if name is not None:
        if FALLBACK in routes:
            raise ConfigError(
                f"{FLAG}: both {name!r} and '*={routes[FALLBACK]}' name the dataset of "
                "unmapped environments; give one"
            )
        routes[FALLBACK] = name
    return None, _routes(routes, FLAG)


# -- routing --------------------------------------------------------------------------------


class Router:
    """Groups lane chunks by the dataset of their resource: one decode per distinct resource
    blob (remembered across batches), one dictionary look-up per chunk after that."""

    def __init__(self, routes: DatasetRoutes) -> None:
        self.routes = routes
        self._by_meta: dict[bytes, str | None] = {}

    def dataset_of(self, meta: bytes) -> str | None:
        """The dataset of the records under resource blob ``meta`` (None: no route). A blob
        that does not decode has no environment."""
        try:
            return self._by_meta[meta]
        except KeyError:
            pass
        try:
            attributes = reference.decode_resource(meta).attributes if meta else {}
        except ValueError:
            attributes = {}
        dataset = self.routes.dataset_for(environment_of(attributes))
        if len(self._by_meta) >= _MAX_CACHED:
            self._by_meta.clear()
        self._by_meta[meta] = dataset
        return dataset

    def split(self, chunks: Iterable[LaneChunk]) -> dict[str | None, list[LaneChunk]]:
        """``chunks`` by dataset, in their order within each."""
        groups: dict[str | None, list[LaneChunk]] = {}
        for chunk in chunks:
            groups.setdefault(self.dataset_of(chunk.meta), []).append(chunk)
        return groups


_RESOURCE_FIELDS = {
    "logs": "resource_logs",
    "traces": "resource_spans",
    "metrics": "resource_metrics",
}


def split_request(
    signal: str, request: Message, routes: DatasetRoutes
) -> list[tuple[str | None, Message]]:
    """A decoded ``Export*ServiceRequest`` as one request per dataset of its resources, in
    first-seen order; the request itself when they all share one. Per resource, for the
    metrics aggregate and for dead letters sent again."""
    field_name = _RESOURCE_FIELDS[signal]
    groups: dict[str | None, list[Any]] = {}
    for item in getattr(request, field_name):
        attributes = {
            kv.key: kv.value.string_value
            for kv in item.resource.attributes
            if kv.key in ENVIRONMENT_KEYS and kv.value.WhichOneof("value") == "string_value"
        }
        groups.setdefault(routes.dataset_for(environment_of(attributes)), []).append(item)
    if len(groups) <= 1:
        return [(next(iter(groups), routes.fallback), request)]
    out: list[tuple[str | None, Message]] = []
    for dataset, items in groups.items():
        part = type(request)()
        getattr(part, field_name).extend(items)
        out.append((dataset, part))
    return out
