"""Rollout backends: sample responses to prompts. ``hf`` (transformers ``generate``, the
default) and ``vllm`` (a vLLM engine in this process, the policy's weights loaded into it before
each rollout: ``vllm_engine``; a clear error when vLLM is missing).

What every backend holds to, so that the probe, the losses and the old log-probs (which all
assume plain softmax(z/T) sampling) describe the samples:

- prompts: a string, or a conversation (a list of ``{"role", "content"}`` messages), rendered with
  the tokenizer's chat template (``add_generation_prompt=True``) when ``chat_template`` is
  ``auto`` and the tokenizer has one, exactly as TRL renders a conversational prompt; else BOS +
  the raw text. ``max_prompt_tokens`` cuts a prompt from the left.
- sampling: softmax(z/T) and nothing else. The model folder's ``generation_config`` is not
  inherited: no top-k, top-p, min-p, repetition penalty or other logits processor
  (``sampling_overrides`` names what it would have changed).
- stops: a response ends at its first stop token, any of the tokenizer's EOS and the
  ``generation_config``'s ``eos_token_id`` list; the response mask ends there too.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from llm_bridge import vllm_engine
from softmax_theory.registry import parse_choice


class BackendName(str, enum.Enum):
    HF = "hf"
    VLLM = "vllm"


class ChatTemplate(str, enum.Enum):
    AUTO = "auto"  # the tokenizer's chat template when it has one, else the raw text
    NONE = "none"  # the raw text, template or not


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt becomes token ids: the chat-template mode, and the most prompt tokens kept
    (cut from the left, the end of the prompt kept; None: no cut)."""

    chat_template: ChatTemplate = ChatTemplate.AUTO
    max_prompt_tokens: int | None = None

    def __post_init__(self):
        object.__setattr__(
            self, "chat_template", parse_choice(ChatTemplate, self.chat_template, "chat_template")
        )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens: at least 1, got {self.max_prompt_tokens}")


@dataclass(frozen=True)
class Rollouts:
    """Prompt-major responses: row i·n + j is the j-th response to prompt i.

    input_ids: [B, P + R] prompt (left-padded) followed by the response (right-padded).
    attention_mask: [B, P + R].
    response_mask: [B, R], 1 on response tokens up to and including the first stop token.
    texts: decoded responses (without the stop token and padding), B strings.
    truncated: [B] bool, the responses cut at the budget (no stop token); None: not known.
    sampler_logp: [B, R], the sampler's own log-probability of each sampled token, log of
        softmax(z/T) as the rollout engine computed it (0 on padding); None: the backend does
        not report it (``hf``: the trainer's forward pass is the sampler's).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor
    texts: tuple[str, ...]
    truncated: torch.Tensor | None = None
    sampler_logp: torch.Tensor | None = None

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]

    def subset(self, rows: torch.Tensor | list[int]) -> Rollouts:
        """The responses at ``rows`` (indices into the batch), in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return Rollouts(
            input_ids=self.input_ids[idx],
            attention_mask=self.attention_mask[idx],
            prompt_length=self.prompt_length,
            response_mask=self.response_mask[idx],
            texts=tuple(self.texts[i] for i in idx.tolist()) if self.texts else (),
            truncated=None if self.truncated is None else self.truncated[idx],
            sampler_logp=None if self.sampler_logp is None else self.sampler_logp[idx],
        )

    @classmethod
    def from_ids(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        sampler_logp: torch.Tensor | None = None,
    ) -> Rollouts:
        """A batch from left-padded prompts and right-padded completions (TRL's layout);
        ``sampler_logp`` [B, R]: the sampler's per-token log-probs (TRL's
        ``sampling_per_token_logps``), zeroed here on padding."""
        return cls(
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
            prompt_length=prompt_ids.shape[1],
            response_mask=completion_mask,
            texts=(),
            sampler_logp=None
            if sampler_logp is None
            else torch.where(completion_mask.bool(), sampler_logp, torch.zeros_like(sampler_logp)),
        )


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        generator: torch.Generator,
    ) -> Rollouts: ...


