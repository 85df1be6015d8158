"""Entropy control on language-model tokens (``llm_bridge.control``): the controller's
forecast of each step is the probe's JVP forecast of the same update (one update a step, whole
batch), it holds a level closer than no control, and its refusals."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from llm_bridge import TrainConfig, train
from softmax_theory import read_run
from softmax_theory.control import ControlConfig
from softmax_theory.inputs import SettingError
from softmax_theory.policy import PolicyLossConfig


def small(model, **settings) -> TrainConfig:
    base = dict(
        steps=6,
        prompts_per_step=8,
        group_size=4,
        mini_batches=1,
        lr=2e-3,
        warmup_steps=0,
        val_every=0,
        checkpoint_every=0,
        save_final=False,
    )
    return TrainConfig(model=str(model), **{**base, **settings})


def hold(**settings) -> ControlConfig:
    return ControlConfig(
        entropy_control="predictive",
        control_level=1.0,
        control_coef_min=-1.0,
        control_coef_max=1.0,
        **settings,
    )


ENGINES = [
    "ours",
    pytest.param(
        "trl",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("trl") is None, reason="needs the trl extra"
        ),
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_controllers_forecast_is_the_probes_jvp(tiny_model, tmp_path, engine):
    """With one update a step on the whole batch, ∇H̄·Δθ(c) that the controller solves on is
    the probe's ``pred_jvp`` of the update it took (the same first-order forecast, reached by
    a gradient dot product here and by a forward-mode JVP there), in either engine."""
    run = train(small(tiny_model, control=hold(), engine=engine), tmp_path / "r")
    steps = read_run(run).steps
    assert all("control/pred_after" in s for s in steps)
    for s in steps:
        forecast = s["control/pred_after"] - s["entropy"]
        assert forecast == pytest.approx(s["pred_jvp"], rel=2e-3, abs=1e-6), s["step"]


@pytest.mark.parametrize("engine", ENGINES)
def test_each_step_aims_at_the_path_less_the_last_error(tiny_model, tmp_path, engine):
    """Where the coefficient is inside its bounds, the forecast after the step is the path's
    next value less the last step's forecast error (gain 1): the solve meets its aim; the
    coefficient the step applied is logged as ``actor/entropy_coeff`` too, and in the TRL
    engine as TRL's own ``entropy_coef`` in its log."""
    out = train(small(tiny_model, control=hold(), engine=engine, mini_batches=2), tmp_path / "c")
    steps = read_run(out).steps
    inside = 0
    for s in steps:
        assert s["control/coef"] == s["actor/entropy_coeff"]
        if abs(s["control/coef"]) < 1.0:
            inside += 1
            aim = s["control/target"] - s.get("control/error", 0.0)
            assert s["control/pred_after"] == pytest.approx(aim, abs=1e-6), s["step"]
    assert inside >= len(steps) // 2
    if engine == "trl":
        log = json.loads((out / "trl" / "trainer_state.json").read_text())["log_history"]
        coefs = [r["entropy_coef"] for r in log if "entropy_coef" in r]
        assert coefs == pytest.approx([s["control/coef"] for s in steps])


def test_refusals(tiny_model):
    with pytest.raises(SettingError, match="entropy_coeff"):
        small(tiny_model, control=hold(), policy_loss=PolicyLossConfig(entropy_coeff=0.01))
    with pytest.raises(SettingError, match="token-mean"):
        small(
            tiny_model,
            control=hold(),
            policy_loss=PolicyLossConfig(loss_agg_mode="seq-mean-token-mean"),
        )


def test_the_command_line_refuses_a_target_above_log_v(cli, tiny_model, tmp_path):
    from llm_bridge.cli import main

    args = [
        "train",
        "--model",
        tiny_model,
        "--out",
        tmp_path / "r",
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--val-every",
        "0",
        "--entropy-control",
        "predictive",
        "--control-level",
        "50",
        "--no-control-relative",
    ]
    res = cli(main, args)
    assert res.exit_code == 2 and "log V" in res.output and "Traceback" not in res.output


def test_compare_tabulates_the_tracking_and_draws_the_path(tiny_model, tmp_path):
    from llm_bridge.compare import compare_runs

    run = train(small(tiny_model, steps=3, control=hold()), tmp_path / "c")
    (report,) = compare_runs([run], out=tmp_path / "cmp", n_boot=10)
    steps = read_run(run).steps
    err = [s["entropy"] - s["control/now"] for s in steps]
    assert report.tracking.rmse == pytest.approx(float(np.sqrt(np.mean(np.square(err)))))
    assert report.tracking.n == 3
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "Entropy against its target path" in text and (tmp_path / "cmp" / "control.png").exists()


