"""benchmarks/figure5.py: its trials become TrainConfigs (memory_kwargs), and old runs and tables still read."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fw_agents.agent import TrainConfig, check_memory_kwargs

ROOT = Path(__file__).resolve().parents[1]
FIGURE5_PATH = ROOT / "benchmarks" / "figure5.py"
BEST = dict(learning_rate=0.00084, memory_kwargs=dict(fast_lr=0.049, decay=0.88, inner_steps=2, normalize=False))


def _import_figure5():  # benchmarks/ is not a package
    spec = importlib.util.spec_from_file_location("figure5", FIGURE5_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figure5 = _import_figure5()


def test_sampled_trials_are_valid_configs():
    for memory in ("fastweights", "lstm", "irnn"):
        params = figure5.sample_hyperparameters(memory, np.random.default_rng([3, 0]))
        config = TrainConfig(memory=memory, **params)
        check_memory_kwargs(memory, config.memory_kwargs)
        assert ("memory_kwargs" in params) == (memory == "fastweights")
    fast = figure5.sample_hyperparameters("fastweights", np.random.default_rng([0, 0]))
    assert fast["memory_kwargs"]["normalize"] is False
    assert set(fast["memory_kwargs"]) == {"fast_lr", "decay", "inner_steps", "normalize"}
    assert "fast_lr=" in figure5._params_text(fast) and "memory_kwargs" not in figure5._params_text(fast)


def test_best_of_table_new_and_old_form(tmp_path):
    shipped = ROOT / "benchmarks" / "figure5_best16.json"
    assert figure5.best_trial(shipped, "fastweights") == BEST
    assert figure5.best_trial(shipped, "lstm") == dict(learning_rate=0.0021)
    old = tmp_path / "old.json"  # before memory_kwargs: the fast-weights options as fields
    old.write_text(json.dumps({"fastweights": {"learning_rate": 0.00084, "fast_lr": 0.049, "decay": 0.88,
                                               "inner_steps": 2, "fast_normalize": False}}))  # fmt: skip
    assert figure5.best_trial(old, "fastweights") == BEST


def _search_run(root: Path, name: str, config: dict, curve: list[float]) -> None:
    run = root / name
    run.mkdir(parents=True)
    np.savez(run / "evaluations.npz", timesteps=np.arange(len(curve)), results=np.array(curve)[:, None])
    (run / "config.json").write_text(json.dumps(config))


def test_best_of_search_dir_reads_old_and_new_runs(tmp_path):
    old_fields = dict(learning_rate=0.001, fast_lr=0.01, decay=0.9, inner_steps=1)  # no fast_normalize: paper's η
    _search_run(tmp_path, "CatchBlind16-v0-fastweights-t0", dict(old_fields), [0.0, 0.5])
    new = dict(learning_rate=0.002, memory_kwargs=dict(fast_lr=0.02, decay=0.8, inner_steps=2, normalize=False))
    _search_run(tmp_path, "CatchBlind16-v0-fastweights-t1", new, [0.0, 0.2])
    _search_run(tmp_path, "CatchBlind16-v0-lstm-t0", dict(old_fields, memory="lstm"), [0.1])
    assert figure5.best_trial(tmp_path, "fastweights") == dict(
        learning_rate=0.001, memory_kwargs=dict(fast_lr=0.01, decay=0.9, inner_steps=1, normalize=False)
    )
    assert figure5.best_trial(tmp_path, "lstm") == dict(learning_rate=0.001)
    (tmp_path / "CatchBlind16-v0-fastweights-t0" / "evaluations.npz").unlink()
    assert figure5.best_trial(tmp_path, "fastweights") == new


def test_run_builds_the_train_config(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(figure5, "train", built.append)
    monkeypatch.setattr(figure5, "load_curve", lambda run_dir: None)
    args = argparse.Namespace(timesteps=1000, eval_freq=500, eval_episodes=10, threads=None)
    figure5.run(tmp_path / "r", args, "CatchBlind16-v0", "fastweights", 3, **BEST)
    (config,) = built
    assert config.memory_kwargs == BEST["memory_kwargs"] and config.threads is None and config.seed == 3
    config.validate()
