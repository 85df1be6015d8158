"""The memory model of a step (llm_bridge.memory, docs/memory.md) and the guard built on it."""

import pytest
import torch

from llm_bridge.cli import main
from llm_bridge.memory import GIB, ModelShape, check_step_fits, estimate_step_memory

# a 19.8M-parameter model at V = 151,936: the real-vocabulary model of docs/memory.md
SHAPE = ModelShape(
    parameters=19_776_128,
    layers=2,
    hidden=128,
    intermediate=256,
    heads=4,
    kv_heads=4,
    vocab=151_936,
    dtype=torch.float32,
)


def _estimate(**kw):
    base = dict(responses=32, micro_batch=8, prompt_length=40, response_length=66)
    return estimate_step_memory(SHAPE, **{**base, **kw})


def test_the_documented_parts_for_the_real_vocabulary_model():
    """The table of docs/memory.md, by hand: p·b = 79,104,512 bytes (75.4 MiB)."""
    m = _estimate()
    pb = 19_776_128 * 4
    assert (m.weights, m.gradients, m.optimizer) == (pb, pb, 2 * pb)
    assert m.theta_old == 2 * pb  # θ_old and the JVP's Δθ
    assert _estimate(jvp=False).theta_old == pb and _estimate(probe=False).theta_old == 0
    # generation: 32 responses × 106 positions × K and V (2 layers × 128) × 4 bytes, and four fp32
    # copies of a position's logits per response
    assert m.generation == 32 * 106 * 2 * 2 * 128 * 4 + 4 * 32 * 151_936 * 4
    # backward, 4 micro-batches an update (the earlier ones' gradients are there): the
    # gradients, activations, 8 responses × 106 positions × 2 layers × (12·128 + 4·256) × 4
    # bytes, and the head's: two [55, V] fp32 buffers and its fp32 gradient, or that gradient
    # and the embedding's (2·V·d·4), the larger at this shape
    chunk = 55 * 151_936 * 4
    head = 2 * 151_936 * 128 * 4
    activations = 8 * 106 * 2 * (12 * 128 + 4 * 256) * 4
    assert head > 2 * chunk + 151_936 * 128 * 4
    assert m.backward == pb + activations + head
    # Adam's two temporaries and the forecast's three of the largest parameter
    assert m.optimizer_step == 2 * pb + 3 * 151_936 * 128 * 4
    phases = m.phases()
    assert m.total == max(phases.values())
    assert phases["update"] == m.persistent - pb + m.theta_old + max(
        m.backward, pb + m.optimizer_step
    )


def test_one_micro_batch_an_update_runs_the_head_backward_before_any_gradient():
    """zero_grad sets the gradients to None before each update: with one micro-batch an update
    the head's backward (its two chunk buffers and fp32 gradient) comes before any gradient is
    kept, and the gradients (with the tied embedding's dense one being summed in) form after."""
    pb, vd = 19_776_128 * 4, 151_936 * 128 * 4
    chunk = 55 * 151_936 * 4
    one = _estimate(probe=False, micro_batch=32)  # the whole batch: one update, one pass
    activations = 32 * 106 * 2 * (12 * 128 + 4 * 256) * 4
    assert one.backward == max(activations + 2 * chunk + vd, pb + vd)
    # the same micro-batch, split into updates of one micro-batch each: no gradient carried
    assert _estimate(probe=False, mini_batch=8).backward == max(
        8 * 106 * 2 * (12 * 128 + 4 * 256) * 4 + 2 * chunk + vd, pb + vd
    )
    assert _estimate(probe=False, mini_batch=8).backward < _estimate(probe=False).backward


