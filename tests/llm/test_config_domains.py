"""The language-model configs check their own settings as they are built (library callers get
what the command line gets), before any model is loaded: the field is named, with the domain."""

import pytest

from llm_bridge.config import TrainConfig
from llm_bridge.tiny import TinyConfig
from softmax_theory.inputs import SettingError


@pytest.mark.parametrize(
    ("cls", "settings", "name", "words"),
    [
        (TrainConfig, {"val_prompts": 0, "val_every": 1}, "val_prompts", "integer ≥ 1, got 0"),
        (TrainConfig, {"group_size": 1}, "group_size", "≥ 2"),
        (TrainConfig, {"temperature": float("nan")}, "temperature", "> 0, got nan"),
        (TrainConfig, {"steps": 2.5}, "steps", "integer"),
        (TrainConfig, {"seed": True}, "seed", "integer"),
        (TrainConfig, {"cov_table_steps": (0, -1)}, "cov_table_steps", "each value"),
        (TrainConfig, {"cov_table_steps": (3,), "steps": 3}, "cov_table_steps", "past the last"),
        (TrainConfig, {"val_samples": 4}, "val_samples", "without val_k"),
        (TrainConfig, {"val_k": 4, "val_samples": 2}, "val_samples", "≥ val_k"),
        (TrainConfig, {"generate_batch_size": 12}, "generate_batch_size", "multiple"),
        (TrainConfig, {"mini_batches": 3}, "mini_batches", "divide"),
        (TrainConfig, {"terms": 101, "task": "running-sum"}, "terms", "[1, 100]"),
        (TrainConfig, {"w_reinforce_lambda": -0.1}, "w_reinforce_lambda", "≥ 0"),
        (TinyConfig, {"heads": 3}, "heads", "divide hidden_size"),
        (TinyConfig, {"lr": 0.0}, "lr", "> 0"),
        (TinyConfig, {"vocab_size": 0}, "vocab_size", "≥ 1"),
        (TinyConfig, {"terms": 4}, "terms", "no effect"),
    ],
)
def test_a_refused_setting_is_named(cls, settings, name, words):
    with pytest.raises(SettingError) as err:
        cls(**settings)
    assert err.value.name == name
    assert str(err.value).startswith(f"{name}: ") and words in str(err.value), str(err.value)


def test_validation_with_no_prompts_is_refused_but_no_validation_is_fine():
    """The case that used to fail deep inside validation with range() arg 3 must not be zero."""
    with pytest.raises(SettingError, match="val_prompts"):
        TrainConfig(val_prompts=0)
    assert TrainConfig(val_every=0).val_every == 0
    assert TrainConfig(val_prompts=1, val_every=1).val_prompts == 1
