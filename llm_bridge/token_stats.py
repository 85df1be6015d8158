"""Token-level entropy dynamics of a causal language model: the theory's quantities on logits.

Each position of a response is a state s, its next-token distribution π(·|s) = softmax(z) over
the vocabulary V is a softmax policy, and the estimators of ``softmax_theory`` apply unchanged.
Inputs are logits ``[..., V]`` in fp32, fp16 or bf16; arithmetic is in fp32 at least (``dtype``
raises it); rows are processed in chunks so that extra memory stays bounded whatever the batch.

Dimension legend (shared with ``softmax_theory``): B batch, G group, T tokens, V vocabulary.
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so that one chunk holds about this many logits (4 MiB in fp32): two
# work buffers of that size are the whole extra memory, and they stay in the last-level cache
# (measured: 1.6× faster than 16 MiB chunks; benchmarks/bench_token_stats.py).
CHUNK_ELEMENTS = 1 << 20


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape [..., V] with V > 0, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: expected floating-point logits, got {logits.dtype}")


def _compute_dtype(logits: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    base = torch.promote_types(logits.dtype, torch.float32)
    return base if dtype is None else torch.promote_types(base, dtype)


def _rows_per_chunk(n_vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be ≥ 1, got {chunk_size}")
        return chunk_size
    return max(1, CHUNK_ELEMENTS // n_vocab)


def _finite(result: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(result).all():
        raise ValueError(f"{name}: contains NaN or infinite values (the result is not finite)")
    return result


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a[i, v]·b[i, v] per row. On CPU one BLAS dot per row runs 2.7× faster than
    ``torch.linalg.vecdot`` for rows this long (measured, [7 × 151936] fp32); elsewhere vecdot."""
    if a.device.type != "cpu":
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(a[i], b[i]) for i in range(a.shape[0])])


class _Buffers:
    """Two reusable [rows, V] work buffers in the compute dtype (allocated once per call)."""

    def __init__(self, rows: int, n_vocab: int, dtype: torch.dtype, device: torch.device):
        self.shifted = torch.empty(rows, n_vocab, dtype=dtype, device=device)
        self.exp = torch.empty_like(self.shifted)


