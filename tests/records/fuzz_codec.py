"""Coverage-guided fuzzing of the untrusted-input decoders with atheris (libFuzzer).

Run by hand (pytest does not collect this file; it needs ``pip install atheris``)::

    python tests/records/fuzz_codec.py -runs=500000
    python tests/records/fuzz_codec.py -max_total_time=600 -max_len=4096

It starts from a scratch copy of ``tests/records/corpus/records`` (libFuzzer writes new inputs
into its first corpus folder, and the committed corpus must stay as it is). A crash is any
exception other than ``CorruptRecord``, a ``CorruptRecord`` from the decoder's internal
safety net, or a decoded record that the encoder cannot encode back.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from emp_fastbuf.records import CorruptRecord, reference

SEEDS = Path(__file__).parent / "corpus" / "records"


def test_one_input(data: bytes) -> None:
    try:
        rec = reference.decode_record(data)
    except CorruptRecord as exc:
        if "internal decoder error" in str(exc):
            raise
    else:
        buf = reference.encode_record(rec)
        assert reference.encode_record(reference.decode_record(buf)) == buf
    try:
        res = reference.decode_resource(data)
    except CorruptRecord as exc:
        if "internal decoder error" in str(exc):
            raise
    else:
        # Compared as bytes: a decoded NaN never equals itself.
        blob = reference.encode_resource(res)
        assert reference.encode_resource(reference.decode_resource(blob)) == blob


def main() -> None:
    args = list(sys.argv)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-codec-"))
    if not any(a.startswith("-artifact_prefix=") for a in args[1:]):
        # Crash inputs go to the scratch folder, not the working directory.
        args.append(f"-artifact_prefix={scratch}/")
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = scratch / "corpus"
        corpus.mkdir()
        for seed in SEEDS.glob("*.bin"):
            shutil.copy(seed, corpus / seed.name)
        args.append(str(corpus))
    print(f"fuzz_codec: corpus and crash files under {scratch}", file=sys.stderr)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
