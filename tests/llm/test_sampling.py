"""Sampling is softmax(z/T) whatever the model folder's generation_config says, and responses
end at the model's stop tokens (the tokenizer's EOS and the generation_config's list)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import GenerationConfig

from llm_bridge.models import load_model
from llm_bridge.rollout import (
    HFBackend,
    VLLMBackend,
    encode_prompts,
    finish,
    plain_sampling,
    sampling_config,
    sampling_overrides,
    sampling_warning,
    stop_token_ids,
)
from tests.llm.own_model import ENDOFTEXT, IM_END, build_model_folder, edit_json

# false-alarm rate of the χ² goodness-of-fit test: a correct sampler fails it with this chance
CHI2_ALPHA = 1e-3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_tiny_model_samples_are_unchanged(tiny_model, temperature):
    """The demo's numbers do not move: for the tiny model, the backend draws the same tokens
    from the same generator as the call it made before sampling was made explicit (keyword
    settings on top of the model's own generation_config, the tokenizer's EOS)."""
    model, tok = load_model(tiny_model)
    prompts = ["123+456=", "001+002="]
    new = HFBackend(model, tok).generate(
        prompts, 3, 6, temperature, torch.Generator().manual_seed(0)
    )
    rows = [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p in prompts]
    ids, mask = encode_prompts(tok, prompts, 3, "cpu")
    assert ids.tolist() == [r for r in rows for _ in range(3)]  # BOS + the raw text, as before
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=6,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    response = out[:, ids.shape[1] :]
    response = torch.nn.functional.pad(response, (0, 6 - response.shape[1]), value=tok.pad_token_id)
    old = finish(tok, ids, mask, response)
    assert torch.equal(new.input_ids, old.input_ids) and new.texts == old.texts
    assert torch.equal(new.response_mask, old.response_mask)


def test_sampling_overrides_name_what_the_folder_sets():
    qwen_instruct = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
    )
    assert sampling_overrides(qwen_instruct, 1.0) == [
        "temperature=0.7",
        "top_k=20",
        "top_p=0.8",
        "repetition_penalty=1.05",
    ]
    assert sampling_overrides(qwen_instruct, 0.7) == [
        "top_k=20",
        "top_p=0.8",
        "repetition_penalty=1.05",
    ]
    greedy = GenerationConfig(do_sample=False, suppress_tokens=[3], min_new_tokens=4)
    assert sampling_overrides(greedy, 1.0) == [
        "do_sample=False",
        "suppress_tokens=[3]",
        "min_new_tokens=4",
    ]
    assert sampling_overrides(sampling_config(1.0, 8, [2], 0), 1.0) == []
    assert sampling_overrides(GenerationConfig(), 1.0) == [] and sampling_overrides(None, 1.0) == []
    line = sampling_warning(["repetition_penalty=5.0"], 1.0)
    assert "repetition_penalty=5.0" in line and "\n" not in line
    assert sampling_warning([], 1.0) is None


def _pooled_chi2(counts: np.ndarray, p: np.ndarray) -> float:
    """The χ² goodness-of-fit p-value of ``counts`` against probabilities ``p``, the cells
    expected below 5 pooled into one (the χ² approximation needs about 5 per cell)."""
    expected = p * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def penalised_model(tmp_path_factory):
    """A random Qwen2-architecture model whose logits spread (weights' std 0.3) and whose
    generation_config sets a repetition penalty, top-k, and suppresses its likeliest first
    token: every one of them, if inherited, moves the first token away from softmax(z/T)."""
    path = build_model_folder(tmp_path_factory.mktemp("penalised"), "qwen2", init=0.3)
    model, tok = load_model(path)
    ids, mask = encode_prompts(tok, [PROMPT], 1, "cpu")
    with torch.no_grad():
        top = int(model(input_ids=ids, attention_mask=mask).logits[0, -1].argmax())
    edit_json(
        path / "generation_config.json",
        repetition_penalty=5.0,
        top_k=5,
        suppress_tokens=[top],
        do_sample=True,
    )
    return load_model(path)


PROMPT = "How many clips did Natalia sell altogether?"


def test_first_tokens_follow_softmax_over_t(penalised_model):
    """4,000 first response tokens, χ² against softmax(z/T) of the prompt's last position
    (false-alarm rate CHI2_ALPHA). The same test on the folder's own settings rejects (power)."""
    model, tok = penalised_model
    temperature, n = 0.8, 4000
    assert len(sampling_overrides(model.generation_config, temperature)) == 3
    roll = HFBackend(model, tok).generate(
        [PROMPT], n, 1, temperature, torch.Generator().manual_seed(0)
    )
    ids, mask = encode_prompts(tok, [PROMPT], 1, "cpu")
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=mask).logits[0, -1].double()
    p = torch.softmax(z / temperature, -1).numpy()
    assert p.max() > 0.05  # the logits spread: the penalties have something to change
    counts = np.bincount(roll.response_ids[:, 0].numpy(), minlength=p.size)
    assert _pooled_chi2(counts, p) > CHI2_ALPHA

    # power: the folder's settings inherited (a plain generate call) are rejected at once
    ids_n, mask_n = encode_prompts(tok, [PROMPT], n, "cpu")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        own = model.generate(
            input_ids=ids_n, attention_mask=mask_n, temperature=temperature, max_new_tokens=1
        )
    own_counts = np.bincount(own[:, -1].numpy(), minlength=p.size)
    assert _pooled_chi2(own_counts, p) < 1e-12


