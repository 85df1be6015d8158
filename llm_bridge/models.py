"""Loading a local Hugging Face causal LM and its tokenizer, with the checks a user's own folder
needs before the first step: each mistake is one line naming ``model``.

Refused: a folder without ``config.json``; a model type transformers does not know; a model that
is not a causal LM (T5, DistilBERT, a BERT masked LM: the config's ``architectures`` are looked
up in transformers' causal-LM mapping); a folder without a tokenizer; a tokenizer with neither an
EOS nor a pad token. A tokenizer without a pad token pads with its EOS (GPT-2). Weights, and the
configs loaded with them, that are not whole (a torn or corrupt copy: ``llm_bridge.file_checks``)
are refused naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llm_bridge.file_checks import folder_fault
from llm_bridge.tiny import quiet_progress_bars

# Files that hold a tokenizer's vocabulary in one of the formats transformers reads: fast
# (tokenizer.json), sentencepiece (tokenizer.model, spiece.model), byte-level BPE
# (vocab.json + merges.txt), WordPiece (vocab.txt), tiktoken.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tiktoken.model",
)


# The tokenizer's JSON files: checked whole before AutoTokenizer reads them.
TOKENIZER_JSON = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
# What from_pretrained reads besides the tokenizer: checked whole before it reads them.
WEIGHT_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.index.json",
    "pytorch_model*.bin",
)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def causal_lm_names() -> frozenset[str]:
    """The class names ``AutoModelForCausalLM`` builds (``Qwen2ForCausalLM``,
    ``GPT2LMHeadModel``, …), from transformers' own mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update((value,) if isinstance(value, str) else value)
    return frozenset(names)


def load_config(path: str | os.PathLike):
    """The folder's ``PretrainedConfig``, refused in one line unless it is a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"model: {path} is not a saved Hugging Face model folder")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model: {config_file} is not valid JSON: {_first_line(e)}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ValueError(
            f"model: {config_file} has model_type {model_type!r}, which this transformers "
            "version does not know (a newer transformers, or a folder saved by another library?)"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise ValueError(f"model: {config_file} cannot be read: {_first_line(e)}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    causal = (
        any(a in causal_lm_names() for a in architectures)
        if architectures
        else model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not causal:
        what = ", ".join(architectures) or model_type
        raise ValueError(
            f"model: {path} holds a {what} model, not a causal language model "
            "(AutoModelForCausalLM); "
            "give a decoder-only LM folder (Qwen2, Llama, GPT-2, …)"
        )
    return config


def load_tokenizer(path: str | os.PathLike):
    """The folder's tokenizer, left-padded for generation; a missing pad token becomes the EOS.
    Refused in one line: no tokenizer in the folder, a JSON file of it that is not whole
    (``TOKENIZER_JSON``, named), or one with neither EOS nor pad."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).exists() for name in TOKENIZER_FILES) and not any(
        path.glob("*.tiktoken")
    ):
        raise FileNotFoundError(
            f"model: {path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one "
            "there with tokenizer.save_pretrained"
        )
    fault = folder_fault(path, TOKENIZER_JSON)
    if fault is not None:
        raise ValueError(f"model: {fault}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, TypeError, KeyError, ImportError) as e:
        why = _first_line(e)
        raise ValueError(f"model: the tokenizer in {path} cannot be loaded: {why}") from None
    if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
        raise ValueError(
            f"model: the tokenizer in {path} has neither an EOS nor a pad token; set eos_token "
            "(the token that ends a response) in its tokenizer_config.json"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_positions(config) -> int | None:
    """The most positions (prompt + response tokens) the model was built for, or None when its
    config does not say (``max_position_embeddings``; GPT-2's ``n_positions`` maps to it)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text, "max_position_embeddings", None)
    return int(positions) if positions else None


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
):
    """The causal LM saved in ``path`` (a folder ``load_config`` has accepted), on ``device``.
    Refused in one line: a weights or config file that is not whole (``WEIGHT_FILES``, checked
    by ``file_checks.folder_fault``), named; weights that cannot be read otherwise, by folder."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    quiet_progress_bars()
    path = Path(path)
    fault = folder_fault(path, WEIGHT_FILES)
    if fault is not None:
        raise ValueError(f"model: {fault}")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, SafetensorError) as e:  # no weights file, or a broken one
        why = _first_line(e)
        raise ValueError(f"model: the weights in {path} cannot be loaded: {why}") from None
    return model.to(device)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
):
    """A local Hugging Face causal LM and its tokenizer (left padding for generation), after the
    checks of the module docstring (config first, then tokenizer, then the weights)."""
    load_config(path)
    tokenizer = load_tokenizer(path)
    return load_weights(path, device, dtype), tokenizer


def check_run_inputs(cfg, task, model, tokenizer, prompt_format, budget: int, log) -> int:
    """What both engines check and say once before the first step: every training and held-out
    prompt fits the model's positions with ``budget`` response tokens (refused by name
    otherwise, ``rollout.check_prompt_lengths``), the ``generation_config`` settings our plain
    softmax(z/T) sampling overrides, and the notes on the data (``tasks.data_notes``). Returns
    the longest prompt in tokens."""
    from llm_bridge.rollout import check_prompt_lengths, sampling_overrides, sampling_warning
    from llm_bridge.tasks import data_notes

    longest = check_prompt_lengths(
        tokenizer,
        [e.prompt for e in task.train + task.test[: cfg.val_prompts]],
        budget,
        model_positions(model.config),
        prompt_format,
    )
    warning = sampling_warning(
        sampling_overrides(model.generation_config, cfg.temperature), cfg.temperature
    )
    for line in ([] if warning is None else [warning]) + data_notes(
        task, cfg.prompts_per_step, cfg.val_prompts, cfg.val_every
    ):
        log(line)
    return longest