def test_the_probe_term_is_what_the_probe_allocates():
    """The probe's head term counts the buffers ``head_probe_stats`` really allocates: three
    [rows, V] products and the fused rows' float64 work (bytes read off the objects)."""
    from llm_bridge.head import HeadWork, head_rows, head_work_bytes
    from llm_bridge.token_stats import ProbeWork, probe_rows_per_chunk, probe_work_bytes

    v = 4099
    weight = torch.zeros(v, 8)
    work = HeadWork(head_rows(v), weight, ("before", "after", "tangent"))
    got = sum(t.nbytes for t in work.products.values()) + sum(t.nbytes for t in work.wide.values())
    assert got == head_work_bytes(head_rows(v), v, torch.float32, 3)
    half = HeadWork(head_rows(v), weight.bfloat16(), ("before", "after"))
    got = sum(t.nbytes for t in half.products.values()) + sum(t.nbytes for t in half.wide.values())
    assert got == head_work_bytes(head_rows(v), v, torch.bfloat16, 2)
    rows = ProbeWork(probe_rows_per_chunk(v), v, torch.float64, torch.device("cpu"))
    assert rows.nbytes == probe_work_bytes(probe_rows_per_chunk(v), v)


def test_the_jvp_holds_eager_attention_that_grows_with_the_square_of_the_sequence():
    """At reasoning lengths the probe's peak is its JVP: attention runs eager inside it, about six
    [b, heads, S, S] fp32 tensors at once; without the JVP there is none."""
    from llm_bridge.memory import JVP_ATTENTION_TENSORS

    short = _estimate(response_length=984)  # S = 1,024
    long = _estimate(response_length=2008)  # S = 2,048
    attention = 8 * 4 * 1024 * 1024 * 4
    assert short.probe_pass >= JVP_ATTENTION_TENSORS * attention
    assert long.phases()["probe"] > long.phases()["update"]
    grow = long.probe_pass - short.probe_pass
    assert grow >= JVP_ATTENTION_TENSORS * attention * 3  # (2S)² − S² = 3·S²
    no_jvp = [_estimate(response_length=r, jvp=False).probe_pass for r in (984, 2008)]
    assert no_jvp[1] - no_jvp[0] < attention  # without the JVP: no term in S²
    assert "probe" not in _estimate(probe=False).phases()


def test_with_generation_and_micro_batches_fixed_only_the_per_token_arrays_grow():
    small = _estimate(responses=64, generate_batch=64)
    large = _estimate(responses=512, generate_batch=64)
    assert large.total - small.total == large.batch_arrays - small.batch_arrays
    # 48 bytes per token for the batch, and 80 for the probe's float64 values
    assert large.batch_arrays - small.batch_arrays == (12 * 4 + 10 * 8) * 448 * 66
    # one generate call for the whole batch grows with it
    assert _estimate(responses=512).generation == 8 * small.generation


def test_the_predictive_controller_adds_its_gradients_to_the_update():
    """By hand: g_H (and autograd's result) through the backward, six parameter-sized buffers
    while it solves (one more of each on KL-Cov's coefficient); nothing without it."""
    pb = 19_776_128 * 4
    plain, ctrl = _estimate(probe=False), _estimate(probe=False, control=1)
    assert (plain.control_held, plain.control_solve) == (0, 0)
    assert (ctrl.control_held, ctrl.control_solve) == (2 * pb, 6 * pb)
    kl = _estimate(probe=False, control=2)  # on KL-Cov's coefficient: g_KL beside g_H
    assert (kl.control_held, kl.control_solve) == (3 * pb, 7 * pb)
    assert ctrl.phases()["update"] == ctrl.persistent - pb + max(
        ctrl.backward + 2 * pb, pb + ctrl.optimizer_step, pb + ctrl.control_solve
    )
    assert ctrl.total > plain.total


