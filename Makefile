# bitnas: `make demo` and `make test` work from a fresh clone with only Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist): one per core of the 2-core reference machine; each test file stays in
# one process (its module fixtures, e.g. a tiny study, are built once). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadfile
# The C++ inference engine is compiled by the package build; its sources re-trigger the install.
ENGINE := setup.py $(wildcard bitnas/deploy/csrc/*.cc bitnas/deploy/csrc/*.h bitnas/binary/csrc/*.cc bitnas/binary/csrc/*.h)

.PHONY: demo test test-quick install clean bench

$(STAMP): pyproject.toml $(ENGINE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bitnas demo

test: $(STAMP)
	$(PY) -m pytest $(XDIST)

test-quick: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache build bitnas/deploy/_engine*.so bitnas/binary/_fused*.so
