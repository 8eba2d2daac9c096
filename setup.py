"""Build the native modules.

Switches (environment variables, read at build time):
- EMP_FASTBUF_DEBUG=1: -O0 -g and Cython line tracing.
- EMP_FASTBUF_SANITIZE=1: AddressSanitizer and UBSan (for a CI job).
"""

import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("EMP_FASTBUF_DEBUG") == "1"
SANITIZE = os.environ.get("EMP_FASTBUF_SANITIZE") == "1"

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
compile_args += ["-std=c11", "-fno-strict-aliasing", "-Wno-unused-function"]
link_args: list[str] = []
libraries: list[str] = []
if sys.platform.startswith("linux"):
    libraries.append("rt")  # shm_open on older glibc
if SANITIZE:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]

macros = [("CYTHON_TRACE", "1")] if DEBUG else []
directives = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "linetrace": DEBUG,
}


# One extension per stage that needs native code: the ring, the producer's encoder and the
# agent's bulk transcoder. Headers sit next to the module that owns them; the ring's are
# shared with the encoder, which cimports the ring.
PYX = sorted(glob.glob("src/emp_fastbuf/**/_*.pyx", recursive=True))
HEADER_DIRS = sorted({os.path.dirname(p) for p in glob.glob("src/emp_fastbuf/**/*.h", recursive=True)})
DEPENDS = [
    p
    for pattern in ("*.h", "*.pxd", "*.pxi")
    for p in glob.glob(f"src/emp_fastbuf/**/{pattern}", recursive=True)
]


def ext(path: str) -> Extension:
    name = path[len("src/") : -len(".pyx")].replace("/", ".")
    return Extension(
        name,
        [path],
        include_dirs=HEADER_DIRS,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=libraries,
        define_macros=macros,
        depends=DEPENDS,
    )


setup(
    ext_modules=cythonize(
        [ext(p) for p in PYX],
        compiler_directives=directives,
        include_path=["src"],
    ),
)
