# The two commands of the README: `make demo` and `make test`.
# Each builds its own virtual environment (.venv) the first time.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
LAKE   ?= ./lake
export PYSPARK_PYTHON        := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: demo test lint venv tools java bench clean

venv: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that lies on this disk; a plain `torch` would pull CUDA
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements/constraints.txt -e .
	touch $@

# what only the tests need (pytest, selenium, ruff...): not part of `make demo`
$(TESTSTAMP): $(STAMP)
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[test]'
	touch $@

java:
	@scripts/check_java.sh

# programs the tests compare against (SExtractor); installed when we may
tools:
	@scripts/install_test_tools.sh

demo: venv java
	$(VENV)/bin/desomspark demo --lake $(LAKE)

test: $(TESTSTAMP) java tools lint
	$(PY) -m pytest -q tests

# style and import order (pyproject.toml [tool.ruff]); part of `make test`
lint: $(TESTSTAMP)
	$(VENV)/bin/ruff check .

bench: venv java
	$(PY) bench/simulate.py
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) $(LAKE) .pytest_cache
