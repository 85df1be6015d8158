"""docs/real-model.md's commands, run as written (the size flags turned down at the end of each
line) on a random-weight model of Qwen2.5's architecture and vocabulary size (V = 151,936), with a
ChatML template and Qwen-Instruct's stop tokens, and a GSM8K-style parquet file."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from softmax_theory.runlog import read_run
from tests.llm.own_model import IM_END, build_tokenizer, model_config

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 151_936
# appended to each documented command: the same run, small enough for this CPU
SMALL = "--steps 1 --prompts-per-step 2 --group-size 2 --mini-batches 1 --micro-batch-size 2 "
SMALL += "--max-new-tokens 8 --val-every 0 --checkpoint-every 0"
# random weights never stop within the budget: with --mask-truncated no token would be left
SMALL += " --no-mask-truncated"


def _qwen_sized(path: Path) -> Path:
    """A Qwen2 folder at V = 151,936: the locally trained BPE, its vocabulary filled up to
    Qwen2.5's size with tokens no text encodes to (they still decode)."""
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2ForCausalLM

    small = build_tokenizer("qwen2")
    spec = json.loads(small.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    used = max(max(vocab.values()), *(t["id"] for t in spec["added_tokens"])) + 1
    for i in range(VOCAB - used):
        vocab[f"<unused_{i}>"] = used + i
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        chat_template=small.chat_template,
        eos_token=small.eos_token,
        pad_token=small.pad_token,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    assert len(tok) == VOCAB
    config = model_config("qwen2", tok)
    config.vocab_size = VOCAB
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=True,
        eos_token_id=[tok.convert_tokens_to_ids(IM_END), tok.pad_token_id],
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _documented_commands() -> list[str]:
    text = (ROOT / "docs" / "real-model.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("## The commands") :], re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("llm-bridge")]


def test_the_documented_recipe_runs_in_both_engines(tmp_path):
    pytest.importorskip("trl")
    pd = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    model = _qwen_sized(tmp_path / "qwen")
    rows = [
        {
            "question": f"What is {a} times {b}?",
            "answer": f"{a} times {b} is {a * b}.\n#### {a * b}",
        }
        for a in range(1, 6)
        for b in range(1, 5)
    ]
    data = tmp_path / "train.parquet"
    pd.write_table(pa.Table.from_pylist(rows), data)
    commands = _documented_commands()
    assert [c.split("--engine ")[1].split()[0] for c in commands] == ["ours", "trl"]
    configs = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in commands:
        line = command.replace("$MODEL", str(model)).replace("$DATA", str(data))
        args = shlex.split(line)[1:] + shlex.split(SMALL)  # the later flag wins
        # as a user runs it: its own process (the TRL engine leaves without the teardown)
        done = subprocess.run(
            [sys.executable, "-m", "llm_bridge.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = tmp_path / args[args.index("--out") + 1]
        (rec,) = read_run(out).steps
        assert rec["response_length"] <= 8 and "entropy" in rec and "delta_entropy" in rec
        assert "rollout/logp_diff_mean" in rec and "response/clip_frac" in rec
        assert (out / "final" / "config.json").exists()  # --save-final
        configs[out.name] = json.loads((out / "config.json").read_text())
        assert (
            configs[out.name]["lr"] == 1e-6
            and configs[out.name]["policy_loss"]["loss_mode"] == "clip_higher"
        )
    ours, trl = configs.values()
    assert ours["rendered_prompt"] == trl["rendered_prompt"]
    assert ours["rendered_prompt"].startswith("<|im_start|>system")
