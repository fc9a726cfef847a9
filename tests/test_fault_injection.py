"""Faults at save points never cost a run its earlier files, and the latest state resumes.

A training subprocess (``train_agent.py`` on a tiny budget) is stopped at a chosen moment
of its saves, the way a user, a scheduler or the machine would: ``kill -9``, Ctrl-C
(SIGINT) or SIGTERM just before the k-th file is renamed into place, ``kill -9`` in the
middle of writing a model zip, or a full disk in the middle of one. Afterwards every
model zip in the run folder loads, every CSV parses with one value per column, and
``--resume <folder>`` finishes the run. Two processes started on one folder: one runs,
the other stops at once.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fw_agents.config import TrainConfig
from fw_agents.train import train
from fw_agents.algorithms import FastRecurrentPPO

ROOT = Path(__file__).resolve().parents[1]
TIMESTEPS = 512
FLAGS = ["--env", "CatchBlind16-v0", "--timesteps", str(TIMESTEPS), "--n-envs", "4", "--n-steps", "32",
         "--batch-size", "64", "--n-epochs", "1", "--hidden-size", "16", "--eval-freq", "128", "--eval-episodes", "4",
         "--checkpoint-freq", "128", "--gif-episodes", "0", "--wandb", "disabled", "--no-progress-bar"]  # fmt: skip

# Runs train_agent.main with one fault planted: at the k-th call of FAULT_POINT the process
# is sent SIGNAL (or, for "ENOSPC", the call fails as on a full disk). The points: "rename"
# (os.replace; "rename:NAME" counts only the renames onto NAME), "write" (a zip entry written),
# "train-step" (a step of the training envs: mid-rollout) and "final-eval" (a step of the final
# evaluation's envs).
HARNESS = textwrap.dedent(
    """
    import errno, os, signal, sys, zipfile
    point, k, fault = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    point, _, only = point.partition(":")
    # a runner started in the background (`cmd &`, nohup) passes SIGINT on ignored, and Python
    # then never turns it into KeyboardInterrupt: this test is about Ctrl-C, so restore it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {root!r})
    import fw_agents.train as train_module
    import train_agent
    calls = 0

    def fire(counted=True):
        global calls
        calls += counted
        if calls == k and counted:
            if fault == "ENOSPC":
                raise OSError(errno.ENOSPC, "No space left on device")
            os.kill(os.getpid(), getattr(signal, "SIG" + fault))

    def counting_steps(env):  # every step of this VecEnv fires
        step_wait = env.step_wait
        env.step_wait = lambda: (fire(), step_wait())[1]
        return env

    if point in ("rename", "write"):
        real = os.replace if point == "rename" else zipfile.ZipFile.writestr

        def planted(*args, **kwargs):
            fire(not only or os.path.basename(str(args[1])) == only)
            return real(*args, **kwargs)

        if point == "rename":
            os.replace = planted
        else:
            zipfile.ZipFile.writestr = planted
    elif point == "train-step":
        make_env, made = train_module.make_env, []

        def training_envs_counted(*args, **kwargs):
            env = make_env(*args, **kwargs)
            made.append(env)
            return counting_steps(env) if len(made) == 1 else env  # made first: the training envs

        train_module.make_env = training_envs_counted
    else:  # "final-eval"
        evaluate = train_module.evaluate
        train_module.evaluate = lambda model, env, *a, **kw: evaluate(model, counting_steps(env), *a, **kw)
    sys.exit(train_agent.main(sys.argv[4:]))
    """
).format(root=str(ROOT))


def _run_with_fault(run: Path, point: str, k: int, fault: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-c", HARNESS, point, str(k), fault, *FLAGS, *flags, "--run-dir", str(run)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)


def _check_every_file(run: Path) -> None:
    for path in run.rglob("*.zip"):
        if path.name.startswith("."):  # a temporary file kill -9 left: never under a final name
            assert ".partial" in path.name
            continue
        FastRecurrentPPO.load(path, device="cpu")  # raises on a truncated or empty zip
    for path in run.rglob("*.csv"):
        rows = list(csv.reader(path.open()))
        assert rows and all(len(row) == len(rows[0]) for row in rows), f"{path} has ragged rows"
    if (run / "evaluations.npz").exists():
        np.load(run / "evaluations.npz")["results"]


def _resume(run: Path) -> None:
    """The latest state continues (a run killed before its first checkpoint has none: it says so)."""
    has_checkpoint = (run / "model.zip").exists() or any(
        not p.name.startswith(".") for p in (run / "checkpoints").glob("*.zip")
    )
    if not has_checkpoint:
        with pytest.raises(ValueError, match="no readable checkpoint"):
            train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))
        return
    summary = train(TrainConfig(resume=str(run), timesteps=TIMESTEPS + 128, progress_bar=False, wandb="disabled"))
    assert summary["run_dir"] == str(run) and summary["timesteps"] == TIMESTEPS + 128
    _check_every_file(run)
    steps = [int(row["time/total_timesteps"]) for row in csv.DictReader((run / "progress.csv").open())]
    assert steps == sorted(steps), "one curve, in order"


@pytest.mark.slow
@pytest.mark.parametrize(
    "point,k,fault,status",
    [
        ("rename", 2, "KILL", -9),  # config.json is the first rename: before any checkpoint
        ("rename", 6, "KILL", -9),
        ("rename", 11, "KILL", -9),
        ("rename", 4, "INT", 130),
        ("rename", 9, "TERM", 143),
        ("write", 3, "KILL", -9),  # mid-zip: a half-written temporary file
        ("write", 14, "KILL", -9),
        ("write", 8, "ENOSPC", 1),
    ],
)
def test_a_fault_at_a_save_point_loses_nothing(tmp_path, point, k, fault, status, one_thread):
    run = tmp_path / "run"
    result = _run_with_fault(run, point, k, fault)
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if status > 0:
        assert len(result.stderr.strip().splitlines()) == 1 or "interrupted" in result.stdout, result.stderr
    leftovers = [p for p in run.rglob(".*.partial*")]
    if fault != "KILL":
        assert not leftovers, "an orderly stop removes its temporary files"
    _resume(run)


@pytest.mark.slow
def test_two_runs_on_one_folder_one_stops_at_once(tmp_path, one_thread):
    run = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    argv = [sys.executable, str(ROOT / "train_agent.py"), *FLAGS, "--run-dir", str(run)]
    longer = [*argv, "--timesteps", "8192"]  # still training when the second one starts
    first = subprocess.Popen(longer, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not (run / "config.json").exists():  # the first has claimed the folder
            assert first.poll() is None, first.stderr.read()
        second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    finally:
        out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1 and "in use by another run" in lines[0], second.stderr
    _check_every_file(run)
    rows = list(csv.DictReader((run / "progress.csv").open()))
    assert max(int(row["time/total_timesteps"]) for row in rows) == 8192


@pytest.mark.slow
def test_an_interrupt_while_the_run_ends_is_finished_by_resume(tmp_path, one_thread):
    """Ctrl-C once training is done, as the final evaluation is written: --resume writes every
    final file and exits 0; a second --resume has nothing left to do (exit 2, one line)."""
    run = tmp_path / "run"
    result = _run_with_fault(run, "rename:eval_summary.json", 1, "INT", "--gif-episodes", "1")
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (run / "model.zip").exists() and not (run / "eval_summary.json").exists()
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    resume = [sys.executable, str(ROOT / "train_agent.py"), "--resume", str(run), "--no-progress-bar"]
    resumed = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("model.zip", "eval_summary.json", "learning_curve.png", "episodes.gif"):
        assert (run / name).is_file(), name
    assert json.loads((run / "eval_summary.json").read_text())["timesteps"] == TIMESTEPS
    _check_every_file(run)
    again = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=180)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "leaves nothing to train" in lines[0], again.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "point,k,fault,status",
    [
        ("train-step", 50, "TERM", 143),  # the 50th of 32 steps a rollout (4 envs): mid-way through the second
        ("train-step", 50, "INT", 130),
        ("final-eval", 3, "INT", 130),  # training complete, the final evaluation under way
        ("final-eval", 3, "TERM", 143),
    ],
)
def test_a_signal_mid_rollout_or_in_the_final_evaluation_resumes_to_the_end(tmp_path, point, k, fault, status, one_thread):
    """A real signal to a training process mid-rollout saves the last update's step (128, a rollout
    boundary), and ``--resume`` ends exactly at ``--timesteps``; during the final evaluation it saves
    the trained model, and ``--resume`` writes the run's end. Exit 130 / 143, no traceback."""
    run = tmp_path / "run"
    result = _run_with_fault(run, point, k, fault)
    assert result.returncode == status and "Traceback" not in result.stderr, result.stderr[-2000:]
    if point == "train-step":
        assert [p.name for p in (run / "checkpoints").glob("interrupted_*.zip")] == ["interrupted_128_steps.zip"]
        assert "interrupted at 128 steps" in result.stdout
    else:
        assert "interrupted after training; the model is saved to" in result.stdout, result.stdout
        assert (run / "model.zip").exists() and not (run / "eval_summary.json").exists()
    _check_every_file(run)
    summary = train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))  # the run's own total
    assert summary["timesteps"] == TIMESTEPS and json.loads((run / "eval_summary.json").read_text())["timesteps"] == TIMESTEPS
    steps = [int(row["time/total_timesteps"]) for row in csv.DictReader((run / "progress.csv").open())]
    assert steps == sorted(steps) and max(steps) == TIMESTEPS, steps
    _check_every_file(run)