def test_a_passed_generation_config_alone_still_inherits(penalised_model):
    """Why ``plain_sampling`` swaps the model's generation_config: transformers fills each
    setting a passed config leaves unset from the model's own, so the suppressed token would
    never be drawn; inside ``plain_sampling`` it is drawn about as often as softmax says."""
    model, tok = penalised_model
    (suppressed,) = model.generation_config.suppress_tokens
    config = sampling_config(1.0, 1, stop_token_ids(model.generation_config, tok), tok.pad_token_id)
    ids, mask = encode_prompts(tok, [PROMPT], 4000, "cpu")

    def draw() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[
                :, -1
            ]

    assert (draw() == suppressed).sum() == 0
    with plain_sampling(model, config):
        assert (draw() == suppressed).float().mean() > 0.05
    assert model.generation_config.suppress_tokens == [suppressed]  # restored


def test_finish_masks_after_the_first_stop_token_of_any_kind():
    tok = SimpleNamespace(
        eos_token_id=7, pad_token_id=0, decode=lambda ids, **_: ",".join(map(str, ids))
    )
    prompt = torch.ones(3, 2, dtype=torch.long)
    response = torch.tensor([[3, 9, 4, 7], [7, 1, 9, 3], [1, 2, 3, 4]])
    roll = finish(tok, prompt, torch.ones_like(prompt), response, stop_ids=(7, 9))
    assert roll.response_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert roll.response_ids.tolist() == [[3, 9, 0, 0], [7, 0, 0, 0], [1, 2, 3, 4]]
    assert roll.texts == ("3", "", "1,2,3,4")  # the stop token is not part of the text
    # the tokenizer's EOS alone (the default): 9 is an ordinary token
    eos_only = finish(tok, prompt, torch.ones_like(prompt), response)
    assert eos_only.response_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_generation_ends_at_the_generation_configs_stop_tokens(tmp_path):
    """Qwen-Instruct's layout (EOS <|im_end|>, generation_config [<|im_end|>, <|endoftext|>]) and
    a third of the vocabulary added to the list: responses end at the first of any of them."""
    path = build_model_folder(tmp_path / "m", "qwen2")
    model, tok = load_model(path)
    im_end, endoftext = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)
    assert stop_token_ids(model.generation_config, tok) == (im_end, endoftext)
    many = [im_end, endoftext, *range(100, 100 + len(tok) // 3)]
    model.generation_config.eos_token_id = many
    backend = HFBackend(model, tok)
    assert backend.stop_ids == (im_end, *[t for t in many if t != im_end])
    roll = backend.generate([PROMPT], 64, 12, 1.0, torch.Generator().manual_seed(0))
    ended = 0
    for ids, m in zip(roll.response_ids.tolist(), roll.response_mask.tolist(), strict=True):
        first = next((i for i, t in enumerate(ids) if t in many), None)
        if first is None:
            assert all(m)
        else:
            ended += 1
            assert m == [1] * (first + 1) + [0] * (len(ids) - first - 1)
    assert ended > 48  # P(no stop in 12 draws at ≈ 1/3 each) ≈ 0.8%: almost every row ends


def test_vllm_backend_gets_plain_sampling_and_the_stop_tokens():
    seen = {}

    class FakeEngine:
        def generate(self, prompts, params, use_tqdm=False):
            seen["params"] = params
            done = SimpleNamespace(token_ids=[5, 6, 9, 4])  # 9: a generation_config stop token
            return [SimpleNamespace(outputs=[done] * params.n) for _ in prompts]

    tok = SimpleNamespace(
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=1,
        chat_template=None,
        encode=lambda text, add_special_tokens=False: [3] * len(text),
        decode=lambda ids, **_: "x" * len(ids),
    )
    backend = VLLMBackend(
        "unused", tok, engine=FakeEngine(), sampling_params_cls=SimpleNamespace, stop_ids=(2, 9)
    )
    roll = backend.generate(["ab"], 2, 5, 1.0, torch.Generator().manual_seed(0))
    p = seen["params"]
    assert (p.top_k, p.top_p, p.min_p, p.repetition_penalty) == (-1, 1.0, 0.0, 1.0)
    assert (p.presence_penalty, p.frequency_penalty, p.min_tokens) == (0.0, 0.0, 0)
    assert p.stop_token_ids == [2, 9]
    assert roll.response_mask.tolist() == [[1, 1, 1, 0, 0]] * 2 and roll.texts == ("xx",) * 2
