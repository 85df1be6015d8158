"""Shared fixtures: run a command line as a user does (its entry point, not typer's runner)."""

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(capsys):
    """``cli(main, [args…])`` → CliResult: the entry point's exit code, stdout and stderr."""

    def run(main, args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny model pre-trained for a few steps (not accurate; enough to exercise the code)."""
    from llm_bridge.tiny import TinyConfig, pretrain_tiny

    path = tmp_path_factory.mktemp("tiny")
    pretrain_tiny(
        TinyConfig(steps=40, warmup=5, lr=3e-3, label_noise=0.0), path, log=lambda _: None
    )
    return path
