"""One trial of :mod:`fw_agents.search`: its ``TrainConfig``, the folder a retry continues in,
the evaluations reported to Optuna, and the objective (train, then the mean evaluation return)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fw_agents.memory.options import merge_options
from fw_agents.search_space import suggest
from fw_agents.validation import one_line

if TYPE_CHECKING:
    import optuna

    from fw_agents.config import TrainConfig
    from fw_agents.search import Search


def trial_config(base: TrainConfig, params: dict[str, Any], seed: int, run_dir: Path) -> TrainConfig:
    """The ``TrainConfig`` of one trial: ``base`` with the draw ``params`` (:func:`suggest`) over it."""
    memory_kwargs = merge_options(base.memory_kwargs, params.get("memory_kwargs", {}))
    return dataclasses.replace(
        base, **{**params, "memory_kwargs": memory_kwargs}, seed=seed, run_dir=str(run_dir), progress_bar=False
    )


def resumable_attempt(study_dir: Path, retry_history: Sequence[int], timesteps: int) -> tuple[Path, int] | None:
    """Where a retried trial continues: the folder of its latest earlier attempt that holds a
    checkpoint short of ``timesteps`` and that no live process holds (a retry continues in
    its predecessor's folder, so earlier attempts are looked at too), with the checkpoint's
    env steps. None: start afresh (no such folder on this machine, no checkpoint yet, or
    training had ended).

    :param study_dir: The study's folder (``trial-NNNN`` folders).
    :param retry_history: The earlier attempts' trial numbers, oldest first (Optuna's
        ``retry_history`` system attribute).
    :param timesteps: The trial's training budget.
    """
    from fw_agents.runs.resume import read_checkpoint
    from fw_agents.runs.folder import folder_in_use

    for number in reversed(list(retry_history)):
        folder = study_dir / f"trial-{number:04d}"
        if not folder.is_dir() or folder_in_use(folder):
            continue
        try:
            checkpoint = read_checkpoint(folder)
        except ValueError:  # no checkpoint written yet
            continue
        if checkpoint.timesteps < timesteps:
            return folder, checkpoint.timesteps
    return None


def _report_callback(trial: optuna.Trial, prune: bool) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class ReportEvaluation(BaseCallback):
        """After each periodic evaluation: report its mean return; stop if the pruner says so."""

        pruned = False

        def _on_step(self) -> bool:
            trial.report(float(self.parent.last_mean_reward), int(self.parent.evaluations_timesteps[-1]))
            if prune and trial.should_prune():
                self.pruned = True
                return False
            return True

    return ReportEvaluation()


def _report_history(trial: optuna.Trial, run_dir: Path, steps: int) -> None:
    """Report a resumed run's earlier evaluations (up to its checkpoint's ``steps``) to the
    trial that continues it, so the pruner compares it at those steps too."""
    import numpy as np

    try:
        with np.load(run_dir / "evaluations.npz") as saved:
            history = list(zip(saved["timesteps"].tolist(), saved["results"].mean(axis=1).tolist()))
    except (OSError, KeyError, ValueError):
        return
    for step, value in history:
        if step <= steps:
            trial.report(float(value), int(step))


class Objective:
    """One trial: sample, train through ``fw_agents.train.train``, return the mean evaluation return."""

    def __init__(self, search: Search) -> None:
        self.search = search
        self.trial: optuna.Trial | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        import numpy as np
        import optuna

        from fw_agents.train import train

        self.trial = trial
        base = self.search.train
        params = suggest(trial, base.memory, self.search.options.space)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        original = frozen.system_attrs.get("failed_trial")  # a retry keeps its original's seed
        seed = base.seed + (trial.number if original is None else original)
        # a retry (a worker died, or Ctrl-C) continues its predecessor's run from its last checkpoint
        resume = resumable_attempt(self.search.study_dir, frozen.system_attrs.get("retry_history", []), base.timesteps)
        run_dir = resume[0] if resume else self.search.study_dir / f"trial-{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        for key, value in dict(run_dir=str(run_dir), worker=worker, seed=seed).items():
            trial.set_user_attr(key, value)
        report = _report_callback(trial, self.search.options.pruner != "none")
        config = trial_config(base, params, seed, run_dir)
        if resume is not None:
            config = dataclasses.replace(config, resume=str(run_dir))
            trial.set_user_attr("resumed_at", resume[1])
            _report_history(trial, run_dir, resume[1])
        try:
            with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log):
                summary = train(config, eval_callbacks=[report])
        except Exception as error:  # the reason stays in the study (the dashboard, figure5) and in the trial line
            trial.set_user_attr("error", one_line(error, first_line=True))
            raise
        curve = np.load(run_dir / "evaluations.npz")["results"].mean(axis=1)
        trial.set_user_attr("final_return", summary["mean_return"])
        trial.set_user_attr("steps", summary["timesteps"])
        if "catch_rate" in summary:
            trial.set_user_attr("catch_rate", summary["catch_rate"])
        if report.pruned:
            raise optuna.TrialPruned(f"pruned at {summary['timesteps']} steps")
        return float(curve.mean())
