"""The vLLM backend: the sampler's log-probs in ``Rollouts``, the weight sync, and — where vLLM
is installed (``make vllm`` builds ``.venv-vllm``; ``make vllm-test`` runs this file there) — a
real engine on this machine: its log-probs equal the trainer's log π at the current weights at
every step, and it draws the same token distribution as the ``hf`` backend.

The real-engine tests are ``slow`` (building the engine takes ~30 s on two cores); they share
one engine per module."""

import copy
import dataclasses
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from llm_bridge.forward import response_entropy_logp, stream_entropy_logp
from llm_bridge.models import load_model
from llm_bridge.rollout import (
    HFBackend,
    Rollouts,
    VLLMBackend,
    concat_rollouts,
    finish,
    sampled_logprobs,
    stop_token_ids,
)
from llm_bridge.vllm_engine import (
    CPU_ENV,
    IN_PROCESS_ENV,
    engine_environment,
    policy_weights,
    weights_version,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed here: `make vllm-test` runs these in .venv-vllm"
)
# fp32 engine and trainer: the same weights give the same log-probs up to kernel rounding
LOGP_TOL = 1e-4
# false-alarm rate of the χ² homogeneity test: two samplers of one distribution fail it this often
CHI2_ALPHA = 1e-3
PROMPTS = ["123+456=", "001+002=", "250+250="]


class FakeEngine:
    """vLLM's ``generate`` and ``collective_rpc`` interface: every completion is ``tokens`` with
    the log-probs ``logps``; ``collective_rpc`` records the weights it is given to reload."""

    def __init__(self, tokens, logps):
        self.tokens, self.logps, self.loads, self.resets = tokens, logps, [], 0
        self.applied = []

    def generate(self, prompts, params, use_tqdm=False):
        lp = [{t: SimpleNamespace(logprob=v)} for t, v in zip(self.tokens, self.logps, strict=True)]
        done = SimpleNamespace(token_ids=self.tokens, logprobs=lp)
        return [SimpleNamespace(outputs=[done] * params.n) for _ in prompts]

    def collective_rpc(self, method, kwargs):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"]
        self.loads.extend(name for name, _ in kwargs["weights_iterator"])
        return [None]

    def apply_model(self, func):
        self.applied.append(func.__name__)
        return []

    def reset_prefix_cache(self):
        self.resets += 1


def test_sampler_logp_is_zero_after_the_stop_and_follows_subset_and_concat():
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=2, decode=lambda ids, **_: "x" * len(ids))
    prompt = torch.tensor([[1, 5], [1, 6]])
    response = torch.tensor([[5, 2, 7, 7], [6, 6, 6, 6]])  # row 0 stops at position 1
    logp = torch.tensor([[-0.5, -0.25, -0.125, -4.0], [-1.0, -2.0, -3.0, -4.0]])
    roll = finish(tok, prompt, torch.ones_like(prompt), response, (2,), logp)
    assert roll.sampler_logp.tolist() == [[-0.5, -0.25, 0.0, 0.0], [-1.0, -2.0, -3.0, -4.0]]
    assert roll.subset([1]).sampler_logp.tolist() == [[-1.0, -2.0, -3.0, -4.0]]
    both = concat_rollouts([roll, roll.subset([0])], pad_token_id=0)
    assert both.sampler_logp.shape == (3, 4) and both.sampler_logp[2, 1] == -0.25
    unknown = dataclasses.replace(roll, sampler_logp=None)
    assert concat_rollouts([roll, unknown], pad_token_id=0).sampler_logp is None
    trl = Rollouts.from_ids(prompt, torch.ones_like(prompt), response, roll.response_mask, logp)
    assert trl.sampler_logp.tolist() == roll.sampler_logp.tolist()
    assert Rollouts.from_ids(prompt, prompt, response, roll.response_mask).sampler_logp is None


def test_sampled_logprobs_reads_the_sampled_tokens_entry():
    per_position = [{4: SimpleNamespace(logprob=-0.5)}, {9: SimpleNamespace(logprob=-1.5)}]
    completion = SimpleNamespace(token_ids=[4, 9], logprobs=per_position)
    assert sampled_logprobs(completion, [4, 9], 4) == [-0.5, -1.5, 0.0, 0.0]
    assert sampled_logprobs(SimpleNamespace(token_ids=[4], logprobs=None), [4], 2) is None


