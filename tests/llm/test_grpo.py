"""Tasks, rollouts, the update forecast, the JVP, the trainer, resume and compare."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import softmax_theory as smt
from llm_bridge import ProbedGRPOTrainer, TrainConfig, train
from llm_bridge.cli import main
from llm_bridge.compare import compare_runs
from llm_bridge.forward import forward_tangent
from llm_bridge.models import load_model
from llm_bridge.probe import optimizer_update
from llm_bridge.rollout import HFBackend, VLLMBackend, make_backend
from llm_bridge.run_dir import read_cov_tables
from llm_bridge.tasks import dataset_task, exact_match, math_verify_reward, synthetic_task
from llm_bridge.tiny import build_tokenizer
from llm_bridge.token_stats import token_probe_stats
from softmax_theory.policy import PolicyLossConfig
from softmax_theory.runlog import read_run

TIME_KEYS = ("time/rollout_s", "time/update_s", "time/probe_s")


def test_addition_task_by_hand():
    task = synthetic_task("addition", seed=0, n_train=50, n_test=10)
    ex = task.train[0]
    a, b = ex.prompt[:-1].split("+")
    assert ex.answer == f"{int(a) + int(b):04d}" and len(ex.answer) == 4
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}
    mult = synthetic_task("multiplication", n_train=5, n_test=2).train[0]
    x, y = mult.prompt[:-1].split("*")
    assert mult.answer == f"{int(x) * int(y):05d}"
    assert exact_match(" 0123 ", "0123") == 1.0 and exact_match("123", "0123") == 0.0
    with pytest.raises(ValueError, match="task"):
        synthetic_task("division")


def test_dataset_task_and_math_reward(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(20))
    )
    task = dataset_task(path, reward="exact")
    assert len(task.train) + len(task.test) == 20
    assert task.reward("5", "5") == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}))
    with pytest.raises(ValueError, match="answer_key"):
        dataset_task(bad)


def test_math_reward_through_a_training_step(tiny_model, tmp_path):
    """--dataset with the default math reward (math-verify, installed by make test)."""
    pytest.importorskip("math_verify")
    assert math_verify_reward("1/2", "0.5") == 1.0
    assert math_verify_reward("0.25", "0.5") == 0.0
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": f"{i:03d}+001=", "answer": str(i + 1)}) for i in range(40))
    )
    cfg = _cfg(tiny_model, dataset=str(path), steps=1, val_every=0, max_new_tokens=8)
    train(cfg, tmp_path / "run")
    (rec,) = read_run(tmp_path / "run").steps
    assert (
        0.0 <= rec["reward"] <= 1.0
        and read_run(tmp_path / "run").config["dataset_reward"] == "math"
    )


def test_tokenizer_round_trip():
    tok = build_tokenizer()
    ids = tok.encode("123+456=", add_special_tokens=False)
    assert len(ids) == 8
    assert tok.decode(ids) == "123+456="


def test_hf_backend_masks_after_eos(tiny_model):
    model, tok = load_model(tiny_model)
    roll = HFBackend(model, tok).generate(
        ["123+456="] * 2, 3, 5, 1.0, torch.Generator().manual_seed(0)
    )
    assert roll.input_ids.shape[0] == 6 and roll.response_ids.shape == (6, 5)
    eos = tok.eos_token_id
    for ids, mask in zip(roll.response_ids, roll.response_mask, strict=True):
        ids, mask = ids.tolist(), mask.tolist()
        if eos in ids:
            first = ids.index(eos)
            assert mask == [1] * (first + 1) + [0] * (len(ids) - first - 1)
        else:
            assert all(mask)
    # the same generator seed gives the same samples
    again = HFBackend(model, tok).generate(
        ["123+456="] * 2, 3, 5, 1.0, torch.Generator().manual_seed(0)
    )
    assert torch.equal(roll.input_ids, again.input_ids)


def test_vllm_backend_with_a_fake_engine_and_missing_vllm():
    tok = build_tokenizer()
    digits = tok.encode("0579", add_special_tokens=False)

    class FakeEngine:
        def generate(self, prompts, params, use_tqdm=False):
            assert params.n == 2 and params.max_tokens == 5 and params.temperature == 1.0
            completion = SimpleNamespace(token_ids=digits + [tok.eos_token_id])
            return [SimpleNamespace(outputs=[completion, completion]) for _ in prompts]

    backend = VLLMBackend("unused", tok, engine=FakeEngine(), sampling_params_cls=SimpleNamespace)
    roll = backend.generate(["123+456=", "001+002="], 2, 5, 1.0, torch.Generator())
    assert roll.texts == ("0579",) * 4
    assert roll.response_mask.tolist() == [[1] * 5] * 4
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="entropy-mechanism\\[vllm\\]"):
            make_backend("vllm", None, tok, "unused")
    with pytest.raises(ValueError, match="backend"):
        make_backend("sglang", None, tok, "unused")


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_update_forecast_equals_the_step(opt_cls):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = opt_cls(net.parameters(), lr=1e-2)
    x = torch.randn(16, 4)
    for _ in range(3):  # build up optimiser state
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        forecast = optimizer_update(opt)
        before = {id(p): p.detach().clone() for p in net.parameters()}
        opt.step()
        for p in net.parameters():
            torch.testing.assert_close(
                p.detach() - before[id(p)], forecast[id(p)], rtol=1e-5, atol=1e-7
            )


def test_jvp_matches_finite_differences(tiny_model):
    model, _ = load_model(tiny_model)
    model.set_attn_implementation("eager")
    model = model.double()
    ids = torch.randint(4, 17, (3, 9), generator=torch.Generator().manual_seed(0))
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    delta = {
        n: 1e-4 * torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in params.items()
    }

    def logits_fn(p):
        return torch.func.functional_call(model, p, (ids,)).logits

    _, tangent = forward_tangent(logits_fn, params, delta)
    with torch.no_grad():
        plus = logits_fn({n: params[n] + delta[n] for n in params})
        minus = logits_fn({n: params[n] - delta[n] for n in params})
    # Llama's eager attention takes its softmax in fp32, which bounds the finite difference's
    # accuracy to about 1e-4 of the change at this step
    err = (tangent - (plus - minus) / 2).abs().max()
    assert err <= 1e-3 * tangent.abs().max()


def test_score_function_lemma1_matches_the_theory():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(7)
    y, adv, lr = 3, 0.7, 1e-3
    p = smt.softmax(z)
    delta = lr * adv * (np.eye(7)[y] - p)  # a score-function step on y alone
    expected = smt.first_order_entropy_change(z, delta)
    zt = torch.tensor(z)[None]
    score = token_probe_stats(zt, zt, torch.tensor([y]))["score"]
    got = -lr * adv * score[0]
    assert float(got) == pytest.approx(float(expected), rel=1e-10)


# The fixture's model is barely trained, so tests reward a property it already varies on.
EVEN_FIRST_DIGIT = replace(
    synthetic_task("addition", n_train=500, n_test=64),
    reward=lambda response, answer: float(response[:1] in "02468"),
)


def _cfg(tiny_model, **kw):
    base = dict(
        model=str(tiny_model),
        steps=3,
        prompts_per_step=4,
        group_size=4,
        val_every=2,
        val_prompts=16,
        checkpoint_every=0,
        lr=1e-3,
        warmup_steps=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_writes_the_contract(tiny_model, tmp_path):
    train(_cfg(tiny_model, token_steps_every=2), tmp_path / "run")
    run = read_run(tmp_path / "run")
    assert [s["step"] for s in run.steps] == [0, 1, 2]
    for rec in run.steps:
        for key in (
            "entropy",
            "reward",
            "entropy_after",
            "delta_entropy",
            "pred_lemma1",
            "pred_jvp",
            "cov_mean",
            "cov_group",
            "cov_state",
            "cov_score",
            "lr",
            "algo",
        ):
            assert key in rec, key
        assert rec["entropy_after"] == pytest.approx(
            rec["entropy"] + rec["delta_entropy"], abs=1e-6
        )
    assert "val_reward" in run.steps[0] and "val_reward" not in run.steps[1]
    assert (tmp_path / "run" / "tokens" / "step_000000.npz").exists()
    assert (tmp_path / "run" / "cov_tables.jsonl").exists()
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert run.config["policy_loss"]["loss_mode"] == "vanilla"


def test_lemma1_tracks_a_small_single_update(tiny_model, tmp_path):
    cfg = _cfg(
        tiny_model,
        steps=2,
        mini_batches=1,
        lr=1e-5,
        optimizer="sgd",
        val_every=0,
        prompts_per_step=8,
    )
    train(cfg, tmp_path / "run", task=EVEN_FIRST_DIGIT)
    for rec in read_run(tmp_path / "run").steps:
        assert rec["probe/updates"] == 1
        assert rec["token_corr/lemma1"] > 0.99
        assert rec["pred_lemma1"] == pytest.approx(rec["delta_entropy"], rel=0.05)
        assert rec["pred_jvp"] == pytest.approx(rec["delta_entropy"], rel=0.05)


def test_fixed_seed_repeats_and_resume_neither_loses_nor_repeats(tiny_model, tmp_path):
    cfg = _cfg(
        tiny_model,
        steps=4,
        checkpoint_every=2,
        policy_loss=PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.1),
    )
    train(cfg, tmp_path / "full", task=EVEN_FIRST_DIGIT)
    full = read_run(tmp_path / "full").steps
    # a run killed after logging step 2, with its last checkpoint after step 1
    trainer = ProbedGRPOTrainer(cfg, tmp_path / "killed", task=EVEN_FIRST_DIGIT)
    for _ in range(3):
        trainer.step()
    trainer.run_dir.close()
    assert len(read_run(tmp_path / "killed").steps) == 3
    train(cfg, tmp_path / "killed", resume=True, task=EVEN_FIRST_DIGIT)
    resumed = read_run(tmp_path / "killed").steps
    assert [s["step"] for s in resumed] == [0, 1, 2, 3]

    for a, b in zip(full, resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - set(TIME_KEYS):
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
            else:
                assert a[key] == b[key], key


def test_bad_train_config_is_named(tiny_model):
    with pytest.raises(ValueError, match="mini_batches"):
        _cfg(tiny_model, prompts_per_step=5, mini_batches=2)
    with pytest.raises(ValueError, match="optimizer"):
        _cfg(tiny_model, optimizer="lion")
    with pytest.raises(ValueError, match="model"):
        ProbedGRPOTrainer(TrainConfig(), "unused", EVEN_FIRST_DIGIT)


def test_compare_reports_every_predictor(tiny_model, tmp_path):
    train(_cfg(tiny_model, steps=4), tmp_path / "a", task=EVEN_FIRST_DIGIT)
    (rep,) = compare_runs([tmp_path / "a"], tmp_path / "cmp", n_boot=50)
    keys = {p.key for p in rep.predictors}
    assert keys == {"pred_lemma1", "pred_jvp", "cov_mean", "cov_group", "cov_state", "cov_score"}
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "pred_jvp" in text and "R = −a·exp(H) + b" in text
    # Table 1 of step 0 (the default cov_table_steps), as the run wrote it
    (table,) = read_cov_tables(tmp_path / "a")
    assert rep.cov_tables == (table,) and table["step"] == 0
    assert "## Table 1" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {rep.name} | 0 |"))
    assert f"{table['top 2%']:.4g}" in row and f"{table['n_tokens']:,}" in row
    for fig in ("curves.png", "predictions.png"):
        assert (tmp_path / "cmp" / fig).stat().st_size > 1000


def test_table1_concentration_is_the_top_mean_over_the_mean_of_all():
    from llm_bridge.compare import PAPER_TABLE1, concentration

    assert concentration({"top 0.02%": 5.654, "all": 0.003}) == pytest.approx(1884.67, rel=1e-4)
    assert PAPER_TABLE1[0] / PAPER_TABLE1[-1] == pytest.approx(1884.67, rel=1e-4)
    assert concentration({"top 0.02%": 2.0, "all": 0.0}) is None  # no ratio of a zero mean
    assert concentration({"top 0.02%": 2.0, "all": -0.1}) is None


def test_cli_pretrain_is_cached_and_train_names_errors(tiny_model, tmp_path, cli):
    out = tmp_path / "m"
    args = ["pretrain-tiny", "--out", str(out), "--steps", "3", "--warmup", "1"]
    assert cli(main, args).exit_code == 0
    second = cli(main, args)
    assert second.exit_code == 0 and "already holds" in second.output
    bad = cli(
        main, ["train", "--model", str(tiny_model), "--out", str(tmp_path / "r"), "--lr", "-1"]
    )
    assert bad.exit_code != 0 and "lr" in bad.output


def test_progress_shares_and_smoothing_by_hand():
    from llm_bridge.compare import progress_shares
    from softmax_theory.stats import smooth

    # step index round(f·10): 1, 2 (2.5 rounds to even), 3, 5, 7 of a straight line from 0 to 10
    assert progress_shares(np.arange(11.0)) == pytest.approx(
        {0.1: 0.1, 0.25: 0.2, 1 / 3: 0.3, 0.5: 0.5, 2 / 3: 0.7}
    )
    np.testing.assert_allclose(smooth(np.array([0.0, 10.0, 0.0, 10.0]), 2), [5, 10 / 3, 20 / 3, 5])


def test_validation_frequency_does_not_change_training(tiny_model, tmp_path):
    train(_cfg(tiny_model, val_every=1), tmp_path / "a", task=EVEN_FIRST_DIGIT)
    train(_cfg(tiny_model, val_every=0), tmp_path / "b", task=EVEN_FIRST_DIGIT)
    a, b = read_run(tmp_path / "a").steps, read_run(tmp_path / "b").steps
    assert [s["reward"] for s in a] == [s["reward"] for s in b]
    assert [s["entropy"] for s in a] == pytest.approx([s["entropy"] for s in b])


def test_table1_over_seeds_is_each_columns_mean_and_interval():
    from llm_bridge.compare import TABLE1_COLUMNS, table1_over_seeds
    from softmax_theory.stats import mean_interval

    def row(step, top, every, n):
        return {"step": step, "n_tokens": n, **dict.fromkeys(TABLE1_COLUMNS, top), "all": every}

    lines = table1_over_seeds(
        {5: [row(5, 2.0, -0.1, 10)], 0: [row(0, 4.0, 0.5, 100), row(0, 6.0, 0.5, 120)]}
    )
    assert lines[2].startswith("| the paper, 1 |") and "1,885×" in lines[2]
    first, second = lines[3], lines[4]
    assert first.startswith("| 0 | 110 ± ")  # steps in order, tokens averaged
    mean, half = mean_interval([8.0, 12.0])  # ratios 4/0.5 and 6/0.5
    assert f"{mean:.3g} ± {half:.2g}×" in first
    assert second.startswith("| 5 | 10 | 2 |") and "mean of all ≤ 0" in second
