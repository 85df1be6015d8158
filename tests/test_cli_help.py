"""Every command's --help fits an 80-column terminal."""

import pytest

from llm_bridge.cli import main as llm_main
from softmax_theory.cli import main as theory_main

COMMANDS = [(theory_main, c) for c in ("check", "sweep", "simulate", "fit")] + [
    (llm_main, c) for c in ("train", "compare", "pretrain-tiny", "import verl")
]


@pytest.mark.parametrize("main, command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_help_fits_80_columns(cli, monkeypatch, main, command):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(main, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    too_wide = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
    assert len(result.stdout.splitlines()) > 5  # the help was printed


def test_the_progress_line_names_a_step_without_signal_and_skips_what_is_absent():
    from llm_bridge.cli import progress_line

    assert progress_line({"step": 3, "reward": 0.5}) == "reward 0.500"
    line = progress_line({"step": 0, "reward": 0.0, "entropy": 1.0, "adv/nonzero_frac": 0.0})
    assert line.endswith("no signal") and "H 1.0000" in line
    assert "no signal" not in progress_line({"step": 0, "reward": 0.25, "adv/nonzero_frac": 0.5})
