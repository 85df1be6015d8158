"""Rollout backends: sample responses to prompts. ``hf`` (transformers ``generate``, the
default) and ``vllm`` (optional extra; a clear error when it is missing)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from softmax_theory.inputs import MissingExtra
from softmax_theory.registry import parse_choice


class BackendName(str, enum.Enum):
    HF = "hf"
    VLLM = "vllm"


@dataclass(frozen=True)
class Rollouts:
    """Prompt-major responses: row i·n + j is the j-th response to prompt i.

    input_ids: [B, P + R] prompt (left-padded) followed by the response (right-padded).
    attention_mask: [B, P + R].
    response_mask: [B, R], 1 on response tokens up to and including the first EOS.
    texts: decoded responses (without EOS and padding), B strings.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor
    texts: tuple[str, ...]

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
        )

    @classmethod
    def from_ids(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> Rollouts:
        """A batch from left-padded prompts and right-padded completions (TRL's layout)."""
        return cls(
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
            prompt_length=prompt_ids.shape[1],
            response_mask=completion_mask,
            texts=(),
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


def encode_prompts(
    tokenizer, prompts: Sequence[str], n: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + prompt, left-padded, each prompt repeated n times: ids and attention mask [B, P]."""
    rows = []
    for p in prompts:
        ids = tokenizer.encode(p, add_special_tokens=False)
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        rows.extend([ids] * n)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def finish(
    tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor
) -> Rollouts:
    """Mask everything after the first EOS, decode, and assemble the rollouts."""
    eos = tokenizer.eos_token_id
    is_eos = response_ids == eos
    # positions after the first EOS are padding; the EOS itself is a response token
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    pad = tokenizer.pad_token_id
    response_ids = torch.where(after_eos, torch.full_like(response_ids, pad), response_ids)
    texts = []
    for row, m in zip(response_ids, response_mask, strict=True):
        toks = [t for t, keep in zip(row.tolist(), m.tolist(), strict=True) if keep and t != eos]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return Rollouts(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        prompt_length=prompt_ids.shape[1],
        response_mask=response_mask,
        texts=tuple(texts),
    )


class HFBackend:
    """Sampling with ``model.generate`` (full softmax at ``temperature``; no top-k or top-p)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def generate(self, prompts, n, max_new_tokens, temperature, generator) -> Rollouts:
        device = next(self.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, prompts, n, device)
        # generate draws from torch's global generator; seed it from ours so runs repeat
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        response = out[:, ids.shape[1] :]
        if response.shape[1] < max_new_tokens:  # generation stopped early for every row
            fill = torch.full(
                (response.shape[0], max_new_tokens - response.shape[1]),
                self.tokenizer.pad_token_id,
                device=device,
                dtype=response.dtype,
            )
            response = torch.cat([response, fill], dim=1)
        return finish(self.tokenizer, ids, mask, response)


class VLLMBackend:
    """Sampling with a vLLM engine (``pip install 'entropy-mechanism[vllm]'``, CUDA only).

    ``engine`` may be passed in (tests pass a fake with vLLM's ``generate`` interface).
    """

    def __init__(self, model_path: str, tokenizer, engine=None, sampling_params_cls=None):
        if engine is None or sampling_params_cls is None:
            try:
                from vllm import LLM, SamplingParams
            except ImportError:
                raise MissingExtra(
                    "backend: vllm needs vLLM: pip install 'entropy-mechanism[vllm]' "
                    "(CUDA only); or use --backend hf"
                ) from None
            engine = engine or LLM(model=model_path)
            sampling_params_cls = sampling_params_cls or SamplingParams
        self.engine, self.sampling_params_cls, self.tokenizer = (
            engine,
            sampling_params_cls,
            tokenizer,
        )

    def generate(self, prompts, n, max_new_tokens, temperature, generator) -> Rollouts:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        params = self.sampling_params_cls(
            n=n,
            temperature=temperature,
            top_k=-1,
            top_p=1.0,
            max_tokens=max_new_tokens,
            seed=seed,
        )
        ids, mask = encode_prompts(self.tokenizer, prompts, n, "cpu")
        prompt_token_ids = [ids[i * n][mask[i * n].bool()].tolist() for i in range(len(prompts))]
        outputs = self.engine.generate(
            [{"prompt_token_ids": t} for t in prompt_token_ids], params, use_tqdm=False
        )
        pad = self.tokenizer.pad_token_id
        rows = []
        for request in outputs:
            for completion in request.outputs:
                toks = list(completion.token_ids)[:max_new_tokens]
                rows.append(toks + [pad] * (max_new_tokens - len(toks)))
        return finish(self.tokenizer, ids, mask, torch.tensor(rows))


BACKENDS: dict[BackendName, Callable[..., RolloutBackend]] = {
    BackendName.HF: lambda model, tokenizer, model_path: HFBackend(model, tokenizer),
    BackendName.VLLM: lambda model, tokenizer, model_path: VLLMBackend(str(model_path), tokenizer),
}


def make_backend(name: str | BackendName, model, tokenizer, model_path) -> RolloutBackend:
    return BACKENDS[parse_choice(BackendName, name, "backend")](model, tokenizer, model_path)
