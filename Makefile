# The two README commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RESULTS := results
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p $(RESULTS)
	$(VENV)/bin/softmax-theory check --json $(RESULTS)/check.json | tee $(RESULTS)/check.txt

test: $(VENV)/.installed-test
	$(PY) -m pytest

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_estimators.py --out docs/benchmarks.md

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check softmax_theory tests benchmarks
	$(VENV)/bin/ruff format --check softmax_theory tests benchmarks

clean:
	rm -rf $(VENV) $(RESULTS)
