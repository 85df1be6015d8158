"""The memory a GRPO step needs, estimated before the first step, and the guard that refuses a
step that cannot fit.

A step runs in phases, and its peak is the largest of them (``StepMemory.phases``):

    persistent = weights + gradients + optimiser state (+ a reference model)
    rollout    = persistent + one generate call (KV cache, sampling logits)
    old pass   = persistent + one head chunk and one layer's activations (no graph is kept)
    update     = persistent − gradients + θ_old and Δθ (the probe)
                 + max(backward, gradients + optimiser step)
                 backward: a micro-batch's activations + the head's chunked backward
                 (two [rows, V] fp32 buffers and its fp32 gradient, or that gradient and an
                 embedding's), with the gradients it forms: an update starts with none
                 (zero_grad sets them to None), so with one micro-batch an update the head's
                 backward runs before any is kept, and the gradients then form as the
                 activations are freed; with more, the earlier micro-batches' are there
                 step: Adam's parameter-sized temporaries (and the forecast's, with the JVP)
                 controller (predictive): g_H through the backward (+ autograd's result);
                 g_H and five more parameter-sized buffers while it solves for the coefficient
    probe      = persistent + θ_old and Δθ + max(JVP, head)
                 JVP: eager attention, primal and tangent, about six [b, heads, S, S] fp32
                 tensors live at once (forward-mode AD runs attention eager) + one layer's
                 activations and their tangents
                 head: three [rows, V] product buffers + the fused rows' float64 work buffers

plus the batch's per-token arrays and the trainer's own footprint (``TRAINER_OVERHEAD``) in every
phase. ``docs/memory.md`` states the model with its
numbers next to measured peaks (``benchmarks/bench_memory.py``). The activation term counts, per
token and layer, the tensors a Llama-style block keeps for backward: about 12·d (attention inputs,
projections, norms, residuals) + 4·I (the MLP's gate, up, activation and product) + the attention
weights of the eager kernel (heads × sequence length); fused attention (SDPA) keeps none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from llm_bridge.head import head_rows, head_work_bytes
from llm_bridge.token_stats import probe_rows_per_chunk, probe_work_bytes

GIB = 1024**3
# bytes of one element per dtype
BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}
# the guard passes a step whose estimate fits in this share of the memory there is: the
# estimate's measured error is within ±15% (docs/memory.md), so 1/1.15 of it leaves that to spare
HEADROOM = 0.85
# what a trainer holds beyond its tensors (the tokenizer, the modules' Python objects, the
# allocator's arenas): measured 48–70 MiB above the tensors of every phase
# (benchmarks/bench_memory.py); a constant, so it matters for small models only
TRAINER_OVERHEAD = 64 * 2**20
# per-token floats the trainer keeps for the whole batch (entropy, log-probs, advantages, masks…)
PER_TOKEN_FLOATS = 12
# float64 values the probe keeps per probed token (its six fields, the advantage, carried values)
PROBE_TOKEN_FLOATS = 10
# [b, heads, S, S] fp32 tensors of eager attention live at once inside the JVP (scores, masked
# scores, softmax, and the tangent of each; measured: benchmarks/bench_memory.py)
JVP_ATTENTION_TENSORS = 6


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
    """Bytes of each part of a step; ``phases`` adds them up phase by phase, ``total`` is the
    largest phase (the estimate the guard compares)."""

    weights: int
    gradients: int
    optimizer: int
    reference: int
    theta_old: int  # θ_old and, with the JVP, Δθ: from the update to the probe's end
    generation: int
    old_pass: int
    backward: int  # with the gradients it forms (each update starts without them)
    optimizer_step: int
    probe_pass: int
    batch_arrays: int
    control_held: int = 0  # the predictive controller's entropy gradient and its transient
    control_solve: int = 0  # its buffers while it solves for the coefficient (the pre-hook)

    @property
    def persistent(self) -> int:
        tensors = self.weights + self.gradients + self.optimizer + self.reference
        return tensors + self.batch_arrays + TRAINER_OVERHEAD

    def phases(self) -> dict[str, int]:
        """The estimated peak of each phase of the step (the update's: ``backward`` holds the
        gradients it forms; the step and the solve come with all of them)."""
        base, probe = self.persistent, self.theta_old
        grads = self.gradients
        phases = {
            "rollout": base + self.generation,
            "old pass": base + self.old_pass,
            "update": base
            - grads
            + probe
            + max(
                self.backward + self.control_held,
                grads + self.optimizer_step,
                grads + self.control_solve,
            ),
        }
        if self.probe_pass:
            phases["probe"] = base + probe + self.probe_pass
        return phases

    @property
    def total(self) -> int:
        return max(self.phases().values())

    def describe(self) -> str:
        parts = {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimiser": self.optimizer,
            "reference": self.reference,
            "θ_old (and Δθ)": self.theta_old,
            "generation": self.generation,
            "backward": self.backward,
            "optimiser step": self.optimizer_step,
            "probe": self.probe_pass,
            "controller": max(self.control_held, self.control_solve),
        }
        shown = [f"{k} {v / GIB:.2f}" for k, v in parts.items() if v >= 0.005 * GIB]
        peak = max(self.phases().items(), key=lambda kv: kv[1])[0]
        return ", ".join(shown) + f" GiB; the peak is the {peak}"


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
    probe_responses: int | None = None,
    control: int = 0,
    mini_batch: int | None = None,
) -> StepMemory:
    """The peak memory of one step: ``responses`` in the batch (prompts × group size),
    ``mini_batch`` per optimiser update (None: the whole batch), ``micro_batch`` per
    forward/backward pass, ``generate_batch`` per generate call (None: the whole batch),
    sequences of prompt + response tokens; ``probe_responses`` probed (None: all);
    ``control``: the gradients the predictive entropy controller (``llm_bridge.control``) keeps
    (1: g_H, for the bonus; 2: g_H and g_KL, for KL-Cov's coefficient; 0: none runs)."""
    b = BYTES.get(shape.dtype, 4)
    p, v, d = shape.parameters, shape.vocab, shape.hidden
    seq = prompt_length + response_length
    kv = 2 * shape.layers * d * shape.kv_heads // shape.heads  # K and V per token
    # generation: one call's KV cache, and a few fp32 copies of one position's logits
    gen_rows = min(responses, generate_batch or responses)
    generation = gen_rows * seq * kv * b + 4 * gen_rows * v * 4
    per_token_layer = 12 * d + 4 * shape.intermediate
    layer = micro_batch * seq * per_token_layer * b  # one layer's activations of a micro-batch
    attention = micro_batch * shape.heads * seq * seq * 4  # one [b, heads, S, S] fp32 tensor
    activations = shape.layers * layer + (shape.layers * attention if eager_attention else 0)
    # one chunk of head logits (the product in the weight's dtype, and its fp32 copy if narrower)
    rows = head_rows(v)
    chunk = head_work_bytes(rows, v, shape.dtype, 1)
    stats = 2 * probe_rows_per_chunk(v) * v * 4  # entropy_and_logprobs' two work buffers
    # the head's backward holds its two chunk buffers and its fp32 gradient [V, d]; a tied (or
    # any) embedding's dense gradient then comes beside that one (autograd sums into it in place)
    head_first = max(chunk + stats, 2 * chunk + v * d * 4)
    logits = 3 * micro_batch * response_length * v * 4  # logits path: [b, R, V] ×3
    if fused_head:
        old_pass = chunk + stats + layer
    else:
        old_pass = micro_batch * response_length * v * 4 + layer
        head_first = logits
    # each update starts with no gradient (zero_grad sets them to None): with one micro-batch
    # an update, its backward runs the head before any gradient is kept, and the gradients form
    # as the backbone's activations are freed; with more, the earlier micro-batches' gradients
    # are there throughout the later ones' backward
    if micro_batch < min(responses, mini_batch or responses):
        backward = p * b + activations + max(head_first, v * d * 4 + v * d * b)
    else:
        backward = max(activations + head_first, p * b + v * d * b)
    # Adam's step makes parameter-sized temporaries; the forecast (the JVP) builds each update
    # before the step from three temporaries of the largest parameter
    step = (2 * p * b if adam else 0) + (3 * v * d * b if probe and jvp else 0)
    probe_pass = 0
    probed = responses if probe_responses is None else min(probe_responses, responses)
    if probe:
        tokens = micro_batch * response_length
        n_products = 3 if jvp else 2
        products = head_work_bytes(rows, v, shape.dtype, n_products)
        head = (products if fused_head else logits) + probe_work_bytes(probe_rows_per_chunk(v), v)
        head += 3 * tokens * d * 4  # h_old, h_new and dh of the micro-batch
        jvp_pass = JVP_ATTENTION_TENSORS * attention + 2 * layer if jvp else layer
        probe_pass = max(head, jvp_pass)
    # the predictive controller keeps the entropy term's gradient g_H (and on KL-Cov's
    # coefficient g_KL) through the backward, with autograd's parameter-sized result as each is
    # summed in; before the update, those and its forecast's flat g_pg, Adam's A and V and two
    # work buffers (control.UpdateForecast)
    control_held = (control + 1) * p * b if control else 0
    control_solve = (control + 5) * p * b if control else 0
    return StepMemory(
        weights=p * b,
        gradients=p * b,
        optimizer=2 * p * b if adam else 0,
        reference=p * b if reference else 0,
        # the probe keeps θ_old, and with the JVP the forecast Δθ
        theta_old=(2 if jvp else 1) * p * b if probe else 0,
        generation=generation,
        old_pass=old_pass,
        backward=backward,
        optimizer_step=step,
        probe_pass=probe_pass,
        batch_arrays=PER_TOKEN_FLOATS * responses * response_length * 4
        + (PROBE_TOKEN_FLOATS * probed * response_length * 8 if probe else 0),
        control_held=control_held,
        control_solve=control_solve,
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
    phases = need.phases()
    if max(phases, key=phases.get) == "rollout":
        hint = "set --generate-batch-size (responses per generate call), or lower it"
    elif micro_batch_set:
        hint = "lower --micro-batch-size"
    else:
        hint = "set --micro-batch-size (responses per forward/backward pass)"
    raise ValueError(
        f"prompts_per_step: a step needs about {need.total / GIB:.1f} GiB "
        f"({need.describe()}), but {available / GIB:.1f} GiB are available; {hint}"
    )
