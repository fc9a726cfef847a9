"""benchmarks/figure5.py: a front end of fw_agents.search (one study per env x memory, read back
for the figure), and the seeds mode's TrainConfigs and best-of tables."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURE5_PATH = ROOT / "benchmarks" / "figure5.py"
BEST = dict(learning_rate=0.00084, memory_kwargs=dict(fast_lr=0.049, decay=0.88, inner_steps=2))


def _import_figure5():  # benchmarks/ is not a package
    spec = importlib.util.spec_from_file_location("figure5", FIGURE5_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figure5 = _import_figure5()


def test_best_of_table_new_and_old_form(tmp_path):
    shipped = ROOT / "benchmarks" / "figure5_best16.json"
    assert figure5.best_trial(shipped, "fastweights") == BEST
    assert figure5.best_trial(shipped, "lstm") == dict(learning_rate=0.0021)
    old = tmp_path / "old.json"  # before memory_kwargs: the fast-weights options as fields
    old.write_text(json.dumps({"fastweights": {"learning_rate": 0.00084, "fast_lr": 0.049, "decay": 0.88,
                                               "inner_steps": 2, "fast_normalize": False}}))  # fmt: skip
    assert figure5.best_trial(old, "fastweights") == BEST
    shipped_before = tmp_path / "shipped_before.json"  # memory_kwargs with normalize (before fast_share)
    shipped_before.write_text(json.dumps({"fastweights": dict(BEST, memory_kwargs=dict(BEST["memory_kwargs"], normalize=False))}))
    assert figure5.best_trial(shipped_before, "fastweights") == BEST
    with pytest.raises(ValueError, match="no entry for 'gru'"):
        figure5.best_trial(shipped, "gru")


def test_run_builds_the_train_config(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(figure5, "train", built.append)
    monkeypatch.setattr(figure5, "load_curve", lambda run_dir: None)
    args = argparse.Namespace(timesteps=1000, eval_freq=500, eval_episodes=10, threads=None)
    figure5.run(tmp_path / "r", args, "CatchBlind16-v0", "fastweights", 3, **BEST)
    (config,) = built
    assert config.memory_kwargs == BEST["memory_kwargs"] and config.threads is None and config.seed == 3
    config.validate()


TINY = ["--envs", "Catch-v0", "--memories", "fastweights", "irnn", "--timesteps", "1024", "--eval-freq", "512",
        "--eval-episodes", "4"]  # fmt: skip


@pytest.mark.slow
def test_search_mode_runs_studies_and_reads_them_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "out"
    argv = [*TINY, "--trials", "2", "--top", "1", "--out", str(out)]
    assert figure5.main(argv) == 0
    assert (out / "figure5_Catch-v0.png").exists() and "| Catch-v0 | irnn |" in (out / "figure5.md").read_text()
    trials_md = (out / "trials.md").read_text()
    for memory in ("fastweights", "irnn"):
        study = optuna.load_study(study_name=f"figure5-Catch-v0-{memory}",
                                  storage=f"sqlite:///{out}/search/figure5-Catch-v0-{memory}.db")  # fmt: skip
        trials = study.get_trials()
        assert len(trials) == 2 and trials_md.count(f"| Catch-v0 | {memory} |") == 2
        runs = figure5.search_runs(figure5.study_search(figure5.build_parser().parse_args(argv), "Catch-v0", memory))
        assert [label for label, _, _ in runs] == [f"t{study.best_trial.number}", f"t{1 - study.best_trial.number}"]
        for label, params, (steps, curve) in runs:  # the curve read back is the trial's evaluations.npz
            trial = trials[int(label[1:])]
            assert np.allclose(figure5.load_curve(Path(trial.user_attrs["run_dir"]))[1], curve)
            assert params["learning_rate"] == trial.params["learning_rate"] and list(steps) == [512, 1024]
        assert figure5.best_trial(out, memory) == figure5.trial_params(study.best_trial.params, memory)
    best = figure5.best_trial(out, "fastweights")["memory_kwargs"]  # the paper's space: η as fast_lr
    assert 1e-4 <= best["fast_lr"] <= 0.1 and "fast_share" not in best
    capsys.readouterr()
    assert figure5.main(argv) == 0  # complete studies: nothing runs again
    assert " COMPLETE " not in capsys.readouterr().out
    assert figure5.main([*argv, "--plot-only", "--top", "2"]) == 0


def test_search_mode_errors_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert figure5.main([*TINY, "--trials", "1", "--plot-only", *out]) == 2
    assert capsys.readouterr().err.startswith("error: no study figure5-Catch-v0-fastweights in sqlite:///")
    assert figure5.main([*TINY, "--trials", "1", "--top", "0", *out]) == 2
    assert figure5.main([*TINY, "--trials", "1", "--storage", "nowhere", *out]) == 2
    assert "storage must be a database URL" in capsys.readouterr().err
    assert figure5.main([*TINY, "--best-of", str(tmp_path), *out]) == 2
    assert "expected one figure5-<env>-fastweights study, found none" in capsys.readouterr().err


def _seed_args():
    """The options ``figure5.run`` reads in seeds mode."""
    return argparse.Namespace(timesteps=100, eval_freq=50, eval_episodes=2, threads=1)


def _fake_train(seen):
    """``train`` that records its config and writes what a finished run leaves."""

    def train(config):
        seen.append(config)
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(run_dir / "evaluations.npz", timesteps=np.array([50, 100]), results=np.zeros((2, 2)))
        (run_dir / "model.zip").write_bytes(b"")
    return train


def test_a_seed_run_left_unfinished_with_a_checkpoint_is_resumed(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(figure5, "train", _fake_train(seen))
    monkeypatch.setattr(figure5, "latest_checkpoint", lambda run_dir: run_dir / "checkpoints" / "interrupted_64_steps.zip")
    run_dir = tmp_path / "CatchBlind16-v0-fastweights-s0"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    figure5.run(run_dir, _seed_args(), "CatchBlind16-v0", "fastweights", 0)
    assert seen[0].resume == str(run_dir)


def test_a_seed_run_left_unfinished_without_a_checkpoint_starts_again(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(figure5, "train", _fake_train(seen))
    run_dir = tmp_path / "CatchBlind16-v0-fastweights-s0"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")  # killed (SIGTERM) before any checkpoint
    figure5.run(run_dir, _seed_args(), "CatchBlind16-v0", "fastweights", 0)
    assert seen[0].resume is None
    assert (tmp_path / "CatchBlind16-v0-fastweights-s0.unfinished-1" / "config.json").exists()


def test_bad_trials_and_best_of_fail_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert figure5.main(["--trials", "-1", "--out", str(out)]) == 2
    assert figure5.main(["--best-of", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    table = ROOT / "benchmarks" / "figure5_best16.json"
    assert figure5.main(["--best-of", str(table), "--memories", "fastweights", "gru", "--out", str(out)]) == 2
    assert not any(out.glob("*-s*"))  # no run trained
    assert "Traceback" not in capsys.readouterr().err


def test_seeds_report_gives_each_memorys_iqm_with_its_interval(tmp_path, monkeypatch, capsys):
    import scipy.stats

    finals = {0: 0.2, 1: 0.5, 2: 0.9, 3: -0.4}

    def train(config):  # curves 0 then the seed's final return
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        results = np.array([[0.0, 0.0], [finals[config.seed]] * 2])
        np.savez(run_dir / "evaluations.npz", timesteps=np.array([50, 100]), results=results)
        (run_dir / "model.zip").write_bytes(b"")

    monkeypatch.setattr(figure5, "train", train)
    argv = ["--envs", "Catch-v0", "--memories", "fastweights", "irnn", "--seeds", "0", "1", "2", "3",
            "--bootstrap-reps", "200", "--out", str(tmp_path)]  # fmt: skip
    assert figure5.main(argv) == 0
    report = (tmp_path / "figure5.md").read_text()
    assert "Interquartile mean over the runs (per seed) with its 95% bootstrap confidence interval (200 replications" in report
    final = scipy.stats.trim_mean(list(finals.values()), 0.25)
    auc = scipy.stats.trim_mean([f / 2 for f in finals.values()], 0.25)
    for memory in ("fastweights", "irnn"):
        row = next(line for line in report.splitlines() if line.startswith(f"| Catch-v0 | {memory} | 4 | "))
        cells = [c.strip() for c in row.split("|")[4:6]]
        for cell, expected in zip(cells, (auc, final)):
            iqm, low, high = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
            assert iqm == pytest.approx(expected, abs=5e-4) and low <= iqm <= high
    assert figure5.main([*argv, "--bootstrap-reps", "0"]) == 2
    assert "bootstrap reps must be >= 1" in capsys.readouterr().err


def _train_seed_tenths(config):  # a curve 0 then the seed's tenth, in the run folder as train() writes it
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results = np.array([[0.0, 0.0], [config.seed / 10] * 2])
    np.savez(run_dir / "evaluations.npz", timesteps=np.array([50, 100]), results=results)
    (run_dir / "model.zip").write_bytes(b"")


def test_seed_runs_are_cells_of_one_study_read_back_anywhere(tmp_path, monkeypatch, capsys):
    from fw_agents.cell_study import cell_records, runs_per_cell

    monkeypatch.setattr(figure5, "train", _train_seed_tenths)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = ["--envs", "Catch-v0", "--memories", "fastweights", "irnn", "--seeds", "0", "1", "--bootstrap-reps", "100",
            "--storage", url]  # fmt: skip
    assert figure5.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.startswith("4 runs to do (4 in all)")
    study = optuna.load_study(study_name="figure5-seeds", storage=url)
    assert runs_per_cell(study) == {f"Catch-v0/{m}/s{s}": 1 for m in ("fastweights", "irnn") for s in (0, 1)}
    assert cell_records(study)["Catch-v0/irnn/s1"]["returns"] == [0.0, 0.1]
    assert figure5.main([*argv, "--out", str(tmp_path / "b")]) == 0  # another machine: nothing left to run
    assert capsys.readouterr().out.startswith("0 runs to do") and not list((tmp_path / "b").glob("Catch-v0-*"))
    assert (tmp_path / "b" / "figure5.md").read_text() == (tmp_path / "a" / "figure5.md").read_text()
    assert figure5.main([*argv, "--report-only", "--seeds", "0", "1", "2", "--out", str(tmp_path / "c")]) == 2
    assert "study figure5-seeds has no result for Catch-v0/fastweights/s2" in capsys.readouterr().err


@pytest.mark.slow
def test_seed_runs_two_workers_train_each_run_once(tmp_path):
    import os
    import subprocess
    import sys

    from fw_agents.cell_study import runs_per_cell

    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [*TINY, "--seeds", "0", "--workers", "2", "--threads", "1", "--bootstrap-reps", "100", "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, str(FIGURE5_PATH), *argv], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="figure5-seeds", storage=f"sqlite:///{tmp_path / 'figure5_seeds.db'}")
    assert runs_per_cell(study) == {"Catch-v0/fastweights/s0": 1, "Catch-v0/irnn/s0": 1}
    assert sorted(p.name for p in tmp_path.glob("Catch-v0-*")) == ["Catch-v0-fastweights-s0", "Catch-v0-irnn-s0"]
    assert "| Catch-v0 | irnn | 1 |" in (tmp_path / "figure5.md").read_text()