def _chunk_stats(
    z: torch.Tensor, tokens: torch.Tensor | None, buf: _Buffers
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Entropy and log π(token) of the rows of z [n, V], from one logsumexp per row.

    H = log Σ e^{z−m} − E_π[z − m];  log π(y) = (z_y − m) − log Σ e^{z−m}  (m = max z).
    A narrower input (bf16, fp16) is first widened into the work buffer, where max and
    subtraction are fastest; a compute-dtype input is read once by the subtraction.
    """
    n = z.shape[0]
    if z.dtype == buf.shifted.dtype:
        m = z.amax(dim=-1, keepdim=True)
        shifted = torch.sub(z, m, out=buf.shifted[:n])  # (n, V) z − m
    else:
        shifted = buf.shifted[:n].copy_(z)  # (n, V) widened z
        m = shifted.amax(dim=-1, keepdim=True)
        shifted.sub_(m)
    # torch.exp dominates the cost; numpy's faster SIMD exp in a second thread was tried and
    # lost, since torch's OpenMP workers keep spinning on the cores after each op.
    e = torch.exp(shifted, out=buf.exp[:n])  # (n, V) e^{z − m}
    # a masked (−inf) logit has e = 0; a finite shifted value keeps e·shifted at 0, not NaN
    shifted.clamp_(min=torch.finfo(shifted.dtype).min)
    total = e.sum(dim=-1)
    log_total = total.log()
    entropy = log_total - _rowwise_dot(e, shifted) / total
    logp = None
    if tokens is not None:
        z_y = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(m.dtype)
        logp = z_y - m.squeeze(-1) - log_total
    return entropy, logp


def _stats_forward(
    flat: torch.Tensor, flat_tokens: torch.Tensor, cd: torch.dtype, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and log π(y) of the rows of flat [N, V], chunk by chunk, in dtype cd."""
    entropy = torch.empty(flat.shape[0], dtype=cd, device=flat.device)
    logp = torch.empty_like(entropy)
    buf = _Buffers(max(1, min(rows, flat.shape[0])), flat.shape[-1], cd, flat.device)
    for start in range(0, flat.shape[0], rows):
        sl = slice(start, start + rows)
        entropy[sl], logp[sl] = _chunk_stats(flat[sl], flat_tokens[sl], buf)
    return entropy, logp


def stats_grad_rows(
    z: torch.Tensor,
    tokens: torch.Tensor,
    entropy: torch.Tensor,
    g_entropy: torch.Tensor | None,
    g_logp: torch.Tensor | None,
) -> torch.Tensor:
    """∂/∂z of Σ g_H·H + g_y·log π(y) for rows z [n, V] (compute dtype):

    ∂ log π(y)/∂z = e_y − π;  ∂H/∂z = −π·(log π + H).
    """
    logp_all = torch.log_softmax(z, dim=-1)  # (n, V)
    p = logp_all.exp()
    grad = torch.zeros_like(z)
    if g_entropy is not None:
        grad -= g_entropy.unsqueeze(-1) * p * (logp_all + entropy.unsqueeze(-1))
    if g_logp is not None:
        grad -= g_logp.unsqueeze(-1) * p
        grad.scatter_add_(-1, tokens.unsqueeze(-1), g_logp.unsqueeze(-1))
    return grad


def stats_grad_into(
    z: torch.Tensor,
    tokens: torch.Tensor,
    entropy: torch.Tensor,
    g_entropy: torch.Tensor | None,
    g_logp: torch.Tensor | None,
    work: torch.Tensor,
) -> torch.Tensor:
    """``stats_grad_rows`` in place, with no other [n, V] tensor: z [n, V] (compute dtype) is
    overwritten with the gradient, which is returned; work [n, V] (same dtype) is scratch.

    log π = z − max − log Σe^{z−max} and π = e^{z−max}/Σ in the two buffers, then
    −g_H·π(log π + H) − g_y·π + g_y·e_y into z."""
    m = z.amax(dim=-1, keepdim=True)
    z.sub_(m)
    p = torch.exp(z, out=work)  # (n, V) e^{z − max}
    total = p.sum(dim=-1, keepdim=True)
    logp = z.sub_(total.log())  # (n, V) log π
    p.div_(total)  # π
    if g_entropy is not None:
        logp.add_(entropy.unsqueeze(-1)).mul_(p).mul_(-g_entropy.unsqueeze(-1))
    else:
        logp.zero_()
    grad = logp
    if g_logp is not None:
        grad.sub_(p.mul_(g_logp.unsqueeze(-1)))
        grad.scatter_add_(-1, tokens.unsqueeze(-1), g_logp.unsqueeze(-1).to(grad.dtype))
    return grad


class _EntropyAndLogprobs(torch.autograd.Function):
    """Chunked forward and backward: no [N, V] graph is kept, only the logits themselves."""

    @staticmethod
    def forward(ctx, flat, flat_tokens, cd, rows):
        entropy, logp = _stats_forward(flat.detach(), flat_tokens, cd, rows)
        ctx.save_for_backward(flat, flat_tokens, entropy)
        ctx.cd, ctx.rows = cd, rows
        return entropy, logp

    @staticmethod
    def backward(ctx, g_entropy, g_logp):
        flat, flat_tokens, entropy = ctx.saved_tensors
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            grad[sl] = stats_grad_rows(
                flat[sl].to(ctx.cd),
                flat_tokens[sl],
                entropy[sl],
                None if g_entropy is None else g_entropy[sl],
                None if g_logp is None else g_logp[sl],
            ).to(grad.dtype)
        return grad, None, None, None


def entropy_and_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy H(π(·|s)) in nats and log π(y|s) of the given tokens, in one pass.

    Naive equivalent: ``lp = log_softmax(z); H = −(lp.exp()·lp).sum(−1); lp.gather(−1, y)``.
    Differentiable: when ``logits`` requires grad, the backward pass recomputes the softmax chunk
    by chunk, so no full-vocabulary graph is kept (only the logits, which autograd holds anyway).

    Args:
      logits: z, shape [..., V].
      tokens: y, shape [...], integer ids in [0, V).
      chunk_size: rows per chunk; by default about 1M logits per chunk.
      dtype: compute dtype (at least fp32).
    Returns:
      (entropy, logprobs), each shape [...], in the compute dtype.
    """
    _check_logits(logits)
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"tokens: shape {tuple(tokens.shape)} must equal the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= logits.shape[-1]):
        raise ValueError(f"tokens: ids must lie in [0, {logits.shape[-1]})")
    cd = _compute_dtype(logits, dtype)
    n_vocab = logits.shape[-1]
    flat = logits.reshape(-1, n_vocab)  # (N, V)
    flat_tokens = tokens.reshape(-1).long()
    rows = _rows_per_chunk(n_vocab, chunk_size)
    if logits.requires_grad and torch.is_grad_enabled():
        entropy, logp = _EntropyAndLogprobs.apply(flat, flat_tokens, cd, rows)
    else:
        entropy, logp = _stats_forward(flat, flat_tokens, cd, rows)
    shape = logits.shape[:-1]
    return _finite(entropy.reshape(shape), "logits"), _finite(logp.reshape(shape), "logits")


def token_entropy(
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-token entropy H(π(·|s)) = logsumexp(z) − Σ softmax(z)·z, nats, shape [...].

    With ``mask`` [...] only the valid positions are computed; the others hold 0 and must be
    read through the same mask.
    """
    _check_logits(logits)
    cd = _compute_dtype(logits, dtype)
    n_vocab = logits.shape[-1]
    flat = logits.reshape(-1, n_vocab)
    out = torch.zeros(flat.shape[0], dtype=cd, device=logits.device)
    if mask is not None:
        if mask.shape != logits.shape[:-1]:
            raise ValueError(
                f"mask: shape {tuple(mask.shape)} must equal {tuple(logits.shape[:-1])}"
            )
        idx = mask.reshape(-1).nonzero().squeeze(-1)
    else:
        idx = None
    rows = _rows_per_chunk(n_vocab, chunk_size)
    n = flat.shape[0] if idx is None else idx.numel()
    buf = _Buffers(max(1, min(rows, n)), n_vocab, cd, logits.device)
    for start in range(0, n, rows):
        sel = slice(start, start + rows) if idx is None else idx[start : start + rows]
        out[sel], _ = _chunk_stats(flat[sel], None, buf)
    return _finite(out.reshape(logits.shape[:-1]), "logits")


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """log π(y|s) of the given tokens, shape [...] (one logsumexp per row, chunked)."""
    return entropy_and_logprobs(logits, tokens, chunk_size, dtype)[1]


def _pair_check(
    before: torch.Tensor,
    after: torch.Tensor,
    names: tuple[str, str] = ("logits_before", "logits_after"),
) -> None:
    _check_logits(before, names[0])
    _check_logits(after, names[1])
    if before.shape != after.shape:
        raise ValueError(
            f"{names[1]}: shape {tuple(after.shape)} differs from {names[0]} {tuple(before.shape)}"
        )


def _lemma1_rows(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """−Cov_π(log π, δ) for rows x, δ [n, V] in the compute dtype."""
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    g = logp - torch.linalg.vecdot(p, logp).unsqueeze(-1)  # log π − E log π
    # Cov = E[g δ] − E[g]·E[δ]; E[g] is zero up to rounding, which the second term removes
    return -(torch.linalg.vecdot(p * g, d) - torch.linalg.vecdot(p, g) * torch.linalg.vecdot(p, d))


def _map_row_pairs(
    a: torch.Tensor,
    b: torch.Tensor,
    rows_fn,
    names: tuple[str, str],
    chunk_size: int | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Apply ``rows_fn(a_rows, b_rows) → [n]`` to matching row chunks of two [..., V] tensors,
    in the compute dtype; returns shape [...]."""
    _pair_check(a, b, names)
    cd = _compute_dtype(a, dtype)
    n_vocab = a.shape[-1]
    a2, b2 = a.reshape(-1, n_vocab), b.reshape(-1, n_vocab)
    out = torch.empty(a2.shape[0], dtype=cd, device=a.device)
    rows = _rows_per_chunk(n_vocab, chunk_size)
    for start in range(0, a2.shape[0], rows):
        sl = slice(start, start + rows)
        out[sl] = rows_fn(a2[sl].to(cd), b2[sl].to(cd))
    return _finite(out.reshape(a.shape[:-1]), "/".join(names))


def lemma1_prediction(
    logits_before: torch.Tensor,
    logits_after: torch.Tensor,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """ΔH ≈ −Cov_{π_before}(log π_before, z' − z) per token, over the whole vocabulary.

    Cui et al. 2025, Lemma 1 (``softmax_theory.first_order_entropy_change`` on each row).
    Returns shape [...].
    """
    return _map_row_pairs(
        logits_before,
        logits_after,
        lambda x, xa: _lemma1_rows(x, xa - x),
        ("logits_before", "logits_after"),
        chunk_size,
        dtype,
    )


def _entropy_change_rows(x: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
    """H(xa) − H(x) per row, cancellation-free (see ``token_entropy_change``)."""
    from softmax_theory.estimators import STABLE_CHANGE_MAX_STEP

    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    d = xa - x
    d = d - torch.linalg.vecdot(p, d).unsqueeze(-1)  # centred δ
    small = d.abs().amax(dim=-1) <= STABLE_CHANGE_MAX_STEP
    em1 = torch.expm1(torch.where(small.unsqueeze(-1), d, torch.zeros_like(d)))
    m = torch.linalg.vecdot(p, em1)  # Z − 1
    dp = p * (em1 - m.unsqueeze(-1)) / (1 + m.unsqueeze(-1))  # π' − π
    g = logp - torch.linalg.vecdot(p, logp).unsqueeze(-1)
    change = -torch.linalg.vecdot(dp, g) - torch.linalg.vecdot(p + dp, d) + torch.log1p(m)
    if bool(small.all()):
        return change
    h_after = torch.logsumexp(xa, -1) - torch.linalg.vecdot(torch.softmax(xa, -1), xa)
    h_before = torch.logsumexp(x, -1) - torch.linalg.vecdot(p, x)
    return torch.where(small, change, h_after - h_before)


def token_entropy_change(
    logits_before: torch.Tensor,
    logits_after: torch.Tensor,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """Measured ΔH = H(softmax(z')) − H(softmax(z)) per token, shape [...].

    Uses the cancellation-free form of ``softmax_theory.entropy_change`` (docs/theory.md,
    eq. 11): with d = δ − E_π δ and m = E_π[e^d − 1], π' − π = π(e^d − 1 − m)/(1 + m) and
    ΔH = −Σ(π' − π)(log π − E log π) − Σ π'·d + log(1 + m). Rows whose centred change exceeds
    ``softmax_theory.estimators.STABLE_CHANGE_MAX_STEP`` use the plain difference. float64 by
    default: a probe's per-token changes are often below fp32's resolution of H.
    """
    return _map_row_pairs(
        logits_before,
        logits_after,
        _entropy_change_rows,
        ("logits_before", "logits_after"),
        chunk_size,
        dtype,
    )


# The per-token quantities the entropy probe measures, in this order (``token_probe_stats``).
PROBE_FIELDS = (
    "entropy",
    "logp",
    "delta_entropy",
    "pred_lemma1",
    "score",
    "pred_jvp",
)


class ProbeWork:
    """The work buffers of the probe's fused rows, for up to ``rows`` rows at a time, allocated
    once and reused by every chunk: a fresh pair per chunk leaves freed blocks behind in the C
    allocator's heap, and the process's resident memory then climbs by about a chunk per chunk
    (measured: 0.6 MB per row at V = 151,936, 2.5 GB over 4,096 tokens)."""

    def __init__(self, rows: int, n_vocab: int, dtype: torch.dtype, device: torch.device):
        self.rows, self.dtype = rows, dtype
        self.right = torch.empty(rows, 4, n_vocab, dtype=dtype, device=device)  # (rows, 4, V)
        self.left = torch.empty(rows, 3, n_vocab, dtype=dtype, device=device)  # (rows, 3, V)

    @property
    def nbytes(self) -> int:
        return self.right.nbytes + self.left.nbytes


def probe_work_bytes(rows: int, n_vocab: int, dtype: torch.dtype = torch.float64) -> int:
    """The bytes of a ``ProbeWork`` for ``rows`` rows (the memory model's term for it)."""
    return 7 * rows * n_vocab * torch.empty((), dtype=dtype).element_size()


def probe_rows_per_chunk(n_vocab: int, chunk_size: int | None = None) -> int:
    """Rows per chunk of ``token_probe_stats`` at a vocabulary of ``n_vocab``."""
    return _rows_per_chunk(n_vocab, chunk_size)


def _probe_rows(
    x: torch.Tensor,
    xa: torch.Tensor,
    dz: torch.Tensor | None,
    tokens: torch.Tensor,
    work: ProbeWork,
) -> torch.Tensor:
    """The probe's per-token quantities for rows x (before), xa (after) and dz (a first-order
    logit change, e.g. J·Δθ), all [n, V] in any float dtype, computed in ``dtype``; returns
    [n, 6] in PROBE_FIELDS order (pred_jvp is NaN when dz is None):

    - entropy H(z) and log π(y);
    - delta_entropy: H(z') − H(z), cancellation-free (``token_entropy_change``);
    - pred_lemma1: −Cov_π(log π, z' − z) (Lemma 1); pred_jvp: −Cov_π(log π, dz);
    - score: π(y)(log π(y) + H) − Cov_π(log π, π), Lemma 1 for the score-function step
      Δz_a = 1[a = y] − π_a (so A·score estimates −ΔH of a one-token update).

    Fused, with one exp, one expm1 and one batched product (the slow reference, one softmax and
    one reduction per quantity, is ``llm_bridge.reference.naive_probe_rows``).

    With u = x − max x, e = e^u, s = Σe, c = Σe·u/s: H = log s − c and g = u − c = log π − E log π.
    The centred change d = (xa − x) − E_π(xa − x), [dz], e^d − 1 (zeroed on rows past
    ``STABLE_CHANGE_MAX_STEP``, which take the plain difference) and g are stacked on the right,
    e, e·g and e·(e^d − 1) on the left: one ``bmm`` gives the E_π-products the six fields need
    (every pass over V is memory-bound, so each buffer is written once and read by the product).
    """
    from softmax_theory.estimators import STABLE_CHANGE_MAX_STEP

    n, dtype = x.shape[0], work.dtype
    k = 3 if dz is None else 4  # right-hand rows: d, [dz], e^d − 1, g
    right = work.right[:n, :k]  # (n, k, V)
    left = work.left[:n]  # (n, 3, V)
    u = right[:, k - 1].copy_(x)
    u.sub_(u.amax(dim=-1, keepdim=True))  # (n, V) u = x − max
    e = torch.exp(u, out=left[:, 0])  # (n, V)
    s = e.sum(-1)
    log_s = s.log()
    c = _rowwise_dot(e, u) / s  # E_π u
    entropy = log_s - c
    logp_y = u.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_s
    d = right[:, 0].copy_(xa)
    d.sub_(x)  # (n, V) xa − x, subtracted in ``dtype``
    d.sub_((_rowwise_dot(e, d) / s).unsqueeze(-1))  # centred
    small = torch.maximum(-d.amin(dim=-1), d.amax(dim=-1)) <= STABLE_CHANGE_MAX_STEP
    em1 = torch.expm1(d, out=right[:, k - 2])
    if not bool(small.all()):
        em1[~small] = 0.0
    g = u.sub_(c.unsqueeze(-1))  # log π − E log π
    torch.mul(e, g, out=left[:, 1])
    torch.mul(e, em1, out=left[:, 2])
    if dz is not None:
        right[:, 1].copy_(dz)
    prod = torch.bmm(left, right.transpose(1, 2)) / s.view(n, 1, 1)  # (n, 3, k) E_π products
    p_d, m, p_g = prod[:, 0, 0], prod[:, 0, k - 2], prod[:, 0, k - 1]
    pg_d, pg_em1 = prod[:, 1, 0], prod[:, 1, k - 2]
    pem1_d = prod[:, 2, 0]

    def lemma(pg_v: torch.Tensor, p_v: torch.Tensor) -> torch.Tensor:
        return -(pg_v - p_g * p_v)  # −Cov_π(log π, v); E_π g is zero up to rounding

    cov_logp_p = _rowwise_dot(left[:, 1], e) / (s * s)  # Σ π²·g = Cov_π(log π, π)
    score = logp_y.exp() * (logp_y + entropy) - cov_logp_p
    change = -(pg_em1 - m * p_g) / (1 + m) - (p_d + (pem1_d - m * p_d) / (1 + m)) + torch.log1p(m)
    if not bool(small.all()):
        big = (~small).nonzero().squeeze(-1)
        za = xa[big].to(dtype)
        h_after = torch.logsumexp(za, -1) - torch.linalg.vecdot(torch.softmax(za, -1), za)
        change[big] = h_after - entropy[big]
    if dz is None:
        jvp_pred = torch.full_like(entropy, float("nan"))
    else:
        jvp_pred = lemma(prod[:, 1, 1], prod[:, 0, 1])
    cols = (entropy, logp_y, change, lemma(pg_d, p_d), score, jvp_pred)
    return torch.stack(cols, dim=-1)


def token_probe_stats(
    logits_before: torch.Tensor,
    logits_after: torch.Tensor,
    tokens: torch.Tensor,
    tangent: torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    work: ProbeWork | None = None,
) -> dict[str, torch.Tensor]:
    """Every per-token quantity of the entropy probe in one chunked pass over the rows.

    Args:
      logits_before, logits_after: z and z', shape [..., V].
      tokens: the sampled tokens y, shape [...].
      tangent: a first-order logit change J·Δθ, [..., V], or None.
      dtype: compute dtype (float64 by default: per-token changes are often below fp32's
        resolution of H).
      work: work buffers to reuse (a caller that calls chunk after chunk keeps one); by default
        one is allocated for this call. Its dtype is the compute dtype.
    Returns:
      ``PROBE_FIELDS`` → tensors of shape [...] (``pred_jvp`` only with a tangent).
    """
    _pair_check(logits_before, logits_after)
    if tangent is not None:
        _pair_check(logits_before, tangent, ("logits_before", "tangent"))
    n_vocab = logits_before.shape[-1]
    flat = [t.reshape(-1, n_vocab) for t in (logits_before, logits_after)]
    flat_t = None if tangent is None else tangent.reshape(-1, n_vocab)
    flat_y = tokens.reshape(-1).long()
    n = flat_y.shape[0]
    rows = _rows_per_chunk(n_vocab, chunk_size)
    if work is None:
        work = ProbeWork(max(1, min(rows, n)), n_vocab, dtype, flat_y.device)
    rows = min(rows, work.rows)
    out = torch.empty(n, len(PROBE_FIELDS), dtype=work.dtype, device=flat_y.device)
    for start in range(0, out.shape[0], rows):
        sl = slice(start, start + rows)
        dz = None if flat_t is None else flat_t[sl]
        out[sl] = _probe_rows(flat[0][sl], flat[1][sl], dz, flat_y[sl], work)
    shape = logits_before.shape[:-1]
    stats = {k: out[:, i].reshape(shape) for i, k in enumerate(PROBE_FIELDS)}
    if tangent is None:
        del stats["pred_jvp"]
    for key, value in stats.items():
        _finite(value, key)
    return stats


# ---------------------------------------------------------------------------------------------
# Covariance estimators over sampled tokens
# ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·mask / Σ mask (over ``dim`` or everything). Raises when no position is valid."""
    m = mask.to(x.dtype)
    count = m.sum() if dim is None else m.sum(dim)
    if dim is None and count == 0:
        raise ValueError("mask: no valid token")
    total = (x * m).sum() if dim is None else (x * m).sum(dim)
    return total / count if dim is None else total / count.clamp_min(1)


def _check_same(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name}: shape {tuple(x.shape)} must equal {tuple(ref.shape)}")


def token_covariance(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """cov_t = (log π_t − mean log π)·(A_t − mean A), means over the valid tokens; 0 elsewhere.

    Cui et al. 2025, §4: the covariance Clip-Cov and KL-Cov select on. Inputs [B, T] (any shape);
    log-probs are detached.
    """
    _check_same("advantages", advantages, logprobs)
    _check_same("mask", mask, logprobs)
    lp = logprobs.detach()
    adv = advantages.detach().to(lp.dtype)
    cov = (lp - masked_mean(lp, mask)) * (adv - masked_mean(adv, mask))
    return torch.where(mask.bool(), cov, torch.zeros_like(cov))


def flat_group_covariance(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response: torch.Tensor,
    group: torch.Tensor,
) -> torch.Tensor:
    """``group_covariance`` from per-token values of valid tokens: logprobs, advantages and the
    response index of each token [n], and the prompt group of each response [n_responses]."""
    n_resp = group.numel()
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    ones = torch.ones(response.numel(), dtype=dtype)
    length = torch.zeros(n_resp, dtype=dtype).index_add_(0, response, ones)
    if (length == 0).any():
        raise ValueError("mask: a response has no valid token")
    seq_lp = torch.zeros(n_resp, dtype=dtype).index_add_(0, response, logprobs.detach().to(dtype))
    seq_adv = torch.zeros(n_resp, dtype=dtype).index_add_(0, response, advantages.to(dtype))
    seq_lp, seq_adv = seq_lp / length, seq_adv / length
    _, inverse = torch.unique(group, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    count = torch.zeros(n_groups, dtype=dtype).index_add_(0, inverse, torch.ones_like(seq_lp))
    mean_lp = torch.zeros_like(count).index_add_(0, inverse, seq_lp) / count
    mean_adv = torch.zeros_like(count).index_add_(0, inverse, seq_adv) / count
    prod = (seq_lp - mean_lp[inverse]) * (seq_adv - mean_adv[inverse])
    cov = torch.zeros_like(count).index_add_(0, inverse, prod) / count
    return cov.mean()


def group_covariance(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
) -> torch.Tensor:
    """The paper's Fig. 8 estimator: within each prompt group, the covariance between a
    response's length-normalised log-probability and its advantage; averaged over groups.

    Args:
      logprobs, advantages, mask: [B, T] (one row per response).
      group: [B] prompt index of each response.
    Returns:
      a scalar tensor.
    """
    _check_same("advantages", advantages, logprobs)
    _check_same("mask", mask, logprobs)
    if group.shape != logprobs.shape[:1]:
        raise ValueError(f"group: shape {tuple(group.shape)} must be ({logprobs.shape[0]},)")
    valid = mask.bool()
    response = valid.nonzero()[:, 0]
    return flat_group_covariance(
        logprobs.detach()[valid], advantages.detach()[valid], response, group
    )
