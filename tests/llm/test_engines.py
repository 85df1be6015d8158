"""One run, two engines: the same settings give the same run directory, compare reads any mix
of runs, Ctrl-C ends both engines the same way, and the packages' import graph has no circle."""

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llm_bridge import TrainConfig, compare_runs, train
from llm_bridge.compare import render_report
from softmax_theory.runlog import read_run

ROOT = Path(__file__).resolve().parents[2]
# what the TRL engine cannot know, and documents (docs/trl.md): which tokens were clipped
TRL_UNKNOWN_KEYS = {"attr/clipped", "attr/unclipped"}
TRL_UNKNOWN_ARRAYS = {"clipped"}


def _cfg(tiny_model, engine, **kw):
    base = dict(
        model=str(tiny_model),
        steps=3,
        prompts_per_step=2,
        group_size=4,
        checkpoint_every=0,
        val_every=2,
        val_prompts=2,
        token_steps_every=1,
        cov_table_steps=(0, 1),
        engine=engine,
    )
    return TrainConfig(**{**base, **kw})


def _files(run: Path) -> set[str]:
    return {
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.is_file() and not str(p.relative_to(run)).startswith(("final", "trl"))
    }


@pytest.mark.parametrize(
    "probe", [{}, {"probe_every": 2}, {"probe": False}], ids=["probed", "every2", "unprobed"]
)
def test_the_same_settings_give_the_same_run_directory_in_both_engines(tiny_model, tmp_path, probe):
    pytest.importorskip("trl")
    ours = train(_cfg(tiny_model, "ours", **probe), tmp_path / "ours")
    trl = train(_cfg(tiny_model, "trl", **probe), tmp_path / "trl")
    assert _files(ours) == _files(trl)
    assert {"config.json", "steps.jsonl", "cov_tables.jsonl"} <= _files(trl)
    rows_ours, rows_trl = read_run(ours).steps, read_run(trl).steps
    assert [r["step"] for r in rows_ours] == [r["step"] for r in rows_trl] == [0, 1, 2]
    probed = [
        s for s in range(3) if probe.get("probe", True) and s % probe.get("probe_every", 1) == 0
    ]
    for a, b in zip(rows_ours, rows_trl, strict=True):
        assert set(a) - TRL_UNKNOWN_KEYS == set(b), a["step"]
        assert ("delta_entropy" in b) == (b["step"] in probed)
        for key in ("entropy", "reward", "lr", "response_length", "actor/pg_loss"):
            assert np.isfinite(b[key])
    for name in _files(ours):
        if name.endswith(".npz"):
            arrays_ours, arrays_trl = (
                set(np.load(ours / name).files),
                set(np.load(trl / name).files),
            )
            assert arrays_ours - TRL_UNKNOWN_ARRAYS == arrays_trl and "response" in arrays_trl
    tables = [
        [json.loads(t) for t in (r / "cov_tables.jsonl").read_text().splitlines()]
        for r in (ours, trl)
    ]
    for t_ours, t_trl in zip(*tables, strict=True):
        assert t_ours.keys() == t_trl.keys() and t_ours["step"] == t_trl["step"]
        # every valid token of the step's batch, not the probed ones only
        assert t_trl["n_tokens"] == pytest.approx(
            rows_trl[t_trl["step"]]["response_length"] * 8, abs=1e-9
        )


