"""Figures drawn without touching the user's matplotlib backend; the Table 1/2 sweeps' command lines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_figures_leave_the_backend_alone(tmp_path: Path) -> None:
    """No matplotlib.use() and no pyplot: a user's interactive backend stays theirs."""
    script = f"""
import sys
import matplotlib
matplotlib.use("svg")
from fw_agents.runs import plots
from fw_agents.tasks.training import plot_curves
curve = [{{"updates": 0, "val_nll": 2.0, "test_nll": 2.1, "val_error": 0.9, "test_error": 0.9}},
         {{"updates": 5, "train_loss": 1.5, "train_error": 0.5, "val_nll": 1.0, "test_nll": 1.1, "val_error": 0.4, "test_error": 0.5}}]
plot_curves(curve, __import__("pathlib").Path({str(tmp_path / "curves.png")!r}), title="t")
plots.plot_learning_curve({str(tmp_path)!r}, title="t")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True, timeout=120).stdout
    assert out.split() == ["svg", "False"]
    for name in ("curves.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--sizes", "20", "0"], "sizes must be an integer >= 1, got 0"),
        (["--threads", "0"], "threads must be an integer >= 1, got 0"),
        (["--device", "mps"], "unknown device 'mps'"),
        (["--wandb", "sometimes"], "invalid choice: 'sometimes'"),
    ],
)
def test_table1_bad_input_is_one_line(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fw_agents.cli import run_cli

    table1 = _benchmark("table1_retrieval")
    try:
        status = run_cli(table1.main, [*argv, "--out-dir", str(tmp_path / "out")])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_table1_passes_its_flags_to_every_cell(tmp_path: Path) -> None:
    table1 = _benchmark("table1_retrieval")
    argv = ["--models", "lstm", "--sizes", "4", "--steps", "2", "--eval-every", "1", "--batch-size", "8"]
    assert table1.main([*argv, "--lr", "0.01", "--seed", "3", "--device", "cpu", "--out-dir", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "lstm-4" / "config.json").read_text())
    expected = {"steps": 2, "eval_every": 1, "batch_size": 8, "lr": 0.01, "seed": 3, "device": "cpu", "hidden": 4}
    assert {key: config[key] for key in expected} == expected
    assert "(batch 8, Adam lr 0.01" in (tmp_path / "table1.md").read_text()


def test_run_grid_stops_on_ctrl_c_then_resumes_the_cell_and_force_reruns(tmp_path: Path) -> None:
    """Ctrl-C / SIGTERM in a cell stops the sweep; the next sweep resumes that cell from its
    training state; ``force`` re-runs a finished cell (its old folder kept aside)."""
    from fw_agents.tasks.sweep import Cell, run_grid

    seen: list[list[str]] = []

    def main(argv):  # a task command's contract, in miniature
        seen.append(list(argv))
        flag, folder = argv[-2], Path(argv[-1])
        if flag == "--run-dir" and (folder / "config.json").exists():
            return 2  # "run folder already holds a run"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        (folder / "training_state.pt").write_text("")
        if len(seen) == 1:
            return 143  # SIGTERM: state saved, no results
        (folder / "results.json").write_text('{"test_error": 0.5}')
        return 0

    cells = [Cell("m", 1, ("--x",)), Cell("m", 2, ("--x",))]
    with pytest.raises(SystemExit) as stop:
        run_grid(main, cells, tmp_path)
    assert stop.value.code == 143 and len(seen) == 1, "the sweep stops with the cell"
    results = run_grid(main, cells, tmp_path)
    assert seen[1][-2:] == ["--resume", str(tmp_path / "m-1")] and seen[2][-2] == "--run-dir"
    assert results[("m", 1)] == results[("m", 2)] == {"test_error": 0.5}
    results = run_grid(main, cells[:1], tmp_path, force=True)
    assert seen[3][-2] == "--run-dir" and results[("m", 1)] == {"test_error": 0.5}
    assert len(list(tmp_path.glob("m-1.replaced-*"))) == 1


def test_probe_bad_inputs_classifies_a_subset(tmp_path: Path) -> None:
    """benchmarks/probe_bad_inputs.py (slow in full: not run here) on two cheap cases, as a
    subprocess of its own: each refused in one line, nothing left behind, the summary written."""
    probe = ROOT / "benchmarks" / "probe_bad_inputs.py"
    argv = [sys.executable, str(probe), "--only", "retrieval-batch-size", "--only", "zoo-train-bogus-algo",
            "--timeout", "120", "--out", str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    records = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["name"] for r in records] == ["retrieval-batch-size-1e8", "zoo-train-bogus-algo"]
    assert all(r["outcome"] == "clean" and r["status"] == 2 and r["left_count"] == 0 for r in records), records
    assert "2 of 2 cases as wanted" in (tmp_path / "out" / "summary.md").read_text()
    probe_module = _benchmark("probe_bad_inputs")  # the other outcomes, from made-up runs
    classify, case = probe_module.classify, probe_module.Case("x", ("cmd",), names="bad")
    assert classify(case, None, []) == "hang" and classify(case, -9, []) == "crash"
    assert classify(case, 1, ["Traceback (most recent call last):", "ValueError: bad"]) == "traceback"
    assert classify(case, 0, []) == "silent" and classify(case, 2, ["error: bad", "more"]) == "noisy"
    assert classify(case, 2, ["error: x"]) == "vague" and classify(case, 2, ["error: BAD value"]) == "clean"
