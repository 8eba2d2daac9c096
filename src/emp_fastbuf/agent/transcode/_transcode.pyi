from collections.abc import Iterable
from typing import Any, TypeVar

from typing_extensions import disjoint_base

from emp_fastbuf.agent.otlp.metrics import MetricPoint
from emp_fastbuf.records import LaneChunk

_Chunk = tuple[bytes, Iterable[bytes]] | LaneChunk
_Raw = TypeVar("_Raw", bytes, bytearray, memoryview)
_Row = tuple[Any, ...]

DEFAULT_MAX_BYTES: int

@disjoint_base
class Redactor:
    def __init__(
        self,
        words: list[str] | tuple[str, ...] = ...,
        globs: list[str] | tuple[str, ...] = ...,
        keep: list[str] | tuple[str, ...] = ...,
    ) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def key_redacted(self, key: str) -> bool: ...
    def text(self, value: str, headers: bool = False) -> str: ...
    def attributes(self, attrs: dict[str, Any]) -> dict[str, Any]: ...

def logs_request(
    chunks: Iterable[_Chunk], observed_time_unix_nano: int, redactor: Redactor | None = None
) -> tuple[bytes, int, int]: ...
def logs_requests(
    chunks: Iterable[_Chunk],
    observed_time_unix_nano: int,
    max_bytes: int = ...,
    redactor: Redactor | None = None,
) -> tuple[list[bytes], int, int]: ...
def spans_request(
    chunks: Iterable[_Chunk], redactor: Redactor | None = None
) -> tuple[bytes, int, int]: ...
def spans_requests(
    chunks: Iterable[_Chunk], max_bytes: int = ..., redactor: Redactor | None = None
) -> tuple[list[bytes], int, int]: ...
def store_rows(
    records: Iterable[_Raw], redactor: Redactor | None = None
) -> tuple[list[_Row], list[_Row], list[_Row], list[_Row], list[_Raw]]: ...
def metric_points(
    records: Iterable[bytes], redactor: Redactor | None = None
) -> tuple[list[MetricPoint], int]: ...