@pytest.mark.parametrize("kind", ["predictive", "pi"])
def test_a_killed_controlled_run_resumes_with_the_controllers_state(tiny_model, tmp_path, kind):
    """The controller's state (its path from step 0's entropy, the last forecast, PI's
    integral) is rebuilt from the run log on resume: a run killed after step 2, with its last
    checkpoint after step 1, resumes to the uninterrupted run's ``control/*`` keys."""
    from llm_bridge import ProbedGRPOTrainer, load_task

    control = ControlConfig(
        entropy_control=kind,
        control_level=0.9,
        control_coef_min=-1.0,
        control_coef_max=1.0,
        control_kp=0.5,
        control_ki=0.2,
    )
    cfg = small(tiny_model, steps=4, checkpoint_every=2, control=control)
    full = read_run(train(cfg, tmp_path / "full")).steps
    trainer = ProbedGRPOTrainer(cfg, tmp_path / "killed", load_task(cfg))
    for _ in range(3):
        trainer.step()
    trainer.run_dir.close()
    trainer.control.close()
    resumed = read_run(train(cfg, tmp_path / "killed", resume=True)).steps
    assert [s["step"] for s in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed, strict=True):
        for key in (k for k in a if k.startswith("control/")):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)


def test_a_short_path_file_is_refused_before_the_first_rollout(cli, tiny_model, tmp_path):
    from llm_bridge.cli import main

    path = tmp_path / "path.csv"
    path.write_text("step,target\n0,0.5\n1,0.5\n")  # the run has 3 steps
    args = [
        "train", "--model", tiny_model, "--out", tmp_path / "r", "--steps", "3",
        "--prompts-per-step", "2", "--group-size", "2", "--val-every", "0",
        "--entropy-control", "predictive", "--control-path", "file",
        "--control-path-file", path,
    ]  # fmt: skip
    res = cli(main, args)
    assert res.exit_code == 2 and "path.csv has 2 steps; the run has 3" in res.output
    assert not (tmp_path / "r" / "steps.jsonl").exists()


