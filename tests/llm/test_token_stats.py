"""Token statistics against the naive formula (shapes × chunks × dtypes) and the theory."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import softmax_theory as smt
from llm_bridge import (
    entropy_and_logprobs,
    group_covariance,
    lemma1_prediction,
    token_covariance,
    token_entropy,
    token_entropy_change,
    token_logprobs,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(7,), (3, 5), (2, 4, 33), (1, 1, 2)]


def _naive(logits, tokens):
    lp = torch.log_softmax(logits.double(), dim=-1)
    h = -(lp.exp() * lp).sum(-1)
    return h, lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=g)).to(dtype)
    tokens = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return logits, tokens


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_and_logprobs_match_the_naive_formula(shape, chunk, dtype):
    logits, tokens = _data(shape, dtype)
    h, lp = entropy_and_logprobs(logits, tokens, chunk_size=chunk)
    ref_h, ref_lp = _naive(logits, tokens)  # of the same (rounded) low-precision logits
    assert h.dtype == torch.float32 and h.shape == shape[:-1]
    torch.testing.assert_close(h.double(), ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(token_entropy(logits, chunk_size=chunk), h)
    torch.testing.assert_close(token_logprobs(logits, tokens, chunk_size=chunk), lp)


def test_two_uniform_tokens_have_entropy_log2():
    h = token_entropy(torch.zeros(3, 2))
    torch.testing.assert_close(h, torch.full((3,), float(np.log(2))))
    lp = token_logprobs(torch.zeros(3, 4), torch.tensor([0, 1, 3]))
    torch.testing.assert_close(lp, torch.full((3,), float(np.log(0.25))))


def test_masked_entropy_computes_only_valid_positions():
    logits, _ = _data((4, 6, 11), torch.float32)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    h = token_entropy(logits, mask=mask, chunk_size=2)
    full = token_entropy(logits)
    torch.testing.assert_close(h[mask], full[mask])
    assert (h[~mask] == 0).all()


def test_equal_to_the_theory_in_float64():
    rng = np.random.default_rng(0)
    z = 2.0 * rng.standard_normal((64, 50))
    d = 0.01 * rng.standard_normal((64, 50))
    zt, dt = torch.tensor(z, dtype=torch.float32), torch.tensor(d, dtype=torch.float32)
    # compare against the theory on the same fp32-rounded inputs
    z32, d32 = zt.double().numpy(), (zt + dt).double().numpy() - zt.double().numpy()
    np.testing.assert_allclose(token_entropy(zt).numpy(), smt.entropy(z32), rtol=1e-5)
    np.testing.assert_allclose(
        lemma1_prediction(zt, zt + dt).numpy(),
        smt.first_order_entropy_change(z32, d32),
        rtol=1e-5,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        token_entropy_change(zt, zt + dt).numpy(), smt.entropy_change(z32, d32), rtol=1e-10
    )


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_lemma1_and_change_chunked_equal_unchunked(chunk):
    logits, _ = _data((3, 5, 40), torch.float32)
    after = logits + 0.05 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        lemma1_prediction(logits, after, chunk_size=chunk), lemma1_prediction(logits, after)
    )
    torch.testing.assert_close(
        token_entropy_change(logits, after, chunk_size=chunk), token_entropy_change(logits, after)
    )


def test_entropy_change_handles_large_steps():
    before = torch.tensor([[0.0, 1.0, 2.0]])
    after = torch.tensor([[0.0, 1.0, 202.0]])
    ref = smt.entropy(after.double().numpy()) - smt.entropy(before.double().numpy())
    np.testing.assert_allclose(token_entropy_change(before, after).numpy(), ref, atol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tokens"):
        entropy_and_logprobs(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="tokens"):
        entropy_and_logprobs(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="logits_after"):
        lemma1_prediction(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(torch.zeros(2, 3), chunk_size=0)
    with pytest.raises(ValueError, match="floating"):
        token_entropy(torch.zeros(2, 3, dtype=torch.long))


def test_token_covariance_by_hand():
    lp = torch.tensor([[-1.0, -3.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    # valid means: log π −2, A 0 → cov = (1·1, −1·−1) = (1, 1); padding 0
    torch.testing.assert_close(token_covariance(lp, adv, mask), torch.tensor([[1.0, 1.0, 0.0]]))


def test_group_covariance_by_hand():
    # two groups of two responses; response log-probs are token means
    lp = torch.tensor([[-1.0, -1.0], [-3.0, -3.0], [0.0, -2.0], [-1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    group = torch.tensor([0, 0, 1, 1])
    # group 0: lp (−1, −3), A (1, −1) → cov ½[(1)(1) + (−1)(−1)] = 1
    # group 1: lp (−1, −1) → cov 0
    torch.testing.assert_close(group_covariance(lp, adv, mask, group), torch.tensor(0.5))


def test_softmax_theory_imports_without_torch():
    code = "import sys, softmax_theory, softmax_theory.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_masked_logits_match_the_unmasked_support():
    """−inf logits (masked tokens) have probability 0, as in softmax_theory."""
    import softmax_theory as smt

    z = torch.tensor([[1.0, 2.0, float("-inf"), 0.5], [0.3, float("-inf"), -1.0, 2.0]])
    h, lp = entropy_and_logprobs(z, torch.tensor([1, 3]))
    for i in range(2):
        keep = torch.isfinite(z[i])
        assert float(h[i]) == pytest.approx(float(smt.entropy(z[i][keep].numpy())), rel=1e-6)
    assert torch.isfinite(lp).all()


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 0.3])
@pytest.mark.parametrize("with_tangent", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_probe_rows_equal_the_slow_reference(scale, with_tangent, dtype):
    """The probe's fused rows (one exp, one expm1, one batched product) against one textbook
    formula per field in float64, at update scales from a tiny to a large step; a row whose step
    is past the stable bound takes the plain difference in both."""
    from llm_bridge.reference import naive_probe_rows
    from llm_bridge.token_stats import PROBE_FIELDS, token_probe_stats

    g = torch.Generator().manual_seed(1)
    n, v = 9, 4099
    x = (3 * torch.randn(n, v, generator=g)).to(dtype)
    xa = (x.float() + scale * torch.randn(n, v, generator=g)).to(dtype)
    xa[4] = x[4].float() + 80 * torch.randn(v, generator=g)  # past STABLE_CHANGE_MAX_STEP
    dz = (scale * torch.randn(n, v, generator=g)).to(dtype) if with_tangent else None
    y = torch.randint(0, v, (n,), generator=g)
    ref = naive_probe_rows(x, xa, dz, y)
    for chunk in (1, 4, None):
        fast = token_probe_stats(x, xa, y, dz, chunk_size=chunk)
        for i, key in enumerate(PROBE_FIELDS):
            if key == "pred_jvp" and dz is None:
                assert key not in fast
                continue
            want = ref[:, i]
            # the reference's own rounding: a few ulps of the largest term it sums
            tol = 1e-13 * want.abs().max()
            assert torch.allclose(fast[key], want, rtol=1e-10, atol=float(tol)), key


def test_fused_probe_rows_at_the_real_vocabulary():
    """V = 151,936, where a row's sums run over the whole vocabulary."""
    from llm_bridge.reference import naive_probe_rows
    from llm_bridge.token_stats import PROBE_FIELDS, token_probe_stats

    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(3, 151_936, generator=g)
    xa = x + 1e-4 * torch.randn(3, 151_936, generator=g)
    dz = 1e-4 * torch.randn(3, 151_936, generator=g)
    y = torch.randint(0, 151_936, (3,), generator=g)
    ref = naive_probe_rows(x, xa, dz, y)
    fast = token_probe_stats(x, xa, y, dz)
    for i, key in enumerate(PROBE_FIELDS):
        assert torch.allclose(fast[key], ref[:, i], rtol=1e-9, atol=1e-15), key


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 5, None])
def test_the_fused_head_and_its_backward_equal_autograd_on_the_logits(
    temperature, dtype, chunk_rows
):
    """``head_entropy_and_logprobs`` (buffers reused chunk by chunk, the backward in place)
    against autograd through the naive formula on the full logits."""
    from llm_bridge.head import head_entropy_and_logprobs

    g = torch.Generator().manual_seed(3)
    n, d, v = 13, 8, 517
    hidden = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(v, d, generator=g).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    gh, gy = torch.randn(n, generator=g), torch.randn(n, generator=g)
    ent, lp = head_entropy_and_logprobs(hidden, weight, y, temperature, chunk_rows)
    ((ent * gh).sum() + (lp * gy).sum()).backward()
    fast = (ent.detach(), lp.detach(), hidden.grad.float(), weight.grad.float())
    hidden.grad = weight.grad = None
    z = torch.nn.functional.linear(hidden, weight).float() / temperature
    logp = torch.log_softmax(z, -1)
    ent_ref = -(logp.exp() * logp).sum(-1)
    lp_ref = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ((ent_ref * gh).sum() + (lp_ref * gy).sum()).backward()
    ref = (ent_ref.detach(), lp_ref.detach(), hidden.grad.float(), weight.grad.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(fast, ref, strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol)


def test_stats_grad_into_equals_stats_grad_rows():
    from llm_bridge.token_stats import stats_grad_into, stats_grad_rows

    g = torch.Generator().manual_seed(4)
    z = 3 * torch.randn(6, 301, generator=g)
    y = torch.randint(0, 301, (6,), generator=g)
    h, _ = entropy_and_logprobs(z, y)
    for gh, gy in (
        (torch.randn(6, generator=g), torch.randn(6, generator=g)),
        (None, torch.ones(6)),
        (torch.ones(6), None),
    ):
        want = stats_grad_rows(z, y, h, gh, gy)
        got = stats_grad_into(z.clone(), y, h, gh, gy, torch.empty_like(z))
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
