"""A researcher's own model folder, made offline: random weights in one of six architectures and
a byte-level BPE tokenizer trained here with the ``tokenizers`` library, both saved with
``save_pretrained`` the way a real checkpoint is. ``build_model_folder`` is for any test that
needs a folder that is not the tiny character model.

Qwen2 comes as the Instruct models do: a ChatML chat template with a default system message,
``<|im_end|>`` as the tokenizer's EOS, ``<|endoftext|>`` as pad, and a ``generation_config``
whose ``eos_token_id`` lists both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ARCHITECTURES = ("qwen2", "qwen3", "llama", "gpt2", "gemma2", "phi3")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen2.5-Instruct's template writes it (a default system message when none is given)
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set rest = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set rest = messages %}"
    "{%- endif %}"
    "{%- for m in rest %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. #### 72",
    "The answer is \\boxed{42}. Let's think step by step: 3 + 4 = 7, 7 * 6 = 42.",
    "Solve for x: 2x + 3 = 11, so x = 4. Therefore the total is 1,234 apples.",
] * 4


def train_bpe(vocab_size: int = 400, specials: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on a few GSM8K-like sentences (every
    byte is in its alphabet, so any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def build_tokenizer(arch: str = "qwen2", chat_template: bool = True, vocab_size: int = 400):
    """The architecture's tokenizer conventions on a locally trained BPE: Qwen (EOS
    ``<|im_end|>``, pad ``<|endoftext|>``, no BOS, the chat template), GPT-2 (``<|endoftext|>``
    as BOS and EOS, no pad, no template), the others (BOS ``<|im_start|>``, EOS and pad
    ``<|endoftext|>``, no template)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size)
    if arch in ("qwen2", "qwen3"):
        kw = dict(eos_token=IM_END, pad_token=ENDOFTEXT)
    elif arch == "gpt2":
        kw = dict(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT)
    else:
        kw = dict(bos_token=IM_START, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    template = QWEN_CHAT_TEMPLATE if chat_template and arch in ("qwen2", "qwen3") else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=template,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **kw,
    )


def model_config(arch: str, tokenizer, positions: int = 256, init: float = 0.02):
    """A small config of the architecture (hidden 32, one layer); ``init``: the weights' std."""
    import transformers as tf

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init,
    )
    small = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
    )
    if arch == "qwen2":
        return tf.Qwen2Config(**small, **ids, tie_word_embeddings=True)
    if arch == "qwen3":
        return tf.Qwen3Config(**small, **ids, head_dim=16, tie_word_embeddings=True)
    if arch == "llama":
        return tf.LlamaConfig(**small, **ids, tie_word_embeddings=False)
    if arch == "gemma2":
        return tf.Gemma2Config(
            **small,
            **ids,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=positions,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
        )
    if arch == "phi3":
        return tf.Phi3Config(**small, **ids)
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=32, n_layer=1, n_head=2, n_positions=positions, **{**ids, "pad_token_id": None}
        )
    raise ValueError(f"arch: one of {ARCHITECTURES}, got {arch!r}")


def build_model_folder(
    path: str | os.PathLike,
    arch: str = "qwen2",
    chat_template: bool = True,
    generation_config: dict | None = None,
    positions: int = 256,
    init: float = 0.02,
    vocab_size: int = 400,
    seed: int = 0,
) -> Path:
    """Save a random-weight ``arch`` model and its tokenizer at ``path`` (``save_pretrained``).

    ``generation_config``: settings written to its ``generation_config.json`` (Qwen's default:
    ``eos_token_id`` = [``<|im_end|>``, ``<|endoftext|>``]).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    tokenizer = build_tokenizer(arch, chat_template, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(arch, tokenizer, positions, init))
    gen = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if arch in ("qwen2", "qwen3"):
        gen["eos_token_id"] = [
            tokenizer.convert_tokens_to_ids(IM_END),
            tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        ]
    else:
        gen["eos_token_id"] = tokenizer.eos_token_id
    gen.update(generation_config or {})
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(path: str | os.PathLike, config) -> Path:
    """A folder holding only ``config`` (no weights, no tokenizer): for the refusals that must
    come before anything heavy is read."""
    path = Path(path)
    config.save_pretrained(path)
    return path


def edit_json(path: str | os.PathLike, **changes) -> None:
    """Rewrite keys of a JSON file in place (None deletes the key)."""
    path = Path(path)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))