def concat_rollouts(parts: Sequence[Rollouts], pad_token_id: int) -> Rollouts:
    """One batch from several, in order: prompts left-padded again to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_length for p in parts)
    ids, attn = [], []
    for p in parts:
        extra = width - p.prompt_length
        ids.append(torch.nn.functional.pad(p.input_ids, (extra, 0), value=pad_token_id))
        attn.append(torch.nn.functional.pad(p.attention_mask, (extra, 0), value=0))
    return Rollouts(
        input_ids=torch.cat(ids),
        attention_mask=torch.cat(attn),
        prompt_length=width,
        response_mask=torch.cat([p.response_mask for p in parts]),
        texts=tuple(t for p in parts for t in p.texts),
        truncated=None
        if any(p.truncated is None for p in parts)
        else torch.cat([p.truncated for p in parts]),
        sampler_logp=None
        if any(p.sampler_logp is None for p in parts)
        else torch.cat([p.sampler_logp for p in parts]),
    )


def generate_in_calls(
    backend: RolloutBackend,
    prompts: Sequence[str],
    n: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    pad_token_id: int,
    responses_per_call: int | None = None,
) -> Rollouts:
    """``backend.generate`` over consecutive slices of ``prompts``, at most
    ``responses_per_call`` responses (and at least one prompt) per call, so that generation
    holds a KV cache and sampling logits for that many responses only; None: one call."""
    per_call = len(prompts) if responses_per_call is None else max(responses_per_call // n, 1)
    parts = [
        backend.generate(prompts[i : i + per_call], n, max_new_tokens, temperature, generator)
        for i in range(0, len(prompts), per_call)
    ]
    return concat_rollouts(parts, pad_token_id)


def is_conversation(prompt) -> bool:
    """A prompt given as a list of messages (TRL's conversational format), not a string."""
    return isinstance(prompt, (list, tuple))


def uses_chat_template(tokenizer, prompt, chat_template: str | ChatTemplate = "auto") -> bool:
    """Whether ``prompt`` is rendered with the tokenizer's chat template. A conversation needs
    the template: with ``chat_template none``, or a tokenizer without one, it is refused."""
    mode = parse_choice(ChatTemplate, chat_template, "chat_template")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if is_conversation(prompt):
        if mode is ChatTemplate.NONE:
            raise ValueError(
                "chat_template: none feeds raw text, but a prompt is a list of messages, which "
                "only a chat template can render; use auto, or give the prompts as strings"
            )
        if not has_template:
            raise ValueError(
                "chat_template: a prompt is a list of messages, but the tokenizer has no chat "
                "template; add one (chat_template.jinja) to the model folder, or give strings"
            )
        return True
    return mode is ChatTemplate.AUTO and has_template


def as_messages(prompt) -> list[dict[str, Any]]:
    """A conversation's messages (as plain dicts), or a string as one user message."""
    if is_conversation(prompt):
        return [dict(m) for m in prompt]
    return [{"role": "user", "content": prompt}]


def render_prompt(tokenizer, prompt, chat_template: str | ChatTemplate = "auto") -> str:
    """The prompt's text: rendered with the chat template (``add_generation_prompt=True``, the
    way TRL's ``maybe_apply_chat_template`` renders a prompt whose last message is the user's),
    or the raw text (to which encoding adds BOS)."""
    if uses_chat_template(tokenizer, prompt, chat_template):
        return tokenizer.apply_chat_template(
            as_messages(prompt), tokenize=False, add_generation_prompt=True
        )
    return prompt


def prompt_token_ids(tokenizer, prompt, fmt: PromptFormat = PromptFormat()) -> list[int]:
    """The ids the model reads for ``prompt``: the rendered template as it is (the template
    writes its own special tokens; encoded with ``add_special_tokens=False``, as
    ``apply_chat_template(tokenize=True)`` does), else BOS + the raw text; then the last
    ``max_prompt_tokens`` of them."""
    if uses_chat_template(tokenizer, prompt, fmt.chat_template):
        ids = tokenizer.encode(render_prompt(tokenizer, prompt), add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
    if fmt.max_prompt_tokens is not None:
        ids = ids[-fmt.max_prompt_tokens :]
    return ids


def encode_prompts(
    tokenizer, prompts: Sequence, n: int, device, fmt: PromptFormat = PromptFormat()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's ids (``prompt_token_ids``), left-padded, repeated n times: ids and
    attention mask [B, P]."""
    rows = []
    for p in prompts:
        rows.extend([prompt_token_ids(tokenizer, p, fmt)] * n)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def check_prompt_lengths(
    tokenizer,
    prompts: Sequence,
    max_new_tokens: int,
    positions: int | None,
    fmt: PromptFormat = PromptFormat(),
) -> int:
    """Refuse, before the first step, prompts that with ``max_new_tokens`` response tokens
    need more positions than the model has (``models.model_positions``; a model with learned
    positions fails mid-generation with an index error, a rotary one reads positions it never
    saw). Returns the longest prompt in tokens (after the cut)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: at least 1, got {max_new_tokens}")
    if not prompts:
        return 0
    lengths = [len(prompt_token_ids(tokenizer, p, fmt)) for p in prompts]
    longest = max(lengths)
    if positions is None:
        return longest
    if max_new_tokens >= positions:
        raise ValueError(
            f"max_new_tokens: {max_new_tokens} response tokens leave no room for a prompt in the "
            f"model's {positions} positions; lower max_new_tokens"
        )
    room = positions - max_new_tokens
    if longest > room:
        i = lengths.index(longest)
        raise ValueError(
            f"max_prompt_tokens: prompt {i} is {longest} tokens, and with max_new_tokens "
            f"{max_new_tokens} needs {longest + max_new_tokens} positions, more than the model's "
            f"{positions}; set max_prompt_tokens to at most {room} (cuts prompts from the left) "
            "or lower max_new_tokens"
        )
    return longest


def rendered_example(tokenizer, prompt, fmt: PromptFormat = PromptFormat()) -> dict[str, Any]:
    """What the model reads for ``prompt`` (for ``config.json``): the text of its ids with the
    special tokens written out, their number, and whether the chat template rendered it."""
    ids = prompt_token_ids(tokenizer, prompt, fmt)
    return {
        "text": tokenizer.decode(ids, skip_special_tokens=False),
        "tokens": len(ids),
        "chat_template": uses_chat_template(tokenizer, prompt, fmt.chat_template),
    }


def stop_token_ids(generation_config, tokenizer) -> tuple[int, ...]:
    """The tokens that end a response: the tokenizer's EOS, then the ``generation_config``'s
    ``eos_token_id`` (an id or a list; Qwen2.5-Instruct's ends at ``<|im_end|>`` and
    ``<|endoftext|>``), without repeats. Empty when neither has any."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    more = getattr(generation_config, "eos_token_id", None)
    for t in [more] if isinstance(more, int) else list(more or []):
        if int(t) not in ids:
            ids.append(int(t))
    return tuple(ids)


# generation_config settings that change what is sampled (or where a response ends) away from
# softmax(z/T) until a stop token: each with the test "does this value change it". A value of
# None is unset (transformers' own default, which sampling_config sets to a neutral value).
SAMPLING_SETTINGS: dict[str, Callable[[Any, float], bool]] = {
    "do_sample": lambda v, _: v is False,
    "num_beams": lambda v, _: v > 1,
    "penalty_alpha": lambda v, _: v > 0,
    "temperature": lambda v, t: v != t,
    "top_k": lambda v, _: v != 0,
    "top_p": lambda v, _: v < 1.0,
    "min_p": lambda v, _: v > 0.0,
    "typical_p": lambda v, _: v < 1.0,
    "epsilon_cutoff": lambda v, _: v > 0.0,
    "eta_cutoff": lambda v, _: v > 0.0,
    "top_h": lambda v, _: True,
    "repetition_penalty": lambda v, _: v != 1.0,
    "encoder_repetition_penalty": lambda v, _: v != 1.0,
    "no_repeat_ngram_size": lambda v, _: v > 0,
    "encoder_no_repeat_ngram_size": lambda v, _: v > 0,
    "bad_words_ids": lambda v, _: bool(v),
    "sequence_bias": lambda v, _: bool(v),
    "suppress_tokens": lambda v, _: bool(v),
    "begin_suppress_tokens": lambda v, _: bool(v),
    "forced_bos_token_id": lambda v, _: True,
    "forced_eos_token_id": lambda v, _: True,
    "min_length": lambda v, _: v > 0,
    "min_new_tokens": lambda v, _: v > 0,
    "exponential_decay_length_penalty": lambda v, _: True,
    "guidance_scale": lambda v, _: v != 1.0,
    "watermarking_config": lambda v, _: True,
    "stop_strings": lambda v, _: bool(v),
    "max_time": lambda v, _: True,
}


def sampling_overrides(generation_config, temperature: float) -> list[str]:
    """The model's ``generation_config`` settings that sampling at softmax(z/T) overrides, as
    ``name=value`` (e.g. ``repetition_penalty=5.0``); empty when it sets none."""
    if generation_config is None:
        return []
    out = []
    for name, changes in SAMPLING_SETTINGS.items():
        value = getattr(generation_config, name, None)
        if value is not None and changes(value, temperature):
            out.append(f"{name}={value!r}")
    return out


def sampling_warning(overrides: Sequence[str], temperature: float) -> str | None:
    """The one line the trainer logs once about ``sampling_overrides`` (None: nothing)."""
    if not overrides:
        return None
    return (
        f"model: generation_config sets {', '.join(overrides)}; ignored: responses are sampled "
        f"from softmax(z/T) at temperature {temperature:g}, as the probe and the losses assume"
    )


def sampling_config(
    temperature: float, max_new_tokens: int, stop_ids: Sequence[int], pad_token_id: int
):
    """A ``GenerationConfig`` built from scratch for plain softmax(z/T) sampling: every setting
    of ``SAMPLING_SETTINGS`` that transformers fills in when unset (top_k = 50 among them) is set
    to its neutral value here; the rest stay unset, and ``plain_sampling`` keeps the model's own
    ``generation_config`` from filling them."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        num_beams=1,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        min_length=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stop_ids) or None,
        pad_token_id=pad_token_id,
    )


@contextmanager
def plain_sampling(model, config) -> Iterator[None]:
    """``model.generation_config`` is ``config`` inside the block (restored after): transformers
    fills every setting a passed ``GenerationConfig`` leaves unset from the model's own, so a
    ``suppress_tokens`` or ``min_p`` in the model folder would otherwise still apply."""
    own = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = own


def finish(
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    stop_ids: Sequence[int] | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> Rollouts:
    """Mask everything after the first stop token (``stop_ids``, default the tokenizer's EOS),
    decode, and assemble the rollouts; ``sampler_logp`` [B, R] (optional) is zeroed there too."""
    if stop_ids is None:
        stop_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    stops = torch.tensor(list(stop_ids), dtype=response_ids.dtype, device=response_ids.device)
    is_stop = torch.isin(response_ids, stops)  # [B, R]
    # positions after the first stop token are padding; the stop token is a response token
    after_stop = (is_stop.cumsum(dim=1) - is_stop.long()) > 0
    response_mask = (~after_stop).long()
    pad = tokenizer.pad_token_id
    response_ids = torch.where(after_stop, torch.full_like(response_ids, pad), response_ids)
    texts = []
    for row, keep in zip(response_ids, (response_mask.bool() & ~is_stop), strict=True):
        toks = [t for t, k in zip(row.tolist(), keep.tolist(), strict=True) if k]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return Rollouts(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        prompt_length=prompt_ids.shape[1],
        response_mask=response_mask,
        texts=tuple(texts),
        truncated=~is_stop.any(dim=1),
        sampler_logp=None
        if sampler_logp is None
        else torch.where(after_stop, torch.zeros_like(sampler_logp), sampler_logp),
    )


class HFBackend:
    """Sampling with ``model.generate``: softmax(z/T) at ``temperature`` and nothing else (the
    model's ``generation_config`` is not inherited), ending at any of ``stop_ids``."""

    def __init__(self, model, tokenizer, prompt_format: PromptFormat = PromptFormat()):
        self.model, self.tokenizer, self.prompt_format = model, tokenizer, prompt_format
        self.stop_ids = stop_token_ids(model.generation_config, tokenizer)

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature, generator) -> Rollouts:
        device = next(self.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, prompts, n, device, self.prompt_format)
        pad = self.tokenizer.pad_token_id
        config = sampling_config(temperature, max_new_tokens, self.stop_ids, pad)
        # generate draws from torch's global generator; seed it from ours so runs repeat
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            plain_sampling(self.model, config),
        ):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        response = out[:, ids.shape[1] :]
        if response.shape[1] < max_new_tokens:  # generation stopped early for every row
            fill = torch.full(
                (response.shape[0], max_new_tokens - response.shape[1]),
                pad,
                device=device,
                dtype=response.dtype,
            )
            response = torch.cat([response, fill], dim=1)
        return finish(self.tokenizer, ids, mask, response, self.stop_ids)


class VLLMBackend:
    """Sampling with a vLLM engine colocated with the trainer (``llm_bridge.vllm_engine``;
    ``make vllm`` installs it: the CPU build here, vLLM on CUDA), the same sampling as
    ``HFBackend``: softmax(z/T) with every penalty and truncation of ``SamplingParams`` at its
    neutral value, the same stop tokens, ``max_tokens`` the response budget.

    Weight sync: with a ``policy`` (the trainer's model), ``generate`` first loads the policy's
    current weights into the engine in memory whenever they changed since the last load
    (``sync_weights``), so every rollout samples from the weights the old log-probs, the loss and
    the probe read. Without one (a fake ``engine`` in tests) the engine keeps what it loaded.

    The returned ``Rollouts.sampler_logp`` is vLLM's log-prob of each sampled token under the
    distribution it sampled from, log softmax(z/T) (``vllm_engine.LOGPROBS_MODE``).

    ``settings``: what the engine is built with (default: the policy's dtype, the model's
    positions). ``engine`` and ``sampling_params_cls`` may be passed in (tests pass a fake with
    vLLM's ``generate`` interface).
    """

    def __init__(
        self,
        model_path: str,
        tokenizer,
        engine=None,
        sampling_params_cls=None,
        prompt_format: PromptFormat = PromptFormat(),
        stop_ids: Sequence[int] | None = None,
        policy=None,
        settings: vllm_engine.EngineSettings | None = None,
    ):
        self.sleep_mode = False
        if engine is None or sampling_params_cls is None:
            try:
                from vllm import SamplingParams
            except ImportError:
                raise vllm_engine.missing_vllm() from None
            if engine is None:
                if settings is None:
                    dtype = torch.float32 if policy is None else next(policy.parameters()).dtype
                    settings = vllm_engine.EngineSettings(dtype=dtype)
                engine, self.sleep_mode = vllm_engine.build_engine(model_path, settings)
            sampling_params_cls = sampling_params_cls or SamplingParams
        self.engine, self.sampling_params_cls, self.tokenizer = (
            engine,
            sampling_params_cls,
            tokenizer,
        )
        self.prompt_format = prompt_format
        self.stop_ids = tuple(stop_token_ids(None, tokenizer) if stop_ids is None else stop_ids)
        self.policy = policy
        self.synced = None  # the policy's weights_version at the last load
        self.asleep = False
        self.sync_seconds = 0.0  # time spent loading weights, over the backend's life

    def sync_weights(self, policy=None) -> bool:
        """Load ``policy``'s (default: the backend's policy's) current weights into the engine,
        in memory, unless they are the ones loaded last; wakes a sleeping engine first. Returns
        whether it loaded. The trainer may call it before each rollout; ``generate`` does."""
        policy = self.policy if policy is None else policy
        if policy is None:
            return False
        version = vllm_engine.weights_version(policy)
        if version == self.synced and policy is self.policy:
            return False
        self.wake()
        start = time.perf_counter()
        vllm_engine.load_policy_weights(self.engine, policy)
        self.sync_seconds += time.perf_counter() - start
        if policy is self.policy:
            self.synced = version
        return True

    def sleep(self) -> None:
        """Free the engine's KV cache and offload its weights while the trainer updates
        (``LLM.sleep(level=1)``; CUDA only: a no-op where sleep mode is off, as on CPU). The
        trainer may call it after the rollout's last generate; the next ``generate`` or
        ``sync_weights`` wakes the engine."""
        if self.sleep_mode and not self.asleep:
            self.engine.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        """Undo ``sleep`` (``LLM.wake_up``); a no-op when awake."""
        if self.asleep:
            self.engine.wake_up()
            self.asleep = False

    def generate(self, prompts, n, max_new_tokens, temperature, generator) -> Rollouts:
        self.sync_weights()
        self.wake()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        params = self.sampling_params_cls(
            n=n,
            temperature=temperature,
            top_k=-1,
            top_p=1.0,
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            min_tokens=0,
            # the stops are stop_ids and nothing else, as for hf: vLLM's own stop at the
            # tokenizer's EOS is off (ignore_eos), the EOS is among stop_ids when it exists
            ignore_eos=True,
            stop_token_ids=list(self.stop_ids),
            max_tokens=max_new_tokens,
            logprobs=0,  # the sampled token's own log-prob only
            seed=seed,
        )
        ids, mask = encode_prompts(self.tokenizer, prompts, n, "cpu", self.prompt_format)
        prompt_token_ids = [ids[i * n][mask[i * n].bool()].tolist() for i in range(len(prompts))]
        with vllm_engine.kept_threads():
            outputs = self.engine.generate(
                [{"prompt_token_ids": t} for t in prompt_token_ids], params, use_tqdm=False
            )
        pad = self.tokenizer.pad_token_id
        rows, logps = [], []
        for request in outputs:
            for completion in request.outputs:
                toks = list(completion.token_ids)[:max_new_tokens]
                rows.append(toks + [pad] * (max_new_tokens - len(toks)))
                logps.append(sampled_logprobs(completion, toks, max_new_tokens))
        sampler_logp = None if any(lp is None for lp in logps) else torch.tensor(logps)
        return finish(self.tokenizer, ids, mask, torch.tensor(rows), self.stop_ids, sampler_logp)


def sampled_logprobs(completion, tokens: Sequence[int], width: int) -> list[float] | None:
    """The log-prob vLLM reported for each sampled token of ``completion`` (its ``logprobs``:
    one ``{token_id: Logprob}`` per position), padded with 0 to ``width``; None when it reported
    none."""
    per_position = getattr(completion, "logprobs", None)
    if per_position is None:
        return None
    out = [float(per_position[i][t].logprob) for i, t in enumerate(tokens)]
    return out + [0.0] * (width - len(out))


BACKENDS: dict[BackendName, Callable[..., RolloutBackend]] = {
    BackendName.HF: lambda model, tokenizer, model_path, fmt: HFBackend(model, tokenizer, fmt),
    BackendName.VLLM: lambda model, tokenizer, model_path, fmt: VLLMBackend(
        str(model_path),
        tokenizer,
        prompt_format=fmt,
        stop_ids=stop_token_ids(getattr(model, "generation_config", None), tokenizer),
        policy=model,
    ),
}


def make_backend(
    name: str | BackendName,
    model,
    tokenizer,
    model_path,
    prompt_format: PromptFormat = PromptFormat(),
) -> RolloutBackend:
    backend = BACKENDS[parse_choice(BackendName, name, "backend")]
    return backend(model, tokenizer, model_path, prompt_format)