def test_weights_load_once_per_change_and_come_from_the_current_policy(tiny_model):
    """generate loads the policy into the engine before sampling, again only after the weights
    changed (an optimiser step, or load_state_dict), and the tied output embedding is not sent
    twice; the sampler's log-probs arrive in the rollouts."""
    model, tok = load_model(tiny_model)
    engine = FakeEngine([5, 6, tok.eos_token_id], [-0.5, -0.25, -0.125])
    backend = VLLMBackend(
        "unused", tok, engine=engine, sampling_params_cls=SimpleNamespace, policy=model
    )
    roll = backend.generate(PROMPTS[:1], 2, 4, 1.0, torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    assert engine.loads == names and engine.resets == 1 and "lm_head.weight" not in names
    assert engine.applied == ["repack_tied_head"]  # the tiny model ties its head
    assert roll.sampler_logp.tolist() == [[-0.5, -0.25, -0.125, 0.0]] * 2
    backend.generate(PROMPTS[:1], 2, 4, 1.0, torch.Generator())
    assert engine.resets == 1  # unchanged weights: no second load
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    model(torch.tensor([[1, 5, 6]])).logits.sum().backward()
    before = weights_version(model)
    opt.step()
    assert weights_version(model) != before
    backend.generate(PROMPTS[:1], 2, 4, 1.0, torch.Generator())
    assert engine.resets == 2
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    backend.generate(PROMPTS[:1], 2, 4, 1.0, torch.Generator())
    assert engine.resets == 3
    sent = dict(policy_weights(model))
    assert torch.equal(sent["model.embed_tokens.weight"], model.lm_head.weight)


def test_engine_environment_is_in_process_and_small_on_cpu():
    cpu = engine_environment("cpu", threads=2)
    assert cpu == {**IN_PROCESS_ENV, **CPU_ENV, "OMP_NUM_THREADS": "2"}
    assert engine_environment("cuda") == IN_PROCESS_ENV
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


# ---- a real engine (vLLM installed) ----


@pytest.fixture(scope="module")
def engine_and_policy(tiny_model):
    """One vLLM engine for the module, colocated with a policy loaded from the same folder."""
    from llm_bridge.vllm_engine import EngineSettings

    model, tok = load_model(tiny_model)
    backend = VLLMBackend(
        str(tiny_model),
        tok,
        stop_ids=stop_token_ids(model.generation_config, tok),
        policy=model,
        settings=EngineSettings(max_model_len=64),
    )
    return backend, model, tok


@needs_vllm
@pytest.mark.slow
def test_vllm_logprobs_equal_the_policy_at_every_step(engine_and_policy):
    """After big Adam steps the engine samples from the weights the trainer holds: vLLM's
    log-prob of each sampled token equals log softmax(z/T) of the trainer's model at the current
    weights within fp32 tolerance, at every step; the initial weights' log-probs (what the engine
    held before weight sync) are far from them, so a stale engine fails this test."""
    backend, model, _ = engine_and_policy
    initial = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    temperature, gen = 0.7, torch.Generator().manual_seed(0)
    for step in range(4):
        model.eval()
        roll = backend.generate(PROMPTS, 4, 8, temperature, gen)
        mask = roll.response_mask.bool()
        with torch.no_grad():
            policy_logp = stream_entropy_logp(model, roll, None, temperature)[1]
            stale_logp = stream_entropy_logp(initial, roll, None, temperature)[1]
        diff = (roll.sampler_logp - policy_logp)[mask].abs().max().item()
        assert diff <= LOGP_TOL, f"step {step}: |Δ log π| = {diff:.2e}"
        assert (roll.sampler_logp[~mask] == 0).all()
        if step > 0:
            assert (roll.sampler_logp - stale_logp)[mask].abs().max() > 0.1
        # a few large steps raising log π of this step's samples: a policy far from the last one
        model.train()
        for _ in range(3):
            opt.zero_grad()
            logp = response_entropy_logp(model, roll, slice(None), temperature)[1]
            (-(logp * roll.response_mask).sum()).backward()
            opt.step()


def response_counts(roll: Rollouts) -> dict[tuple[int, ...], int]:
    """How often each whole response (its tokens up to and including the stop) was drawn."""
    out: dict[tuple[int, ...], int] = {}
    for ids, keep in zip(roll.response_ids.tolist(), roll.response_mask.tolist(), strict=True):
        key = tuple(t for t, k in zip(ids, keep, strict=True) if k)
        out[key] = out.get(key, 0) + 1
    return out


def homogeneity_p(a: dict, b: dict, min_count: int = 5) -> float:
    """χ² homogeneity test of two samples of responses; responses rarer than ``min_count`` in
    both samples together are pooled into one cell."""
    keys = sorted(set(a) | set(b))
    common = [k for k in keys if a.get(k, 0) + b.get(k, 0) >= min_count]
    rare = [k for k in keys if k not in common]
    table = [[a.get(k, 0) for k in common], [b.get(k, 0) for k in common]]
    if rare:
        table[0].append(sum(a.get(k, 0) for k in rare))
        table[1].append(sum(b.get(k, 0) for k in rare))
    return float(stats.chi2_contingency(np.array(table))[1])


@needs_vllm
@pytest.mark.slow
def test_vllm_and_hf_draw_the_same_responses(engine_and_policy):
    """The two backends sample one distribution: softmax(z/T), the same stop tokens, the same
    budget and padding. Whole responses of 3 tokens from each backend pass a χ² homogeneity test
    at CHI2_ALPHA, with total variation under 0.08; the same test tells T = 1 from T = 0.6."""
    backend, model, tok = engine_and_policy
    backend.sync_weights()
    hf = HFBackend(model, tok)
    model.eval()
    n, budget = 1500, 3
    rolls = {}
    for name, b, t in [("vllm", backend, 1.0), ("hf", hf, 1.0), ("hf_cold", hf, 0.6)]:
        rolls[name] = b.generate(PROMPTS[:1], n, budget, t, torch.Generator().manual_seed(1))
    v, h = rolls["vllm"], rolls["hf"]
    assert v.response_ids.shape == h.response_ids.shape == (n, budget)
    stops = torch.tensor(backend.stop_ids)
    for roll in (v, h):  # the mask ends at the first stop token; padding after it
        ids, mask = roll.response_ids, roll.response_mask.bool()
        assert (ids[~mask] == tok.pad_token_id).all()
        assert torch.equal(roll.truncated, ~torch.isin(ids, stops).any(dim=1))
    counts_v, counts_h = response_counts(v), response_counts(h)
    assert homogeneity_p(counts_v, counts_h) > CHI2_ALPHA
    keys = set(counts_v) | set(counts_h)
    tv = 0.5 * sum(abs(counts_v.get(k, 0) - counts_h.get(k, 0)) for k in keys) / n
    assert tv < 0.08, f"total variation {tv:.3f}"
    assert homogeneity_p(counts_v, response_counts(rolls["hf_cold"])) < 1e-6


@needs_vllm
@pytest.mark.slow
def test_without_stop_tokens_vllm_runs_to_the_budget_as_hf_does(engine_and_policy):
    """No stop tokens: both backends fill the whole budget (vLLM's own stop at the tokenizer's
    EOS is off)."""
    backend, model, tok = engine_and_policy
    hf = HFBackend(model, tok)
    stops = backend.stop_ids
    try:
        backend.stop_ids = hf.stop_ids = ()
        for b in (backend, hf):
            roll = b.generate(PROMPTS, 4, 12, 1.0, torch.Generator().manual_seed(2))
            assert roll.response_mask.all() and roll.truncated.all()
    finally:
        backend.stop_ids = stops


@needs_vllm
@pytest.mark.slow
def test_prompts_prefilled_over_several_engine_steps_sample(engine_and_policy):
    """256 prompts of 30 tokens (7,680 prefill tokens, more than one engine step takes) with
    their per-request seeds: on the CPU build, a split prefill makes vLLM rewind a CPU generator,
    which fails ("CPU Generator does not use offset"); prompts are prefilled whole instead."""
    backend, _, _ = engine_and_policy
    prompts = ["123+456=123+456=123+456=123+45"] * 32
    roll = backend.generate(prompts, 8, 4, 1.0, torch.Generator().manual_seed(3))
    assert roll.response_ids.shape == (256, 4)


def _engine_cfg(tiny_model, engine, **kw):
    from llm_bridge import TrainConfig

    base = dict(
        model=str(tiny_model),
        steps=2,
        prompts_per_step=2,
        group_size=4,
        val_every=0,
        checkpoint_every=0,
        token_steps_every=1,
        lr=5e-3,
        backend="vllm",
        engine=engine,
    )
    return TrainConfig(**{**base, **kw})


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_a_run_with_the_vllm_backend_logs_the_mismatch(tiny_model, tmp_path, engine):
    """Both engines with vLLM sampling: every step logs the sampler–trainer mismatch, small in
    fp32 on the CPU build (the engine holds the current weights), and the token files keep the
    sampler's log-probs beside the trainer's. TRL's colocate mode runs here through our
    in-place weight reload (TRL's own sync fails on the CPU build's packed layers)."""
    if engine == "trl":
        pytest.importorskip("trl")
    from llm_bridge import train
    from softmax_theory.policy import PolicyLossConfig
    from softmax_theory.runlog import read_run

    cfg = _engine_cfg(tiny_model, engine, policy_loss=PolicyLossConfig(rollout_is="token"))
    out = train(cfg, tmp_path / engine)
    steps = read_run(out).steps
    assert [s["step"] for s in steps] == [0, 1]
    for rec in steps:
        assert np.isfinite(rec["rollout/logp_diff_mean"])
        # the engine samples in the trainer's fp32 only in our backend (TRL builds it in bf16)
        bound = LOGP_TOL if engine == "ours" else 0.1
        assert rec["rollout/logp_diff_mean"] <= bound, rec["rollout/logp_diff_mean"]
        assert 0.0 <= rec["actor/is_clip_frac"] <= 1.0
    tokens = np.load(out / "tokens" / "step_000001.npz")
    assert tokens["sampler_logp"].shape == tokens["logp"].shape
    assert np.abs(tokens["sampler_logp"] - tokens["logp"]).max() <= (
        1e-3 if engine == "ours" else 0.5
    )
