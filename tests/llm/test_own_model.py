"""A researcher's own model folder: random weights in six architectures with a locally trained
BPE tokenizer (``tests/llm/own_model.py``). Loading and its refusals, chat-template rendering
(the same text and tokens as TRL's), sampling, and prompts longer than the model's positions."""

from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from llm_bridge.cli import main
from llm_bridge.models import load_model, model_positions
from llm_bridge.rollout import (
    HFBackend,
    PromptFormat,
    check_prompt_lengths,
    prompt_token_ids,
    render_prompt,
    rendered_example,
    uses_chat_template,
)
from llm_bridge.tiny import build_tokenizer as build_char_tokenizer
from tests.llm.own_model import (
    ARCHITECTURES,
    IM_END,
    build_model_folder,
    build_tokenizer,
    edit_json,
    write_config,
)

QUESTION = "Natalia sold clips to 48 of her friends. How many clips did she sell?"
CONVERSATION = (
    {"role": "system", "content": "Put the final answer in \\boxed{}."},
    {"role": "user", "content": QUESTION},
)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = build_model_folder(tmp_path_factory.mktemp("qwen2"), "qwen2")
    return path, *load_model(path)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_six_architectures_load_and_sample(tmp_path, arch):
    model, tok = load_model(build_model_folder(tmp_path / arch, arch, positions=128))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    if arch == "gpt2":  # no pad token of its own: it pads with EOS
        assert tok.pad_token == tok.eos_token
    assert model_positions(model.config) == 128
    roll = HFBackend(model, tok).generate([QUESTION], 2, 6, 1.0, torch.Generator().manual_seed(0))
    assert roll.response_ids.shape == (2, 6) and len(roll.texts) == 2


def test_qwen_folder_renders_with_its_chat_template(qwen):
    path, model, tok = qwen
    assert (path / "chat_template.jinja").exists()
    text = render_prompt(tok, QUESTION)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tok, QUESTION, "none") == QUESTION
    ids = prompt_token_ids(tok, QUESTION)
    assert ids == tok.encode(text, add_special_tokens=False)  # the template writes its specials
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 2
    assert prompt_token_ids(tok, QUESTION, PromptFormat("none")) == tok.encode(QUESTION)
    example = rendered_example(tok, CONVERSATION)
    assert example["text"].startswith("<|im_start|>system\nPut the final answer")
    assert example["chat_template"] and example["tokens"] == len(
        prompt_token_ids(tok, CONVERSATION)
    )


def test_conversations_need_a_template(qwen):
    _, _, tok = qwen
    with pytest.raises(ValueError, match="chat_template: none"):
        uses_chat_template(tok, CONVERSATION, "none")
    with pytest.raises(ValueError, match="chat_template: a prompt is a list of messages"):
        prompt_token_ids(build_tokenizer("llama"), CONVERSATION)
    with pytest.raises(ValueError, match="chat_template: 'jinja' is not one of auto, none"):
        PromptFormat("jinja")


def _trl_tokenize(tok, prompts):
    """TRL's GRPOTrainer turning its dataset's prompts into ids (its own method, on a stand-in
    for the trainer holding the attributes that method reads)."""
    from trl import GRPOTrainer

    fake = SimpleNamespace(
        processing_class=tok,
        _is_vlm=False,
        environment_factories=None,
        chat_template=None,
        tools=None,
        chat_template_kwargs={},
    )
    ids, _, _ = GRPOTrainer._tokenize_prompts(fake, prompts)
    return [list(r) for r in ids]


@pytest.mark.parametrize("prompt", [QUESTION, CONVERSATION], ids=["string", "conversation"])
def test_both_engines_read_the_same_prompt(qwen, prompt):
    """TRL renders a conversational prompt itself (``maybe_apply_chat_template``): the text and
    the token ids it reads equal ours."""
    from trl.data_utils import maybe_apply_chat_template

    _, _, tok = qwen
    field = trl_prompt(tok, prompt)
    messages = [dict(m) for m in prompt] if isinstance(prompt, tuple) else None
    assert field == (messages or [{"role": "user", "content": QUESTION}])
    assert maybe_apply_chat_template({"prompt": field}, tok)["prompt"] == render_prompt(tok, prompt)
    assert _trl_tokenize(tok, [field]) == [prompt_token_ids(tok, prompt)]


