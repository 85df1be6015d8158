"""The LM head fused with the token statistics: per-token entropy and log π(y) from hidden states,
without a full-vocabulary tensor larger than one chunk of rows.

A causal LM's logits are z = h·Wᵀ (h the final hidden state, W the head's weight [V, d]); at a
real vocabulary (V ≈ 152k) the logits of a long response dwarf everything else the trainer holds.
``head_entropy_and_logprobs`` projects a chunk of rows at a time, reduces it to H and log π(y)
(``llm_bridge.token_stats``), and recomputes each chunk in the backward pass, so the extra memory is
O(chunk × V) whatever the batch. ``head_probe_stats`` does the same for the entropy probe, with the
logits before and after the update and their first-order change (J·Δθ) formed chunk by chunk.

Naive equivalent: ``entropy_and_logprobs((h @ W.T).float() / T, y)``; tests hold the two equal.
"""

from __future__ import annotations

import torch

from llm_bridge.token_stats import (
    ProbeWork,
    entropy_and_logprobs,
    probe_rows_per_chunk,
    stats_grad_into,
    token_probe_stats,
)

# Rows per chunk are chosen so that one chunk of logits holds about this many entries (32 MiB in
# fp32): large enough for an efficient matrix product, small beside a model's activations.
HEAD_CHUNK_ELEMENTS = 1 << 23