def test_the_controller_term_is_what_the_controller_holds(tiny_model, tmp_path, monkeypatch):
    """At each forecast inside the optimiser pre-hook, the bytes the controller holds (g_H and
    its forecast's buffers, read off the objects) are the estimate's solve term, which the
    trainer's estimate includes."""
    import llm_bridge.trainer as trainer_module
    from llm_bridge import TrainConfig, train
    from llm_bridge import control as control_module
    from llm_bridge.models import load_weights
    from softmax_theory.control import ControlConfig

    held: list[int] = []

    class Counting(control_module.UpdateForecast):
        def __init__(self, opt, params, g_h, scale, *actuator):
            super().__init__(opt, params, g_h, scale, *actuator)
            self.g_h_bytes = g_h.nbytes

        def __call__(self, c):
            held.append(self.g_h_bytes + self.nbytes)
            return super().__call__(c)

    needs = []
    real_check = trainer_module.check_step_fits

    def recording(need, *args, **kwargs):
        needs.append(need)
        return real_check(need, *args, **kwargs)

    monkeypatch.setattr(control_module, "UpdateForecast", Counting)
    monkeypatch.setattr(trainer_module, "check_step_fits", recording)
    control = ControlConfig(entropy_control="predictive", control_level=1.0, control_coef_min=-1.0)
    cfg = TrainConfig(
        model=str(tiny_model),
        steps=1,
        prompts_per_step=4,
        group_size=4,
        val_every=0,
        checkpoint_every=0,
        save_final=False,
        probe=False,
        control=control,
    )
    train(cfg, tmp_path / "r")
    pb = sum(p.nbytes for p in load_weights(tiny_model).parameters())
    assert held and set(held) == {6 * pb}
    assert [(n.control_held, n.control_solve) for n in needs] == [(2 * pb, 6 * pb)]


def test_the_guard_refuses_a_budget_just_below_the_need_and_passes_one_just_above():
    from llm_bridge.memory import HEADROOM

    need = _estimate()
    just = int(need.total / HEADROOM)
    with pytest.raises(ValueError, match="prompts_per_step"):
        check_step_fits(need, just - 1024, micro_batch_set=True)
    check_step_fits(need, just + 1024, micro_batch_set=True)


def test_the_trainer_refuses_a_step_its_memory_does_not_hold(
    tiny_model, tmp_path, cli, monkeypatch
):
    """The guard in the CLI, with the memory there is set just below what the step needs."""
    import llm_bridge.trainer as trainer_module
    from llm_bridge.memory import HEADROOM

    seen = {}
    real = trainer_module.check_step_fits

    def short_by_a_little(need, available, micro_batch_set):
        seen["need"] = need.total
        return real(need, int(need.total / HEADROOM) - 4096, micro_batch_set)

    monkeypatch.setattr(trainer_module, "check_step_fits", short_by_a_little)
    result = cli(main, ["train", "--model", tiny_model, "--steps", "1", "--out", tmp_path / "r"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("error: prompts_per_step: a step needs about")
    assert seen["need"] > 0


@pytest.mark.parametrize(
    "kw,flag",
    [
        (dict(responses=100_000, generate_batch=None), "--generate-batch-size"),
        (dict(responses=64, micro_batch=64, generate_batch=8), "--micro-batch-size"),
    ],
)
def test_the_guard_names_the_flag_of_the_part_that_does_not_fit(kw, flag):
    need = _estimate(**kw)
    with pytest.raises(ValueError, match="prompts_per_step") as err:
        check_step_fits(need, int(need.total * 0.5), micro_batch_set=True)
    assert flag in str(err.value)
    check_step_fits(need, int(need.total / 0.8), micro_batch_set=True)  # fits: no error


@pytest.mark.parametrize(
    "flags,flag",
    [([], "--micro-batch-size"), (["--micro-batch-size", "8"], "--generate-batch-size")],
)
def test_an_oversized_step_is_refused_in_one_line_before_it_starts(
    tiny_model, tmp_path, cli, flags, flag
):
    out = tmp_path / "run"
    result = cli(
        main,
        ["train", "--model", tiny_model, "--prompts-per-step", "2000000", "--out", out, *flags],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: prompts_per_step: a step needs about")
    assert "GiB" in lines[0] and flag in lines[0]
    assert not (out / "steps.jsonl").exists() or (out / "steps.jsonl").stat().st_size == 0


def test_gib_is_a_binary_gigabyte():
    assert GIB == 2**30
