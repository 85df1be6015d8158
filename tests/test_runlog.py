"""The run log's rewrites are atomic: a failure mid-rewrite leaves the old file whole."""

import json

import pytest

from softmax_theory import runlog
from softmax_theory.runlog import STEPS_FILE, RunWriter, atomic_write_text, read_run, truncate_steps


def _run(tmp_path, n=5):
    out = tmp_path / "run"
    with RunWriter(out, {"env": "x"}) as w:
        for k in range(n):
            w.write({"step": k, "entropy": 1.0 - k / 10})
    return out


def test_atomic_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


class _HalfWritten:
    """A file whose write stops halfway with an error (a full disk, a kill)."""

    def __init__(self, path, mode, encoding=None):
        self._f = open(path, mode, encoding=encoding)  # noqa: SIM115

    def write(self, text):
        self._f.write(text[: len(text) // 2])
        self._f.flush()
        raise OSError("write failed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("fails", ["write", "fsync", "replace"])
def test_a_failed_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch, fails):
    path = tmp_path / "f.json"
    path.write_text("old and whole")

    def boom(*args, **kwargs):
        raise OSError(f"{fails} failed")

    if fails == "write":
        monkeypatch.setattr(runlog, "open", _HalfWritten, raising=False)
    else:
        monkeypatch.setattr(runlog.os, fails, boom)
    with pytest.raises(OSError, match=fails):
        atomic_write_text(path, "new " * 1000)
    assert path.read_text() == "old and whole"
    assert list(tmp_path.iterdir()) == [path]


def test_truncate_steps_keeps_the_earlier_steps(tmp_path):
    out = _run(tmp_path)
    assert truncate_steps(out, 3) == 2
    assert [s["step"] for s in read_run(out).steps] == [0, 1, 2]


def test_a_kill_mid_truncation_keeps_the_whole_log(tmp_path, monkeypatch):
    out = _run(tmp_path)
    before = (out / STEPS_FILE).read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-rewrite")

    monkeypatch.setattr(runlog.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_steps(out, 2)
    assert (out / STEPS_FILE).read_text() == before
    assert [json.loads(line)["step"] for line in before.splitlines()] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", STEPS_FILE]
