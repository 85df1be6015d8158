"""The memory a GRPO step needs, estimated before the first step, and the guard that refuses a
step that cannot fit.

Peak = weights + gradients + optimiser state and its step's temporaries + the θ_old copy and Δθ
(the probe and its JVP) + a reference model
(a KL penalty) + the larger of (generation: one generate call's responses) and (one micro-batch's
activations and logits) + the per-token arrays of the batch + O(chunk). ``docs/memory.md``
states the model with its numbers next to measured peaks (``benchmarks/bench_scale.py``).

The activation term counts, per token and layer, the tensors a Llama-style block keeps for
backward: about 12·d (attention inputs, projections, norms, residuals) + 4·I (the MLP's gate, up,
activation and product) + the attention weights of the eager kernel (heads × sequence length);
fused attention (SDPA) keeps none of the latter. It is an estimate: measured peaks of the
real-vocabulary model are 1.5–1.7× above it (docs/memory.md, which says where), which is enough for
a guard against a 100× oversized batch and not for packing a card to its last GiB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GIB = 1024**3
# bytes of one element per dtype
BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}
# the allocator's slack and Python's own footprint: the guard leaves this share of the free memory
HEADROOM = 0.9
# per-token floats the trainer keeps for the whole batch (entropy, log-probs, advantages, masks…)
PER_TOKEN_FLOATS = 12
# fp32 buffers of one head chunk at a time (logits, softmax, gradient, work buffers)
CHUNK_BUFFERS = 6


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a causal LM."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    dtype: torch.dtype

    @classmethod
    def of(cls, model) -> ModelShape:
        c = (
            model.config.get_text_config()
            if hasattr(model.config, "get_text_config")
            else model.config
        )
        heads = c.num_attention_heads
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            intermediate=getattr(c, "intermediate_size", 4 * c.hidden_size),
            heads=heads,
            kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            vocab=c.vocab_size,
            dtype=next(model.parameters()).dtype,
        )


@dataclass(frozen=True)
class StepMemory:
    """Bytes of each part of a step's peak; ``total`` is the estimate."""

    weights: int
    gradients: int
    optimizer: int
    optimizer_step: int
    theta_old: int
    reference: int
    generation: int
    micro_batch: int
    batch_arrays: int
    chunk: int

    @property
    def total(self) -> int:
        transient = max(self.generation, self.micro_batch)  # generation is done before training
        fixed = self.weights + self.gradients + self.optimizer + self.optimizer_step
        fixed += self.theta_old + self.reference
        return fixed + transient + self.batch_arrays + self.chunk

    def phases(self) -> dict[str, int]:
        return {"total": self.total}

    def describe(self) -> str:
        parts = {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimiser": self.optimizer,
            "optimiser step": self.optimizer_step,
            "θ_old (and Δθ)": self.theta_old,
            "reference": self.reference,
            "generation": self.generation,
            "one micro-batch": self.micro_batch,
        }
        shown = [f"{k} {v / GIB:.2f}" for k, v in parts.items() if v >= 0.005 * GIB]
        return ", ".join(shown) + " GiB"


def estimate_step_memory(
    shape: ModelShape,
    responses: int,
    micro_batch: int,
    prompt_length: int,
    response_length: int,
    adam: bool = True,
    probe: bool = True,
    jvp: bool = True,
    reference: bool = False,
    fused_head: bool = True,
    eager_attention: bool = False,
    generate_batch: int | None = None,
) -> StepMemory:
    """The peak memory of one step: ``responses`` in the batch (prompts × group size),
    ``micro_batch`` per forward/backward pass, ``generate_batch`` per generate call (None: the
    whole batch), sequences of prompt + response tokens."""
    b = BYTES.get(shape.dtype, 4)
    p = shape.parameters
    seq = prompt_length + response_length
    kv = 2 * shape.layers * shape.hidden * shape.kv_heads // shape.heads  # K and V per token
    # generation: one call's KV cache, and a few fp32 copies of one position's logits
    gen_rows = min(responses, generate_batch or responses)
    generation = gen_rows * seq * kv * b + 4 * gen_rows * shape.vocab * 4
    per_token_layer = 12 * shape.hidden + 4 * shape.intermediate
    if eager_attention:
        per_token_layer += shape.heads * seq
    activations = micro_batch * seq * shape.layers * per_token_layer * b
    # the logits path holds a micro-batch of [b, R, V] (the logits, an fp32 copy, its gradient);
    # the fused head only a chunk of rows at a time
    logits = 0 if fused_head else 3 * micro_batch * response_length * shape.vocab * 4
    chunk = CHUNK_BUFFERS * (1 << 23) * 4 if fused_head else 0
    return StepMemory(
        weights=p * b,
        gradients=p * b,
        optimizer=2 * p * b if adam else 0,
        # Adam's step makes parameter-sized temporaries (the denominator and the update)
        optimizer_step=2 * p * b if adam else 0,
        # the probe keeps θ_old, and with the JVP the forecast Δθ
        theta_old=(2 if jvp else 1) * p * b if probe else 0,
        reference=p * b if reference else 0,
        generation=generation,
        micro_batch=activations + logits,
        batch_arrays=PER_TOKEN_FLOATS * responses * response_length * 4,
        chunk=chunk,
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes this process can still use: free GPU memory plus what it holds already, or the
    machine's available memory (Linux ``MemAvailable``); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_step_fits(need: StepMemory, available: int | None, micro_batch_set: bool) -> None:
    """Refuse a step whose estimate exceeds the memory there is, naming the flag to change."""
    if available is None or need.total <= HEADROOM * available:
        return
    if need.generation >= need.micro_batch:
        hint = "set --generate-batch-size (responses per generate call), or lower it"
    elif micro_batch_set:
        hint = "lower --micro-batch-size"
    else:
        hint = "set --micro-batch-size (responses per forward/backward pass)"
    raise ValueError(
        f"prompts_per_step: a step needs about {need.total / GIB:.1f} GiB "
        f"({need.describe()}), but {available / GIB:.1f} GiB are available; {hint}"
    )
