"""A tiny Llama-architecture model and character tokenizer, pre-trained offline on a task.

``pretrain_tiny`` builds the model with transformers, trains it by supervised learning on the
task's train prompts for a pinned number of steps (linear warm-up and decay, fixed seed) and
saves model and tokenizer with ``save_pretrained``, so any Hugging Face tool loads the folder.
The defaults are the regime testbed's model (``llm_bridge.testbed``, ``docs/regime.md``): 6,000
steps on answers whose digits are redrawn 30% of the time, so the model has learnt the task
(greedy 96%) with its probability spread over the digits (right about 23% of the time at
temperature 1): RL sharpens it, and entropy collapses as reward rises.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from llm_bridge.head import head_entropy_and_logprobs
from llm_bridge.tasks import (
    DEFAULT_TERMS,
    MAX_TERMS,
    SUM_WIDTH,
    TASK_ALPHABET,
    Task,
    TaskName,
    synthetic_task,
    task_alphabet,
)
from softmax_theory.inputs import Domain, SettingError, check_domains

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
# Qwen2.5's vocabulary size, the real-vocabulary option of the benchmarks and tests.
QWEN_VOCAB = 151_936


def build_tokenizer(alphabet: str = TASK_ALPHABET, vocab_size: int | None = None):
    """A character-level ``PreTrainedTokenizerFast``: one token per character, plus specials,
    padded with never-encoded ``<unused_i>`` tokens to ``vocab_size`` when given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK]
    tokens = specials + sorted(set(alphabet))
    if vocab_size is not None:
        if vocab_size < len(tokens):
            raise ValueError(f"vocab_size: at least {len(tokens)} for this task, got {vocab_size}")
        tokens += [f"<unused_{i}>" for i in range(vocab_size - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _tiny(text: str, domain: Domain) -> dict:
    return {"help": text, "domain": domain}


@dataclass(frozen=True)
class TinyConfig:
    """The tiny model and its supervised pre-training; the only home of these defaults and
    domains."""

    task: str = field(default="addition", metadata={"help": "synthetic task to pre-train on"})
    terms: int = field(
        default=DEFAULT_TERMS,
        metadata=_tiny("running-sum: terms per prompt", Domain(ge=1, le=MAX_TERMS)),
    )
    hidden_size: int = field(default=128, metadata=_tiny("model width", Domain(ge=1)))
    layers: int = field(default=2, metadata=_tiny("transformer layers", Domain(ge=1)))
    heads: int = field(default=4, metadata=_tiny("attention heads", Domain(ge=1)))
    intermediate_size: int = field(default=256, metadata=_tiny("MLP width", Domain(ge=1)))
    steps: int = field(default=6000, metadata=_tiny("supervised steps (pinned)", Domain(ge=1)))
    batch_size: int = field(default=64, metadata=_tiny("sequences per step", Domain(ge=1)))
    lr: float = field(default=1e-3, metadata=_tiny("peak AdamW learning rate", Domain(gt=0)))
    warmup: int = field(default=100, metadata=_tiny("linear warm-up steps", Domain(ge=0)))
    seed: int = field(default=0, metadata=_tiny("seed of data, init and order", Domain(ge=0)))
    label_noise: float = field(
        default=0.3,
        metadata=_tiny(
            "share of the answers' digits replaced, in each pre-training batch, by a uniformly "
            "drawn digit: the model learns the task but spreads its probability (RL's headroom)",
            Domain(ge=0, le=1),
        ),
    )
    noise_carries: bool = field(
        default=False,
        metadata={
            "help": "running-sum: each partial sum is the sum written before it (noisy or not) "
            "plus the next term, so a corrupted sum carries into the later ones and the written "
            "history always follows the task's rule (the model learns the rule; the noise only "
            "spreads its probability)"
        },
    )
    vocab_size: int | None = field(
        default=None,
        metadata=_tiny(
            "pad the vocabulary to this size (151936: Qwen2.5's) with unused tokens, "
            "then train the full-vocabulary head for --pad-steps (default: the task's alphabet)",
            Domain(ge=1),
        ),
    )
    pad_steps: int = field(
        default=200,
        metadata=_tiny("steps at the padded vocabulary (pushes unused rows down)", Domain(ge=0)),
    )
    pad_batch_size: int = field(
        default=16, metadata=_tiny("sequences per step at the padded vocabulary", Domain(ge=1))
    )

    def __post_init__(self) -> None:
        check_domains(self)
        if self.hidden_size % self.heads:
            raise SettingError(
                "heads", f"must divide hidden_size {self.hidden_size}, got {self.heads}"
            )
        if self.task != TaskName.RUNNING_SUM.value and self.terms != DEFAULT_TERMS:
            raise SettingError(
                "terms", f"has no effect with task {self.task} (running-sum reads it)"
            )
        if self.noise_carries and self.task != TaskName.RUNNING_SUM.value:
            raise SettingError(
                "noise_carries", f"has no effect with task {self.task} (running-sum reads it)"
            )
        if self.noise_carries and self.label_noise == 0:
            raise SettingError("noise_carries", "has no effect without label_noise")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def build_model(cfg: TinyConfig, tokenizer, max_positions: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


DIGITS = "0123456789"


def noisy_answer(answer: str, noise: float, gen: torch.Generator) -> str:
    """``answer`` with each digit, with probability ``noise``, replaced by a digit drawn
    uniformly (possibly itself); other characters are kept, so the format stays right."""
    if noise == 0:
        return answer
    flip = torch.rand(len(answer), generator=gen) < noise
    draw = torch.randint(0, len(DIGITS), (len(answer),), generator=gen)
    return "".join(
        DIGITS[int(d)] if f and c in DIGITS else c
        for c, f, d in zip(answer, flip.tolist(), draw.tolist(), strict=True)
    )


def noisy_running_sums(prompt: str, noise: float, gen: torch.Generator) -> str:
    """The partial sums of a running-sum ``prompt`` (``a+b+…=``), each one the sum written
    before it plus the next term, and each written through ``noisy_answer``: a corrupted sum
    carries into every later one, so that each written sum follows from the written history.
    A sum past ``SUM_WIDTH`` digits (only a corrupted one can get there) wraps around."""
    written, out = 0, []
    for term in prompt.rstrip("=").split("+"):
        text = noisy_answer(f"{(written + int(term)) % 10**SUM_WIDTH:0{SUM_WIDTH}d}", noise, gen)
        out.append(text)
        written = int(text)
    return ",".join(out)


def _sft_batch(
    tokenizer,
    task: Task,
    idx: list[int],
    noise: float = 0.0,
    gen: torch.Generator | None = None,
    carries: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and labels (−100 on the prompt: the loss is on the answer and EOS only);
    with ``noise``, the answers' digits are corrupted by ``noisy_answer`` (with ``carries``,
    running-sum's by ``noisy_running_sums``)."""
    ids, labels = [], []
    for i in idx:
        ex = task.train[i]
        prompt = [tokenizer.bos_token_id] + _encode(tokenizer, ex.prompt)
        if gen is None:
            text = ex.answer
        elif carries:
            text = noisy_running_sums(ex.prompt, noise, gen)
        else:
            text = noisy_answer(ex.answer, noise, gen)
        answer = _encode(tokenizer, text) + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    ids_t = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    lab_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return ids_t, lab_t


def _train(
    model, tokenizer, task, cfg: TinyConfig, steps: int, batch: int, loss_fn, log, device
) -> None:
    """AdamW with linear warm-up and decay to 10%, on random batches of the task."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return max(0.1, 1 - 0.9 * (step - cfg.warmup) / max(1, steps - cfg.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(cfg.seed)
    # the label noise has its own stream, so that without it the batches are those of before
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1) if cfg.label_noise else None
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(task.train), (batch,), generator=gen).tolist()
        ids, labels = _sft_batch(
            tokenizer, task, idx, cfg.label_noise, noise_gen, cfg.noise_carries
        )
        loss = loss_fn(model, ids.to(device), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"pretrain step {step}: loss {loss.item():.4f}")
    model.eval()


def _hf_loss(model, ids, labels):
    return model(input_ids=ids, labels=labels).loss


def _fused_loss(model, ids, labels):
    """Cross-entropy on the answer positions through the chunked head: no [B, L, V] logits."""
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]  # position t predicts t + 1
    target = labels[:, 1:]
    keep = target != -100
    _, logp = head_entropy_and_logprobs(
        hidden[keep], model.get_output_embeddings().weight, target[keep]
    )
    return -logp.mean()


@torch.no_grad()
def tail_share(model, tokenizer, task: Task, n_used: int, n: int = 16) -> dict[str, float]:
    """On the answer positions of ``n`` training examples: the probability and the share of the
    entropy that the tokens beyond the first ``n_used`` (the padding) carry."""
    ids, labels = _sft_batch(tokenizer, task, list(range(n)))
    device = model.get_output_embeddings().weight.device
    ids, labels = ids.to(device), labels.to(device)
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1][labels[:, 1:] != -100]
    logits = model.get_output_embeddings()(hidden).double()  # answer positions only
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    h_tail = -(p[:, n_used:] * logp[:, n_used:]).sum(-1)
    h = -(p * logp).sum(-1)
    return {
        "tail_probability": float(p[:, n_used:].sum(-1).mean()),
        "tail_entropy_share": float(h_tail.sum() / h.sum()),
        "entropy": float(h.mean()),
    }


def pretrain_tiny(cfg: TinyConfig, out: str | os.PathLike, log=print, device: str = "cpu") -> dict:
    """Build, pre-train and save the tiny model; returns a summary (also in ``pretrain.json``).

    With ``vocab_size``, the model is first trained at the task's own vocabulary, then its
    vocabulary is padded with unused tokens and the whole model trained on for ``pad_steps`` at
    full vocabulary (through the chunked head), which pushes the unused rows' logits down from
    where a random start leaves them; the summary reports the probability and the share of the
    entropy the padding still carries. ``device``: where to train (cpu or cuda); the saved
    model is the same format either way.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    quiet_progress_bars()
    task = synthetic_task(cfg.task, seed=cfg.seed, terms=cfg.terms)
    alphabet = task_alphabet(cfg.task)
    tokenizer = build_tokenizer(alphabet)
    longest = max(len(e.prompt) + len(e.answer) for e in task.train[:1000]) + 2  # BOS, EOS
    model = build_model(cfg, tokenizer, max_positions=max(64, longest)).to(device)
    start = time.perf_counter()
    _train(model, tokenizer, task, cfg, cfg.steps, cfg.batch_size, _hf_loss, log, device)
    summary: dict = {"config": asdict(cfg)}
    if cfg.vocab_size is not None:
        n_used = len(tokenizer)
        tokenizer = build_tokenizer(alphabet, cfg.vocab_size)
        model.resize_token_embeddings(cfg.vocab_size, mean_resizing=False)
        log(f"padded to {cfg.vocab_size} tokens: {tail_share(model, tokenizer, task, n_used)}")
        pad = replace(cfg, warmup=min(cfg.warmup, cfg.pad_steps // 4))
        _train(
            model, tokenizer, task, pad, cfg.pad_steps, cfg.pad_batch_size, _fused_loss, log, device
        )
        summary["padding"] = tail_share(model, tokenizer, task, n_used)
        log(f"after {cfg.pad_steps} steps at full vocabulary: {summary['padding']}")
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["seconds"] = time.perf_counter() - start
    summary["device"] = device
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def quiet_progress_bars() -> None:
    """No loading or saving bars from transformers and huggingface_hub: they clutter every
    command's output and every log."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()
