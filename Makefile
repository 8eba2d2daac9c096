# The two commands: `make demo` and `make test`. Each sets up .venv, installs what it
# needs, builds the extension and runs: `demo` the package and its dependencies only,
# `test` (and lint, stress, bench) also the extras that the tests use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
STAMP := $(VENV)/.installed-test
EXTRAS ?= test,bench,lint,gpu,grpc
# The build requirements of pyproject.toml: the editable installs below build without
# isolation, so the extension is built once, here, by `build`.
BUILD_REQUIRES := "setuptools>=77.0.3" "Cython>=3.0.8,<4"

.PHONY: all venv build demo test lint stress bench wheel clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(BASE_STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q $(BUILD_REQUIRES)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP) pyproject.toml
	$(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

# Incremental: Cython and the compiler only redo what changed.
build: $(BASE_STAMP)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m emp_fastbuf demo

test: $(STAMP) build
	$(PY) -m pytest -q -p no:cacheprovider

# The stress tests 20 times, then the soak once (EMP_FASTBUF_SOAK_S seconds, default 60;
# tests/system/test_soak.py lists its other settings).
stress: $(STAMP) build
	for i in $$(seq 1 20); do \
		echo "stress run $$i/20"; \
		$(PY) -m pytest -q -p no:cacheprovider -m stress -x --ignore=tests/system/test_soak.py || exit 1; \
	done
	$(PY) -m pytest -q -p no:cacheprovider -m stress -x -s tests/system/test_soak.py

lint: $(STAMP) build
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint src/emp_fastbuf
	$(VENV)/bin/mypy
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(PY) -m mypy.stubtest --allowlist stubtest-allowlist.txt emp_fastbuf.ring._ring emp_fastbuf.producer._codec emp_fastbuf.agent.transcode._transcode

bench: $(STAMP) build
	$(PY) -m bench.run

wheel: $(STAMP)
	$(PY) -m pip install -q build
	$(PY) -m build

clean:
	find src/emp_fastbuf \( -name '*.so' -o -name '_*.c' \) -delete
	rm -rf build dist src/*.egg-info