def _optimised(kind: str):
    """A float64 MLP and its optimiser, two parameter groups at different learning rates, after
    three real steps in which one parameter had no gradient in the first (so Adam's step counts
    differ within a group), with fresh gradients for the next step (one parameter without)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)
    ).double()
    w1, b1, w2, b2 = net.parameters()
    groups = [{"params": [w1, b1], "lr": 1e-2}, {"params": [w2, b2], "lr": 3e-3}]
    opt = {
        "adam": lambda: torch.optim.Adam(groups),
        "adamw": lambda: torch.optim.AdamW(groups, weight_decay=0.1),
        "sgd": lambda: torch.optim.SGD(groups),
    }[kind]()
    x = torch.randn(16, 5, dtype=torch.float64)
    for k in range(3):
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        if k == 0:
            b1.grad = None  # Adam skips it: its step count lags the group's
        opt.step()
    opt.zero_grad(set_to_none=True)
    net(x).sin().mean().backward()
    b2.grad = None  # g_pg is zero there
    params = [w1, b1, w2, b2]
    g_h = [torch.randn_like(p) for p in params]
    return opt, params, g_h


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_the_flat_forecast_is_the_optimisers_rule_parameter_by_parameter(kind):
    """UpdateForecast(c) equals ∇H̄·Δθ(c) from ``optimizer_update`` per parameter (the slow
    reference) at coefficients across the bonus's range, in float64 to 1e-12 relative; Adam's
    step counts differing within a group, a parameter without a gradient, two learning rates."""
    import torch

    from llm_bridge.control import UpdateForecast
    from llm_bridge.reference import naive_update_forecast

    opt, params, g_h = _optimised(kind)
    flat = torch.cat([g.reshape(-1) for g in g_h])
    fast = UpdateForecast(opt, params, flat, scale=0.37)
    assert fast.nbytes <= 5 * flat.nbytes  # g_pg, A, V and two work buffers at most
    for c in (-0.5, 0.0, 0.3, 2.0, 40.0):
        slow = naive_update_forecast(opt, params, g_h, 0.37, c)
        assert fast(c) == pytest.approx(slow, rel=1e-12, abs=1e-300), c
    # KL-Cov's coefficient: the gradient moves along +g_KL, the forecast still dots ∇H̄
    g_kl = [torch.randn_like(p) for p in params]
    flat_kl = torch.cat([g.reshape(-1) for g in g_kl])
    fast = UpdateForecast(opt, params, flat, 0.37, direction=flat_kl, sign=1.0)
    for c in (0.0, 0.3, 2.0, 40.0):
        slow = naive_update_forecast(opt, params, g_h, 0.37, c, g_kl, 1.0)
        assert fast(c) == pytest.approx(slow, rel=1e-12, abs=1e-300), c


def test_the_flat_forecast_refuses_what_the_rule_does_not_cover():
    import torch

    from llm_bridge.control import UpdateForecast

    p = torch.nn.Parameter(torch.zeros(3))
    flat = torch.zeros(3)
    with pytest.raises(ValueError, match="amsgrad"):
        UpdateForecast(torch.optim.Adam([p], amsgrad=True), [p], flat, 1.0)
    with pytest.raises(ValueError, match="plain SGD"):
        UpdateForecast(torch.optim.SGD([p], lr=0.1, momentum=0.9), [p], flat, 1.0)
    with pytest.raises(ValueError, match="RMSprop"):
        UpdateForecast(torch.optim.RMSprop([p]), [p], flat, 1.0)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs the trl extra")
def test_a_stopped_trl_engine_run_resumes_with_the_controllers_state(tiny_model, tmp_path):
    """The TRL engine's controller rebuilds its state from the run log on resume: a run
    stopped after step 1 (checkpoint there) resumes to the uninterrupted run's ``control/*``
    keys."""
    control = ControlConfig(entropy_control="predictive", control_level=0.9, control_coef_min=-1.0)
    cfg = small(tiny_model, steps=4, checkpoint_every=2, control=control, engine="trl")
    full = read_run(train(cfg, tmp_path / "full")).steps
    train(cfg, tmp_path / "stopped", stop=lambda r: r["step"] == 1)
    assert [s["step"] for s in read_run(tmp_path / "stopped").steps] == [0, 1]
    resumed = read_run(train(cfg, tmp_path / "stopped", resume=True)).steps
    assert [s["step"] for s in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed, strict=True):
        for key in (k for k in a if k.startswith("control/")):
            # TRL's reloaded checkpoint moves the last digits (2e-6 relative seen); a lost
            # state would move the path and the error by the step's whole change
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)


def kl_hold(**settings) -> dict:
    control = ControlConfig(
        entropy_control="predictive",
        control_actuator="ppo_kl_coef",
        control_level=1.0,
        control_coef_min=0.0,
        control_coef_max=50.0,
        **settings,
    )
    # a fixed bonus moves θ at the step's first update even where the tiny model's rewards are
    # all 0, so that KL-Cov's part has a gradient at the second
    loss = PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=0.2, entropy_coeff=0.05)
    return dict(control=control, policy_loss=loss)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_controller_steers_kl_covs_coefficient_in_both_engines(
    tiny_model, tmp_path, engine, monkeypatch
):
    """On KL-Cov's coefficient every update's coefficient stays in its bounds and, where it is
    inside them, its forecast meets the update's aim; the step logs the mean as
    ``control/coef`` and the bonus stays the loss's own. KL-Cov's part acts from the step's
    second update (at θ_old its gradient vanishes)."""
    from llm_bridge import control as control_module

    solves = []
    real = control_module.solve_coef

    def recording(forecast, want, lo, hi, *args):
        c = real(forecast, want, lo, hi, *args)
        solves.append((c, forecast(c) - want))
        return c

    monkeypatch.setattr(control_module, "solve_coef", recording)
    out = train(small(tiny_model, engine=engine, mini_batches=2, **kl_hold()), tmp_path / "k")
    steps = read_run(out).steps
    for s in steps:
        assert 0.0 <= s["control/coef"] <= 50.0 and "control/pred_after" in s
        assert s["actor/entropy_coeff"] == 0.05  # the bonus stays the loss's own
    inside = [miss for c, miss in solves if 0.0 < c < 50.0]
    assert inside and max(abs(m) for m in inside) < 1e-7
    assert len(solves) == 2 * len(steps)


def test_an_actuator_the_loss_does_not_have_is_refused(cli, tiny_model, tmp_path):
    from llm_bridge.cli import main

    with pytest.raises(SettingError, match="control_actuator.*kl_cov"):
        small(tiny_model, control=kl_hold()["control"])
    with pytest.raises(SettingError, match="control_coef_min.*negative"):
        ControlConfig(control_actuator="ppo_kl_coef", control_coef_min=-0.1)
    res = cli(
        main,
        [
            "train",
            "--model",
            tiny_model,
            "--out",
            tmp_path / "r",
            "--steps",
            "1",
            "--entropy-control",
            "predictive",
            "--control-actuator",
            "ppo_kl_coef",
        ],
    )
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "control_actuator" in res.output and "Traceback" not in res.output
