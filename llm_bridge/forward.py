"""Forward passes on the response positions of a rollout batch, one micro-batch at a time.

Both engines call these (our trainer and the TRL integration), so "log π", "entropy" and the
probe's logits mean one thing: the policy is softmax(z/T) at the sampling temperature T, as TRL
and verl define it. Two paths give the same numbers:

- fused (the default when the model's head is a plain linear layer): the backbone's hidden states,
  then ``llm_bridge.head`` projects chunks of rows through the head, so no [b, R, V] tensor exists;
- logits (any other model, and the slow reference): the model's own forward, one micro-batch of
  [b, R, V] logits at a time.

``params`` (a dict of parameter tensors by name) evaluates the model at other parameters than its
own through ``torch.func.functional_call``: the probe uses it for θ_old after the update.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, jvp

from llm_bridge.head import head_entropy_and_logprobs
from llm_bridge.rollout import Rollouts
from llm_bridge.token_stats import entropy_and_logprobs

Params = dict[str, torch.Tensor]

# Config attributes that rescale or soft-cap the logits after the head's product: a model with any
# of them set takes the logits path (the fused path computes exactly h·Wᵀ).
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass(frozen=True)
class HeadSpec:
    """Where a causal LM's backbone and head live, for the fused path."""

    backbone_prefix: str  # the backbone's name among the model's modules ("model" for Llama)
    weight_name: str  # the head weight's name in model.named_parameters()


def head_spec(model) -> HeadSpec | None:
    """The fused path's view of ``model``, or None when its head is not a plain linear layer."""
    head = model.get_output_embeddings()
    prefix = getattr(model, "base_model_prefix", "")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if (
        not isinstance(head, torch.nn.Linear)
        or head.bias is not None
        or not prefix
        or not isinstance(getattr(model, prefix, None), torch.nn.Module)
        or any(getattr(config, attr, None) not in (None, 1, 1.0) for attr in LOGIT_TRANSFORMS)
    ):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    return HeadSpec(backbone_prefix=prefix, weight_name=names[id(head.weight)])


def micro_slices(n_rows: int, size: int | None) -> list[slice]:
    """Consecutive row slices of at most ``size`` rows (all rows when ``size`` is None)."""
    size = n_rows if size is None else size
    if size < 1:
        raise ValueError(f"micro_batch_size: must be ≥ 1, got {size}")
    return [slice(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


def _sub_params(params: Params, prefix: str) -> Params:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def _inputs(roll: Rollouts, rows: slice) -> dict[str, torch.Tensor]:
    ids, mask = roll.input_ids[rows], roll.attention_mask[rows]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}


def response_hidden(
    model, roll: Rollouts, rows: slice = slice(None), params: Params | None = None
) -> torch.Tensor:
    """Final hidden states that predict each response token: [b, R, d] (fused path)."""
    spec = head_spec(model)
    if spec is None:
        raise ValueError("model: its head is not a plain linear layer; use response_logits")
    backbone = getattr(model, spec.backbone_prefix)
    kwargs = _inputs(roll, rows)
    if params is None:
        out = backbone(**kwargs, use_cache=False)
    else:
        sub = _sub_params(params, spec.backbone_prefix)
        out = functional_call(backbone, sub, (), {**kwargs, "use_cache": False})
    p = roll.prompt_length
    return out.last_hidden_state[:, p - 1 : -1]  # position t predicts token t + 1


def response_logits(
    model,
    roll: Rollouts,
    temperature: float = 1.0,
    rows: slice = slice(None),
    params: Params | None = None,
) -> torch.Tensor:
    """Logits ÷ T that predict each response token: [b, R, V], fp32 at least (logits path)."""
    kwargs = {**_inputs(roll, rows), "logits_to_keep": roll.response_ids.shape[1] + 1}
    out = model(**kwargs) if params is None else functional_call(model, params, (), kwargs)
    logits = out.logits[:, :-1]  # position t predicts token t + 1
    return logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature


def head_weight(model, params: Params | None = None) -> torch.Tensor:
    """The head's W [V, d], the model's own or the one in ``params``."""
    spec = head_spec(model)
    own = model.get_output_embeddings().weight
    return own if params is None or spec is None else params[spec.weight_name]


def response_entropy_logp(
    model,
    roll: Rollouts,
    rows: slice = slice(None),
    temperature: float = 1.0,
    params: Params | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy H(π(·|s)) and log π(y|s) on the response positions of ``rows``:
    ([b, R], [b, R]), fp32 at least; differentiable when grad is enabled.

    ``fused``: force the fused (True) or the logits (False) path; by default fused when possible.
    """
    tokens = roll.response_ids[rows]
    use_fused = head_spec(model) is not None if fused is None else fused
    if use_fused:
        hidden = response_hidden(model, roll, rows, params)
        b, r, d = hidden.shape
        ent, logp = head_entropy_and_logprobs(
            hidden.reshape(b * r, d), head_weight(model, params), tokens.reshape(-1), temperature
        )
        return ent.reshape(b, r), logp.reshape(b, r)
    logits = response_logits(model, roll, temperature, rows, params)
    return entropy_and_logprobs(logits, tokens)


@torch.no_grad()
def stream_entropy_logp(
    model,
    roll: Rollouts,
    micro_batch_size: int | None,
    temperature: float = 1.0,
    rows: slice = slice(None),
    params: Params | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``response_entropy_logp`` over ``rows`` of the batch, one micro-batch at a time:
    ([n, R], [n, R]); at ``params`` (by name) in place of the model's own when given."""
    idx = range(roll.input_ids.shape[0])[rows]
    parts = [
        response_entropy_logp(
            model, roll, slice(idx.start + s.start, idx.start + s.stop), temperature, params
        )
        for s in micro_slices(len(idx), micro_batch_size)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# The forward hook transformers puts on the input embeddings under gradient checkpointing.
REQUIRE_GRADS_HOOK = "make_inputs_require_grads"


@contextmanager
def jvp_ready(model):
    """Make ``model`` fit for forward-mode AD, and restore it afterwards: fused attention kernels
    (SDPA, flash) have no forward-mode derivative, so attention runs eager inside; and the hook
    that gradient checkpointing puts on the input embeddings (``requires_grad_`` on their output)
    is not allowed inside a functorch transform, so it is lifted. (Each re-enabling of
    checkpointing adds another such hook, so every one of them is lifted, not only the last.)"""
    attn = model.config._attn_implementation
    hooks = model.get_input_embeddings()._forward_hooks
    lifted = {k: h for k, h in hooks.items() if getattr(h, "__name__", "") == REQUIRE_GRADS_HOOK}
    model.set_attn_implementation("eager")
    for key in lifted:
        del hooks[key]
    try:
        yield
    finally:
        model.set_attn_implementation(attn)
        hooks.update(lifted)


def forward_tangent(
    fn: Callable[[Params], torch.Tensor], params: Params, delta: Params
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(θ), J(θ)·Δθ): the value and its first-order change when θ moves by ``delta``
    (forward-mode AD: one pass at about the cost of two forwards)."""
    return jvp(fn, (params,), (delta,))


def backbone_fn(model, roll: Rollouts, rows: slice) -> Callable[[Params], Any]:
    """θ ↦ response hidden states of ``rows`` at θ (all of the model's parameters by name)."""
    return lambda p: response_hidden(model, roll, rows, p)


def logits_fn(model, roll: Rollouts, rows: slice, temperature: float) -> Callable[[Params], Any]:
    """θ ↦ response logits ÷ T of ``rows`` at θ."""
    return lambda p: response_logits(model, roll, temperature, rows, p)
