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
    assert (m.weights, m.gradients, m.optimizer, m.optimizer_step) == (pb, pb, 2 * pb, 2 * pb)
    assert m.theta_old == 2 * pb  # θ_old and the JVP's Δθ
    assert _estimate(jvp=False).theta_old == pb and _estimate(probe=False).theta_old == 0
    # generation: 32 responses × 106 positions × K and V (2 layers × 128) × 4 bytes, and four fp32
    # copies of a position's logits per response
    assert m.generation == 32 * 106 * 2 * 2 * 128 * 4 + 4 * 32 * 151_936 * 4
    # activations: 8 responses × 106 positions × 2 layers × (12·128 + 4·256) × 4 bytes
    assert m.micro_batch == 8 * 106 * 2 * (12 * 128 + 4 * 256) * 4
    assert m.total == 8 * pb + max(m.generation, m.micro_batch) + m.batch_arrays + m.chunk


def test_with_generation_and_micro_batches_fixed_only_the_per_token_arrays_grow():
    small = _estimate(responses=64, generate_batch=64)
    large = _estimate(responses=512, generate_batch=64)
    assert large.total - small.total == large.batch_arrays - small.batch_arrays
    assert large.batch_arrays - small.batch_arrays == 12 * 448 * 66 * 4  # 48 bytes per token
    # one generate call for the whole batch grows with it
    assert _estimate(responses=512).generation == 8 * small.generation


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
    check_step_fits(need, int(need.total / 0.85), micro_batch_set=True)  # fits: no error


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