@pytest.mark.parametrize("tokenizer", ["char", "gpt2", "llama"])
def test_both_engines_read_the_same_raw_prompt(tokenizer):
    """Without a template, our engine reads BOS + the text; TRL's dataset gets the text that its
    ``tokenizer(text)`` encodes to the same ids."""
    tok = build_char_tokenizer() if tokenizer == "char" else build_tokenizer(tokenizer)
    prompt = "123+456=" if tokenizer == "char" else QUESTION
    ours = prompt_token_ids(tok, prompt)
    assert ours[0] == tok.bos_token_id and len(ours) == 1 + len(
        tok.encode(prompt, add_special_tokens=False)
    )
    assert _trl_tokenize(tok, [trl_prompt(tok, prompt)]) == [ours]


def test_long_prompts_are_refused_or_cut(tmp_path):
    """GPT-2 with 128 positions: a longer prompt failed mid-generation with an index error."""
    model, tok = load_model(build_model_folder(tmp_path / "gpt2", "gpt2", positions=128))
    long_prompt = " ".join([QUESTION] * 12)
    n_tokens = len(prompt_token_ids(tok, long_prompt))
    assert n_tokens > 128
    positions = model_positions(model.config)
    with pytest.raises(ValueError) as err:
        check_prompt_lengths(tok, [QUESTION, long_prompt], 32, positions)
    msg = str(err.value)
    assert msg.startswith("max_prompt_tokens: prompt 1 is") and "at most 96" in msg
    with pytest.raises(ValueError, match="max_new_tokens: 128 response tokens"):
        check_prompt_lengths(tok, [QUESTION], 128, positions)
    cut = PromptFormat(max_prompt_tokens=96)
    assert check_prompt_lengths(tok, [QUESTION, long_prompt], 32, positions, cut) == 96
    ids = prompt_token_ids(tok, long_prompt, cut)
    assert ids == prompt_token_ids(tok, long_prompt)[-96:]  # cut from the left: the end kept
    roll = HFBackend(model, tok, cut).generate(
        [long_prompt], 2, 32, 1.0, torch.Generator().manual_seed(0)
    )
    assert roll.prompt_length == 96 and roll.response_ids.shape == (2, 32)
    with pytest.raises(ValueError, match="max_prompt_tokens: the TRL engine cannot cut"):
        trl_prompt(tok, long_prompt, cut)


def trl_prompt(*args):
    """The TRL engine's prompt field (``integrations.trl.data``), where TRL is installed."""
    pytest.importorskip("trl")
    from llm_bridge.integrations.trl.data import trl_prompt as field

    return field(*args)


def _bert_masked_lm(path):
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["BertForMaskedLM"]
    return write_config(path, config)


WRONG_FOLDERS = {
    "t5": (
        lambda p: write_config(p, tf.T5Config(architectures=["T5ForConditionalGeneration"])),
        "holds a T5ForConditionalGeneration model",
    ),
    # a config without architectures: its model type is looked up instead
    "distilbert": (lambda p: write_config(p, tf.DistilBertConfig()), "holds a distilbert model"),
    "bert-masked-lm": (_bert_masked_lm, "BertForMaskedLM model, not a causal language model"),
}


@pytest.mark.parametrize("kind", list(WRONG_FOLDERS))
def test_folders_that_are_not_causal_lms_are_named(tmp_path, kind):
    make, pattern = WRONG_FOLDERS[kind]
    with pytest.raises(ValueError, match=pattern) as err:
        load_model(make(tmp_path / kind))
    assert str(err.value).startswith("model: ") and "\n" not in str(err.value)
    assert len(str(err.value)) < 300  # not transformers' list of every model type


def test_tokenizer_problems_are_named(tmp_path):
    path = build_model_folder(tmp_path / "m", "llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).rename(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_model(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).rename(path / name)
    edit_json(path / "tokenizer_config.json", eos_token=None, pad_token=None)
    with pytest.raises(ValueError, match="neither an EOS nor a pad token"):
        load_model(path)
    edit_json(path / "config.json", model_type="not-a-model")
    with pytest.raises(ValueError, match="model_type 'not-a-model'"):
        load_model(path)


def test_cli_names_a_wrong_folder_in_one_line_with_exit_2(tmp_path, cli):
    folder = _bert_masked_lm(tmp_path / "bert")
    result = cli(main, ["train", "--model", str(folder), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "BertForMaskedLM" in result.output and "Traceback" not in result.output
