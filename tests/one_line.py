"""The check every CLI-mistake test makes: one line on stderr, ``error: …`` naming what it
must, exit code 2, no traceback."""


def expect_one_line(result, *names) -> None:
    """``result`` (``tests/conftest.py``'s ``CliResult``) is a one-line refusal naming
    ``names``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
