"""The GPU run's script, end to end on the CPU at toy size (``--cpu-smoke``): the same stages and
the same output folder as on the card, so a GPU lease is never spent on a broken script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_smoke_writes_every_file(tmp_path):
    pytest.importorskip("trl")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path), "--cpu-smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] and report["card"]["device"] == "cpu"
    stages = report["stages"]
    assert set(stages) == {"pretrain", "ours_vanilla", "ours_kl_cov", "trl"}
    for name in ("ours_vanilla", "ours_kl_cov"):
        stage = stages[name]
        assert stage["steps"] >= 1 and stage["response_tokens_per_s"] > 0
        lines = (tmp_path / name / "steps.jsonl").read_text().splitlines()
        assert len(lines) == stage["steps"]
        # one update per step: the JVP forecast is made at every step (its correlation may be
        # undefined at toy size, when a step's advantages are all zero)
        assert all(json.loads(line).get("pred_jvp") is not None for line in lines)
    assert stages["trl"]["ours_over_trl_median"] > 0
    assert "skipped" in (tmp_path / "pytest.txt").read_text()  # the gpu tests, without CUDA
    # what comes back from the device machine: at most 8 files, at most 2 folders down
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in files)


def test_gpu_check_refuses_to_run_without_cuda_unless_smoke(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run for real")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: device:")
