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
# torch first, pinned, so that nothing later pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[llm]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[llm,test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[llm,test,bench]'
	touch $@

ST := $(VENV)/bin/softmax-theory

demo: $(VENV)/.installed
	rm -rf $(RESULTS)/theory
	mkdir -p $(RESULTS)/theory
	$(ST) check --json $(RESULTS)/theory/check.json | tee $(RESULTS)/theory/check.txt
	$(ST) sweep --env contextual --algos pg,npg,grpo --lrs 0.1,0.5,2 --steps 200 --seeds 2 \
		--out $(RESULTS)/theory/sweep | tee $(RESULTS)/theory/sweep.txt
	$(ST) simulate --env contextual --algo grpo --lr 0.5 --steps 300 --cov-table 0 \
		--out $(RESULTS)/theory/grpo_run | tee $(RESULTS)/theory/grpo_run.txt
	$(ST) fit $(RESULTS)/theory/grpo_run --out $(RESULTS)/theory/law | tee $(RESULTS)/theory/law.txt

test: $(VENV)/.installed-test
	$(PY) -m pytest

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_estimators.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_token_stats.py --out docs/benchmarks.md

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check softmax_theory llm_bridge tests benchmarks scripts
	$(VENV)/bin/ruff format --check softmax_theory llm_bridge tests benchmarks scripts

clean:
	rm -rf $(VENV) $(RESULTS)