def test_compare_reports_a_trl_run_an_ours_run_and_an_imported_run(tiny_model, tmp_path):
    pytest.importorskip("trl")
    from llm_bridge.integrations.importers import import_verl

    ours = train(_cfg(tiny_model, "ours"), tmp_path / "ours")
    trl = train(_cfg(tiny_model, "trl"), tmp_path / "trl")
    metrics = tmp_path / "verl.jsonl"
    rows = [
        {"step": k, "actor/entropy": 1.0 - 0.1 * k, "critic/score/mean": 0.1 * k} for k in range(8)
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    imported = import_verl(metrics, tmp_path / "imported").out
    reports = compare_runs([ours, trl, imported], tmp_path / "cmp", n_boot=20)
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert [r.name for r in reports] == ["ours", "trl", "imported"]
    assert text == render_report(reports)
    # the TRL run has the sign split but no clipped split: its row says so, ours has both
    assert "no clipped split" in text
    assert reports[0].attribution.get("attr/clipped") is not None
    assert "attr/clipped" not in reports[1].attribution and reports[1].attribution
    assert not reports[2].attribution  # an imported run has no probe at all
    assert reports[2].predictors == ()


def _start(tiny_model, engine, out, steps, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "llm_bridge.cli", "train", "--engine", engine]
    cmd += ["--model", str(tiny_model), "--steps", str(steps), "--prompts-per-step", "2"]
    cmd += ["--group-size", "4", "--val-every", "0", "--checkpoint-every", "0", "--out", str(out)]
    cmd += list(extra)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_sigint_finishes_the_step_writes_a_checkpoint_and_names_the_resume(
    tiny_model, tmp_path, engine
):
    if engine == "trl":
        pytest.importorskip("trl")
    out = tmp_path / "run"
    proc = _start(tiny_model, engine, out, steps=10_000)
    steps = out / "steps.jsonl"
    deadline = time.monotonic() + 180
    while not (steps.exists() and steps.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no step was written in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    last = [line for line in err.strip().splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: checkpoint written after step ") and "--resume" in last
    done = [r["step"] for r in read_run(out).steps]
    assert done == list(range(len(done)))
    assert f"after step {done[-1]} " in last  # the step in flight finished, and was logged
    ckpt = out / ("checkpoint" if engine == "ours" else "trl")
    assert any(ckpt.iterdir())
    # resume continues at the next step, losing and repeating none
    more = len(done) + 1
    resumed = _start(tiny_model, engine, out, more, "--resume")
    cmd_out = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, cmd_out[1][-2000:]
    assert [r["step"] for r in read_run(out).steps] == list(range(more))


def _imports(path: Path, package_root: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + (path.name == "__init__.py")]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def test_the_packages_import_graph_has_no_circle():
    modules = {}
    for pkg in ("softmax_theory", "llm_bridge"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    # a package's __init__ re-exports its modules: it is above them, not beside
    graph = {
        name: {m for m in _imports(path, ROOT / name.split(".")[0]) if m in modules and m != name}
        for name, path in modules.items()
        if not path.name == "__init__.py"
    }
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert "llm_bridge.engines" in graph and "llm_bridge.trainer" in graph["llm_bridge.engines"]


@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_report_to_tensorboard_round_trips_the_run_log(tiny_model, tmp_path, engine):
    """--report-to tensorboard in either engine: the event files read back with
    `import tensorboard` give the run log's values, the probe's keys included."""
    if engine == "trl":
        pytest.importorskip("trl")
    pytest.importorskip("tensorboard")
    from llm_bridge.integrations.importers import import_tensorboard

    out = train(_cfg(tiny_model, engine, report_to="tensorboard"), tmp_path / "run")
    back = read_run(import_tensorboard(out / "tensorboard", tmp_path / "back").out)
    rows = read_run(out).steps
    assert [r["step"] for r in back.steps] == [r["step"] for r in rows]
    for mine, theirs in zip(rows, back.steps, strict=True):
        for key in ("entropy", "reward", "delta_entropy", "pred_lemma1"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-12, abs=1e-15), key


@pytest.mark.parametrize("engine", ["ours", "trl"])
def test_the_mismatch_is_zero_when_the_trainer_samples_and_the_correction_runs(
    tiny_model, tmp_path, engine
):
    """HF generation (and TRL's own) samples from π_old: every mismatch key is 0 and every
    truncated importance weight is 1, so the corrected run is the uncorrected one."""
    if engine == "trl":
        pytest.importorskip("trl")
    from softmax_theory.policy import PolicyLossConfig

    plain = train(_cfg(tiny_model, engine), tmp_path / "plain")
    corrected = train(
        _cfg(tiny_model, engine, policy_loss=PolicyLossConfig(rollout_is="token")),
        tmp_path / "corrected",
    )
    for a, b in zip(read_run(plain).steps, read_run(corrected).steps, strict=True):
        for key in ("rollout/logp_diff_mean", "rollout/logp_diff_max"):
            assert a[key] == 0.0 and b[key] == 0.0
        for key in ("rollout/is_ratio_mean", "rollout/is_ratio_p05", "rollout/is_ratio_p95"):
            assert b[key] == 1.0
        assert b["actor/is_weight_mean"] == pytest.approx(1.0) and b["actor/is_clip_frac"] == 0
        assert b["attr/is_capped"] == 0.0
        assert b["attr/is_uncapped"] == pytest.approx(b["pred_lemma1"], rel=1e-9, abs=1e-15)
        assert b["entropy"] == pytest.approx(a["entropy"], rel=1e-6)
    tokens = np.load(corrected / "tokens" / "step_000000.npz")
    np.testing.assert_allclose(tokens["sampler_logp"], tokens["logp"], rtol=1e-6, atol=1e-6)


def test_our_engine_says_its_checkpoint_size_once(tiny_model, tmp_path):
    said: list[str] = []
    train(_cfg(tiny_model, "ours", checkpoint_every=1), tmp_path / "run", log=said.append)
    lines = [m for m in said if m.startswith("checkpoint after step")]
    assert len(lines) == 1 and lines[0].startswith("checkpoint after step 0:") and "MiB" in lines[0]


def test_taking_turns_takes_over_a_dead_holders_lock_and_releases_its_own(tmp_path):
    import os
    import subprocess
    import sys

    from llm_bridge.engines import taking_turns

    out = tmp_path / "run"
    lock = tmp_path / "run.lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lock.write_text(dead)
    with taking_turns(out, poll_s=0.01):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()
