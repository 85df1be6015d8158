"""A tiny Llama-architecture model and character tokenizer, pre-trained offline on a task.

``pretrain_tiny`` builds the model with transformers, trains it by supervised learning on the
task's train prompts for a pinned number of steps (linear warm-up and decay, fixed seed) and
saves model and tokenizer with ``save_pretrained``, so any Hugging Face tool loads the folder.
The pinned schedule stops early on purpose: sampled at temperature 1 the model is right about
40% of the time on addition, which leaves room for RL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llm_bridge.tasks import TASK_ALPHABET, Task, synthetic_task

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


def build_tokenizer(alphabet: str = TASK_ALPHABET):
    """A character-level ``PreTrainedTokenizerFast``: one token per character, plus specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(alphabet)))}
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


@dataclass(frozen=True)
class TinyConfig:
    """The tiny model and its supervised pre-training; the only home of these defaults."""

    task: str = field(default="addition", metadata={"help": "synthetic task to pre-train on"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    layers: int = field(default=2, metadata={"help": "transformer layers"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width"})
    steps: int = field(default=1150, metadata={"help": "supervised steps (pinned)"})
    batch_size: int = field(default=64, metadata={"help": "sequences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate"})
    warmup: int = field(default=50, metadata={"help": "linear warm-up steps"})
    seed: int = field(default=0, metadata={"help": "seed of data, init and order"})


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def build_model(cfg: TinyConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _sft_batch(tokenizer, task: Task, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and labels (−100 on the prompt: the loss is on the answer and EOS only)."""
    ids, labels = [], []
    for i in idx:
        ex = task.train[i]
        prompt = [tokenizer.bos_token_id] + _encode(tokenizer, ex.prompt)
        answer = _encode(tokenizer, ex.answer) + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    ids_t = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    lab_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return ids_t, lab_t


def pretrain_tiny(cfg: TinyConfig, out: str | os.PathLike, log=print) -> dict:
    """Build, pre-train and save the tiny model; returns a summary (also in ``pretrain.json``)."""
    task = synthetic_task(cfg.task, seed=cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 10%
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return max(0.1, 1 - 0.9 * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    start = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(task.train), (cfg.batch_size,), generator=gen).tolist()
        ids, labels = _sft_batch(tokenizer, task, idx)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"pretrain step {step}: loss {loss.item():.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"config": asdict(cfg), "parameters": n_params, "seconds": seconds}
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """A local Hugging Face causal LM and its tokenizer (left padding for generation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weights bar per load clutters every command's output
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model: {path} is not a saved Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).to(device)
    return model, tokenizer
