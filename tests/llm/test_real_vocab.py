"""The probe's claim at a real vocabulary (V = 151,936), where the padded tail carries a fifth
of the entropy: the same claim as at V = 17. Slow (pre-training the padded head takes minutes)."""

import pytest

from llm_bridge import TinyConfig, TrainConfig, pretrain_tiny, train
from llm_bridge.tiny import QWEN_VOCAB
from softmax_theory.runlog import read_run


@pytest.mark.slow
def test_lemma1_and_the_jvp_track_a_small_step_at_a_real_vocabulary(tmp_path):
    model = tmp_path / "model"
    summary = pretrain_tiny(
        TinyConfig(
            steps=400,
            lr=3e-3,
            warmup=50,
            label_noise=0.0,
            vocab_size=QWEN_VOCAB,
            pad_steps=100,
        ),
        model,
        log=lambda _: None,
    )
    assert summary["padding"]["tail_entropy_share"] > 0.05  # the tail matters
    cfg = TrainConfig(
        model=str(model),
        steps=2,
        prompts_per_step=4,
        group_size=4,
        mini_batches=1,
        micro_batch_size=4,
        lr=1e-5,
        warmup_steps=0,
        val_every=0,
        checkpoint_every=0,
    )
    train(cfg, tmp_path / "run")
    for rec in read_run(tmp_path / "run").steps:
        assert rec["token_corr/lemma1"] >= 0.99
        assert rec["token_corr/jvp"] >= 0.99
