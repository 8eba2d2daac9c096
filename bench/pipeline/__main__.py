"""``python -m bench.pipeline breakdown [BATCHES] [gzip|zstd]``: the export path's stage
table; ``python -m bench.pipeline build-store [RECORDS]``: the query store, built ahead of a
run."""

from __future__ import annotations

import sys

from bench.pipeline.breakdown import breakdown, breakdown_markdown
from bench.pipeline.query import STORE_RECORDS, ensure_query_store


def main(argv: list[str]) -> int:
    """Run one command; 2 with the usage for anything else."""
    if argv[:1] == ["breakdown"]:
        batches = int(argv[1]) if len(argv) > 1 else 20
        compression = argv[2] if len(argv) > 2 else "gzip"
        print(breakdown_markdown(breakdown(batches, compression), compression))
        return 0
    if argv[:1] == ["build-store"]:
        records = int(argv[1]) if len(argv) > 1 else STORE_RECORDS
        home, how = ensure_query_store(records)
        print(f"{home}: {how}")
        return 0
    print("usage: python -m bench.pipeline breakdown [BATCHES] [gzip|zstd]")
    print("       python -m bench.pipeline build-store [RECORDS]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
