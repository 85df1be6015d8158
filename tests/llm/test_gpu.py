"""The CUDA paths, against the float64 reference on the same inputs: the chunked kernels with
fp32 and bf16 logits, the fused head in bf16, and a probed GRPO step with bf16 weights, whose
statistics are computed in fp32/fp64. Run by ``scripts/gpu_check.sh`` (``pytest -m gpu``);
skipped where there is no CUDA device."""

import json

import numpy as np
import pytest
import torch

from llm_bridge import ProbedGRPOTrainer, TrainConfig, load_task
from llm_bridge.head import head_entropy_and_logprobs
from llm_bridge.token_stats import entropy_and_logprobs, token_probe_stats
from softmax_theory.attribution import CLIP_PARTS, SIGN_PARTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _reference(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive float64 entropy and log π(y) on the CPU, from the very values the kernel read."""
    lp = torch.log_softmax(z.double().cpu(), -1)
    return -(lp.exp() * lp).sum(-1), lp.gather(-1, y.cpu().unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_vocab", [17, 151_936])
def test_chunked_kernels_on_cuda_equal_the_float64_reference(dtype, n_vocab):
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (4 * torch.randn(6, 40, n_vocab, generator=g, device="cuda")).to(dtype)
    y = torch.randint(0, n_vocab, (6, 40), generator=g, device="cuda")
    h, lp = entropy_and_logprobs(z, y)
    assert h.dtype == torch.float32  # statistics in fp32 at least, whatever the logits' dtype
    h_ref, lp_ref = _reference(z, y)
    torch.testing.assert_close(h.double().cpu(), h_ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(lp.double().cpu(), lp_ref, rtol=2e-5, atol=2e-5)
    h64, lp64 = entropy_and_logprobs(z, y, dtype=torch.float64)
    torch.testing.assert_close(h64.cpu(), h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lp64.cpu(), lp_ref, rtol=1e-10, atol=1e-10)


def test_fused_head_in_bf16_equals_the_float64_reference_and_its_gradient():
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(300, 128, generator=g, device="cuda").to(torch.bfloat16)
    weight = (0.05 * torch.randn(151_936, 128, generator=g, device="cuda")).to(torch.bfloat16)
    y = torch.randint(0, 151_936, (300,), generator=g, device="cuda")
    hidden.requires_grad_(True)
    h, lp = head_entropy_and_logprobs(hidden, weight, y)
    z = hidden.detach().double().cpu() @ weight.double().cpu().T
    h_ref, lp_ref = _reference(z, y)
    # the head's matmul runs in bf16 on the GPU: its rounding, not the reduction, sets the error
    torch.testing.assert_close(h.double().cpu(), h_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lp.double().cpu(), lp_ref, rtol=2e-2, atol=2e-2)
    (h.sum() + lp.sum()).backward()
    assert torch.isfinite(hidden.grad).all()


def test_probe_statistics_on_cuda_equal_the_cpu_in_float64():
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(3, 7, 1000, generator=g, dtype=torch.float64)
    z1 = z0 + 0.01 * torch.randn(z0.shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 1000, (3, 7), generator=g)
    cpu = token_probe_stats(z0, z1, y)
    gpu = token_probe_stats(z0.cuda(), z1.cuda(), y.cuda())
    for key, value in cpu.items():
        torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-9, atol=1e-12)


def test_a_probed_step_with_bf16_weights(tiny_model, tmp_path):
    """On CUDA the trainer loads bf16 weights; the probe's statistics stay fp32/fp64, the record
    is finite, the attribution sums to pred_lemma1, and the step's peak GPU memory is logged."""
    cfg = TrainConfig(
        model=str(tiny_model),
        device="cuda",
        steps=2,
        prompts_per_step=8,
        group_size=4,
        val_every=0,
        checkpoint_every=0,
        warmup_steps=0,
        micro_batch_size=8,
    )
    trainer = ProbedGRPOTrainer(cfg, tmp_path / "run", load_task(cfg))
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").open()]
    for r in records:
        numbers = [v for v in r.values() if isinstance(v, float)]
        assert np.isfinite(numbers).all()
        assert r["memory/gpu_peak_gib"] > 0
        for family in (SIGN_PARTS, CLIP_PARTS):
            assert sum(r[k] for k in family) == pytest.approx(r["pred_lemma1"], abs=1e-9)
