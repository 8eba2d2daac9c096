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


def ext(name: str) -> Extension:
    return Extension(
        f"emp_fastbuf.{name}",
        [f"src/emp_fastbuf/{name}.pyx"],
        include_dirs=["src/emp_fastbuf"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=libraries,
        define_macros=macros,
        depends=glob.glob("src/emp_fastbuf/*.h") + glob.glob("src/emp_fastbuf/*.pxd"),
    )


setup(
    ext_modules=cythonize(
        [ext(os.path.basename(p)[:-4]) for p in sorted(glob.glob("src/emp_fastbuf/_*.pyx"))],
        compiler_directives=directives,
        include_path=["src"],
    ),
)
