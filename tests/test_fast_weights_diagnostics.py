"""benchmarks/fast_weights_diagnostics.py: the probes' bookkeeping against hand-made cases, and
one tiny run end to end (the figures themselves live in docs/fast_weights_learning.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fw_agents.memory import FastWeightsRNN

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diagnostics():
    if str(ROOT / "benchmarks") not in sys.path:  # as when run as a script: it imports suite_tasks
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("fast_weights_diagnostics", ROOT / "benchmarks" / "fast_weights_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_episode_steps_count_from_each_start(diagnostics):
    starts = np.array([[1, 0], [0, 0], [0, 1], [1, 0]], dtype=np.float32)
    assert diagnostics.episode_steps(starts).tolist() == [[0, -1], [1, -1], [2, 0], [0, 1]]


def test_shares_and_reach_on_a_fresh_core(diagnostics):
    """The fast memory is empty at an episode's first step, the slow recurrence too (h = 0), and the
    reach at lag 0 is 1 by definition; an input of another episode never counts."""
    torch.manual_seed(0)
    core = FastWeightsRNN(6, 8, fast_share=0.5)
    x = torch.relu(torch.randn(7, 3, 6))
    starts = torch.zeros(7, 3)
    starts[0] = 1.0
    starts[4, 1] = 1.0
    fast, slow = diagnostics.drive_shares(core, x, starts)
    assert fast.shape == slow.shape == (7, 3)
    assert np.all(fast[0] == 0) and np.all(slow[0] == 0) and fast[4, 1] == 0 and slow[4, 1] == 0
    assert np.all(fast[1:4] > 0) and np.all(slow[1:4] > 0)
    spread = diagnostics.reach(core, x, starts, window=3, ends=3, seed=0)
    assert spread[0] == pytest.approx(1.0) and np.all(spread[1:] > 0)


def test_a_tiny_run_writes_its_report(diagnostics, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "report.md"
    args = ["--timesteps", "1024", "--probes", "2", "--probe-envs", "4", "--probe-steps", "12", "--window", "3",
            "--ends", "2", "--variant", 'bc={"bias_correction": true}', "--out", str(out)]  # fmt: skip
    assert diagnostics.main(args) == 0
    text = out.read_text()
    assert '"bias_correction": true' in text and text.count("| 0 |") == 2 and text.count("| 1,024 |") == 2


@pytest.mark.parametrize("bad", [["--variant", "x"], ["--variant", "x=[1]"], ["--variant", 'x={"decay": 2}'],
                                 ["--variant", 'x={"policy": {}}'], ["--probes", "1"], ["--window", "0"]])  # fmt: skip
def test_bad_input_is_one_line(diagnostics, bad, capsys):
    try:
        status = diagnostics.run_cli(diagnostics.main, bad)
    except SystemExit as exit_info:  # argparse's own errors
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