def head_rows(n_vocab: int, chunk_rows: int | None = None) -> int:
    """Rows per chunk for a vocabulary of ``n_vocab``."""
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows: must be ≥ 1, got {chunk_rows}")
        return chunk_rows
    return max(1, HEAD_CHUNK_ELEMENTS // n_vocab)


class HeadWork:
    """Reused [rows, V] buffers for the head's products, one per name, in the product's dtype,
    and fp32 copies where that dtype is narrower: allocating them chunk by chunk leaves the C
    allocator's heap fragmented, and the resident memory climbs by about a chunk per chunk
    (see ``token_stats.ProbeWork``)."""

    def __init__(self, rows: int, weight: torch.Tensor, names: tuple[str, ...]):
        n_vocab, dt, dev = weight.shape[0], weight.dtype, weight.device
        wide = torch.promote_types(dt, torch.float32)
        self.products = {k: torch.empty(rows, n_vocab, dtype=dt, device=dev) for k in names}
        self.wide = (
            {}
            if wide == dt
            else {k: torch.empty(rows, n_vocab, dtype=wide, device=dev) for k in names}
        )

    def product(self, name: str, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """h·Wᵀ into the buffer ``name``: [n, d], [V, d] → [n, V] (the product's dtype)."""
        return torch.mm(hidden, weight.T, out=self.products[name][: hidden.shape[0]])

    def logits(self, name: str, n: int, temperature: float) -> torch.Tensor:
        """The buffer ``name``'s first n rows as z/T in fp32 at least (the product is in place)."""
        z = self.products[name][:n]
        if name in self.wide:
            z = self.wide[name][:n].copy_(z)
        return z if temperature == 1.0 else z.div_(temperature)


def head_work_bytes(rows: int, n_vocab: int, dtype: torch.dtype, buffers: int) -> int:
    """The bytes of a ``HeadWork`` of ``buffers`` names (the memory model's term for it)."""
    size = torch.empty((), dtype=dtype).element_size()
    wide = torch.empty((), dtype=torch.promote_types(dtype, torch.float32)).element_size()
    per = size + (wide if wide != size else 0)
    return buffers * rows * n_vocab * per


class _HeadStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, rows):
        n = hidden.shape[0]
        cd = torch.promote_types(weight.dtype, torch.float32)
        entropy = torch.empty(n, dtype=cd, device=hidden.device)
        logp = torch.empty_like(entropy)
        buf = HeadWork(max(1, min(rows, n)), weight, ("z",))
        with torch.no_grad():
            for start in range(0, n, rows):
                sl = slice(start, start + rows)
                m = buf.product("z", hidden[sl], weight).shape[0]
                z = buf.logits("z", m, temperature)  # (rows, V)
                entropy[sl], logp[sl] = entropy_and_logprobs(z, tokens[sl])
        ctx.save_for_backward(hidden, weight, tokens, entropy)
        ctx.temperature, ctx.rows = temperature, rows
        return entropy, logp

    @staticmethod
    def backward(ctx, g_entropy, g_logp):
        hidden, weight, tokens, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if need_h else None
        # the head's gradient is accumulated in fp32 at least, then cast to the weight's dtype
        grad_w = (
            torch.zeros(weight.shape, dtype=entropy.dtype, device=weight.device) if need_w else None
        )
        n, rows, cd = hidden.shape[0], ctx.rows, entropy.dtype
        buf = HeadWork(max(1, min(rows, n)), weight, ("z",))
        scratch = torch.empty(max(1, min(rows, n)), weight.shape[0], dtype=cd, device=weight.device)
        narrow = weight.dtype != cd  # the gradient goes back to the weight's dtype for the products
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            m = buf.product("z", hidden[sl], weight).shape[0]
            z = buf.logits("z", m, ctx.temperature)  # (m, V), overwritten by its gradient
            g_z = stats_grad_into(
                z,
                tokens[sl],
                entropy[sl],
                None if g_entropy is None else g_entropy[sl],
                None if g_logp is None else g_logp[sl],
                scratch[:m],
            )
            if ctx.temperature != 1.0:
                g_z.div_(ctx.temperature)  # ∂/∂(h·Wᵀ)
            if narrow:
                g_z = buf.products["z"][:m].copy_(g_z)
            if need_h:
                torch.mm(g_z, weight, out=grad_h[sl])  # (m, d)
            if need_w:
                if narrow:
                    grad_w += (g_z.T @ hidden[sl]).to(grad_w.dtype)  # (V, d)
                else:
                    grad_w.addmm_(g_z.T, hidden[sl])
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def head_entropy_and_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H(π(·|s)) and log π(y|s) with π = softmax(h·Wᵀ/T), chunked in both passes.

    Args:
      hidden: h, shape [N, d] (with gradient in the loss path).
      weight: the head's W, shape [V, d].
      tokens: y, shape [N].
      temperature: T, the sampling temperature the policy is defined at.
      chunk_rows: rows per chunk (default: about 8M logits per chunk).
    Returns:
      (entropy, logprobs), each [N], fp32 at least; differentiable w.r.t. hidden and weight.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden: [N, d] and weight: [V, d] expected, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if tokens.shape != hidden.shape[:1]:
        raise ValueError(f"tokens: shape {tuple(tokens.shape)} must be ({hidden.shape[0]},)")
    rows = head_rows(weight.shape[0], chunk_rows)
    return _HeadStats.apply(hidden, weight, tokens.long(), float(temperature), rows)


def head_probe_stats(
    hidden_before: torch.Tensor,
    weight_before: torch.Tensor,
    hidden_after: torch.Tensor,
    weight_after: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    hidden_tangent: torch.Tensor | None = None,
    weight_tangent: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """``token_probe_stats`` with the logits formed from hidden states chunk by chunk.

    z = h·Wᵀ/T before, z' = h'·W'ᵀ/T after, and the first-order change of the logits along the
    update, J·Δθ = (dh·Wᵀ + h·dWᵀ)/T (product rule), from the tangents dh and dW.

    Args: hidden states [N, d], weights [V, d], tokens [N]; the tangents, when given, [N, d] and
    [V, d]. Returns ``token_probe_stats``'s fields, each [N], float64.
    """
    rows = head_rows(weight_before.shape[0], chunk_rows)
    n = hidden_before.shape[0]
    with_tangent = hidden_tangent is not None
    names = ("before", "after", "tangent") if with_tangent else ("before", "after")
    buf = HeadWork(max(1, min(rows, n)), weight_before, names)
    n_vocab = weight_before.shape[0]
    work = ProbeWork(
        min(probe_rows_per_chunk(n_vocab), max(1, n)), n_vocab, torch.float64, weight_before.device
    )
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, n, rows):
        sl = slice(start, start + rows)
        m = hidden_before[sl].shape[0]
        buf.product("before", hidden_before[sl], weight_before)
        buf.product("after", hidden_after[sl], weight_after)
        dz = None
        if with_tangent:
            prod = buf.product("tangent", hidden_tangent[sl], weight_before)
            if weight_tangent is not None:
                prod.addmm_(hidden_before[sl], weight_tangent.T)  # product rule: + h·dWᵀ
            dz = buf.logits("tangent", m, temperature)
        z, z_after = buf.logits("before", m, temperature), buf.logits("after", m, temperature)
        parts.append(token_probe_stats(z, z_after, tokens[sl], dz, work=work))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
