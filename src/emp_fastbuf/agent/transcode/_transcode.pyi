from collections.abc import Iterable
from typing import Any, TypeVar

from emp_fastbuf.records import LaneChunk

_Chunk = tuple[bytes, Iterable[bytes]] | LaneChunk
_Raw = TypeVar("_Raw", bytes, bytearray, memoryview)
_Row = tuple[Any, ...]

DEFAULT_MAX_BYTES: int

def logs_request(
    chunks: Iterable[_Chunk], observed_time_unix_nano: int
) -> tuple[bytes, int, int]: ...
def logs_requests(
    chunks: Iterable[_Chunk], observed_time_unix_nano: int, max_bytes: int = ...
) -> tuple[list[bytes], int, int]: ...
def spans_request(chunks: Iterable[_Chunk]) -> tuple[bytes, int, int]: ...
def spans_requests(
    chunks: Iterable[_Chunk], max_bytes: int = ...
) -> tuple[list[bytes], int, int]: ...
def store_rows(
    records: Iterable[_Raw],
) -> tuple[list[_Row], list[_Row], list[_Row], list[_Row], list[_Raw]]: ...
