"""The callbacks of a training run: catch rate, evaluation into the run folder, the non-finite
stop, and checkpoints and the best model written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from fw_agents.runs.errors import NonFiniteError
from fw_agents.runs.evaluation import EpisodeTally
from fw_agents.runs.files import atomic_path

class CatchRateCallback(BaseCallback):
    """Logs ``rollout/catch_rate``: the fraction of finished training episodes whose ball was caught."""

    def __init__(self) -> None:
        super().__init__()
        self._caught: list[bool] = []

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and "caught" in info:
                self._caught.append(bool(info["caught"]))
        return True

    def _on_rollout_end(self) -> None:
        if self._caught:
            self.logger.record("rollout/catch_rate", float(np.mean(self._caught[-100:])))


class _OnTotalSteps:
    """For a periodic SB3 callback (``n_calls % freq``): count calls from the run's start, not
    from this ``learn`` call's, so that a resumed run evaluates and saves at the same env
    steps as one that was never stopped (at multiples of the period, not the period after the
    resume point). A fresh run starts at 0 either way."""

    def _on_training_start(self) -> None:
        super()._on_training_start()  # type: ignore[misc]
        self.n_calls = self.model.num_timesteps // self.model.n_envs  # type: ignore[attr-defined]


class RunEvalCallback(_OnTotalSteps, EvalCallback):
    """SB3's ``EvalCallback`` for a run folder.

    * ``evaluations.npz`` is replaced atomically after each evaluation (SB3 writes it in place),
      and a resumed run continues its history (and its best mean reward, so the best model is
      only replaced by a better one).
    * A resumed run evaluates at the same env steps as one that was never stopped.
    * For envs whose ``info`` says ``"caught"`` at the end of an episode (Catch), it logs
      ``eval/catch_rate`` in the same dump as ``eval/mean_reward`` (recorded as each evaluation
      episode ends, before SB3 dumps); likewise ``eval/truncated_episodes``, the episodes a time
      limit cut, when there are any (:mod:`fw_agents.runs.evaluation`).
    * With ``show_progress``, a slow evaluation prints how far it is every few seconds.

    :param eval_env: The evaluation env.
    :param run_dir: The run folder (``evaluations.npz`` goes there).
    :param continue_at: A resumed run's checkpoint step: evaluations recorded after it (by a
        run that crashed after its last checkpoint, and which this run makes again) are
        dropped from the history. None: keep the whole history.
    :param show_progress: Print progress lines during a slow evaluation (:class:`~fw_agents.runs.evaluation.EpisodeTally`).
    :param max_episode_steps: The evaluation episodes' step cap, named by those lines (None: none given).
    :param kwargs: ``EvalCallback``'s other arguments.
    """

    def __init__(self, eval_env: VecEnv, run_dir: Path, continue_at: int | None = None, show_progress: bool = False,
                 max_episode_steps: int | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(eval_env, log_path=str(run_dir), **kwargs)
        self.show_progress, self.max_episode_steps = show_progress, max_episode_steps
        self._tally = EpisodeTally(self.n_eval_episodes, False)
        self.final_path = run_dir / "evaluations.npz"
        self.log_path = str(run_dir / ".evaluations.partial")  # np.savez adds ".npz"; renamed when complete
        self._caught: list[bool] = []  # this evaluation's episodes, caught or not
        if self.final_path.exists():
            self._continue_history(continue_at)

    def _continue_history(self, continue_at: int | None) -> None:
        with np.load(self.final_path) as saved:
            if saved["results"].ndim != 2 or saved["results"].shape[1] != self.n_eval_episodes:
                self.final_path.replace(self.final_path.with_name("evaluations.before-resume.npz"))
                return  # another number of episodes per evaluation: the arrays would not stack
            arrays = {key: saved[key] for key in ("timesteps", "results", "ep_lengths", "successes") if key in saved}
        if continue_at is not None and (arrays["timesteps"] > continue_at).any():
            kept = arrays["timesteps"] <= continue_at
            arrays = {key: value[kept] if len(value) == len(kept) else value for key, value in arrays.items()}
            np.savez(self.log_path, **arrays)  # the history as this run continues it
            os.replace(self.log_path + ".npz", self.final_path)
        self.evaluations_timesteps = arrays["timesteps"].tolist()
        self.evaluations_results = arrays["results"].tolist()
        self.evaluations_length = arrays["ep_lengths"].tolist()
        if "successes" in arrays:
            self.evaluations_successes = arrays["successes"].tolist()
        if self.evaluations_results:
            self.best_mean_reward = float(np.max(np.mean(self.evaluations_results, axis=1)))

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self._stop = False
        due = self.eval_freq > 0 and self.n_calls > 0 and self.n_calls % self.eval_freq == 0
        if due and (not self.evaluations_timesteps or self.evaluations_timesteps[-1] < self.num_timesteps):
            # resumed from a checkpoint whose step had an evaluation that never completed (the run was
            # stopped, killed or lost its database during it): make it now, or the curve has a hole there
            self._stop = not self._on_step()

    def _on_step(self) -> bool:
        if getattr(self, "_stop", False):  # the evaluation made at the start asked to stop (a pruned trial)
            return False
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return super()._on_step()  # no evaluation at this step: nothing to set up or rename
        self._caught = []
        self._tally = EpisodeTally(self.n_eval_episodes, self.show_progress, f"evaluation at {self.num_timesteps} steps",
                                   self.max_episode_steps)  # fmt: skip
        evaluations = len(self.evaluations_timesteps)
        try:
            go_on = super()._on_step()
            if len(self.evaluations_timesteps) > evaluations:
                os.replace(self.log_path + ".npz", self.final_path)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: no half-written file stays behind
            Path(self.log_path + ".npz").unlink(missing_ok=True)
            raise
        return go_on

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        truncated = self._tally.truncated
        self._tally(locals_, globals_)
        if self._tally.truncated > truncated:
            self.logger.record("eval/truncated_episodes", self._tally.truncated)
        if locals_["done"] and "caught" in locals_["info"]:
            self._caught.append(bool(locals_["info"]["caught"]))
            self.logger.record("eval/catch_rate", float(np.mean(self._caught)))


class StopOnNonFinite(BaseCallback):
    """Stops training with :class:`NonFiniteError` as soon as an update leaves a non-finite loss
    or policy parameter, before the next rollout samples from it (where torch would otherwise
    fail on a NaN probability, or training would go on silently). Checked once per update."""

    def _on_rollout_start(self) -> None:
        loss = self.logger.name_to_value.get("train/loss")  # the last update's, not yet dumped
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.policy.parameters()]).all()
        if bool(finite) and (loss is None or math.isfinite(loss)):
            return
        what = "loss" if loss is not None and not math.isfinite(loss) else "parameters"
        raise NonFiniteError(
            f"non-finite {what} after the update ending at step {self.num_timesteps}; training stopped, "
            "earlier checkpoints are kept. Try a lower --learning-rate (or --fast-lr for fast weights)"
        )

    def _on_step(self) -> bool:
        return True


def save_atomically(model: RecurrentPPO, path: Path) -> None:
    """``model.save(path)`` through :func:`fw_agents.runs.files.atomic_path`: a crash, a kill or a
    full disk mid-save never leaves a truncated model under the final name."""
    with atomic_path(path) as tmp:
        model.save(tmp)


class AtomicCheckpointCallback(_OnTotalSteps, CheckpointCallback):
    """SB3's ``CheckpointCallback`` (same arguments, same ``<prefix>_<steps>_steps.zip`` names)
    with every zip written atomically (:func:`save_atomically`); SB3's own writes in place. A
    resumed run saves at the same steps as an unstopped one."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            save_atomically(self.model, Path(self._checkpoint_path(extension="zip")))
        return True


class SaveBestAtomically(BaseCallback):
    """``EvalCallback``'s ``callback_on_new_best``: writes the new best model to ``path``
    atomically (``EvalCallback``'s own ``best_model_save_path`` writes in place).

    :param path: Where the best model goes, e.g. ``best/best_model.zip``.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _on_step(self) -> bool:
        save_atomically(self.model, self.path)
        return True
