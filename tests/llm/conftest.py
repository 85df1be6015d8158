import pytest

from llm_bridge.tiny import TinyConfig, pretrain_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny model pre-trained for a few steps (not accurate; enough to exercise the code)."""
    path = tmp_path_factory.mktemp("tiny")
    pretrain_tiny(TinyConfig(steps=40, warmup=5), path, log=lambda _: None)
    return path
