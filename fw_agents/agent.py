"""Train, evaluate and save a recurrent PPO agent with any memory core.

``train(TrainConfig(...))`` is what ``train_agent.py`` runs: it builds the env (the
batched :class:`envs.CatchVecEnv` for Catch ids, ``DummyVecEnv`` otherwise),
:class:`fw_agents.algorithms.FastRecurrentPPO` (sb3-contrib's ``RecurrentPPO`` with
inference-mode rollouts and a compact rollout buffer, same results) with
:class:`fw_agents.policies.RecurrentMemoryPolicy`, the callbacks (evaluation, checkpoints,
catch rate) and the run directory::

    model.zip  checkpoints/  progress.csv  events.out.tfevents.*  evaluations.npz
    learning_curve.png  eval_summary.json  episodes.gif  config.json
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

import envs
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.files import atomic_path, write_text_atomically
from fw_agents.memory import MEMORY_NAMES
from fw_agents.policies import CRITIC_MODES, RecurrentMemoryPolicy, default_memory_kwargs
from fw_agents.tracking import WANDB_MODES, start_run

DEVICES = ("auto", "cpu", "cuda")
_FAST_DEFAULTS = default_memory_kwargs("fastweights")


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults solve ``Catch-v0`` in a few minutes on 2 CPU cores."""

    env: str = "Catch-v0"
    memory: str = "fastweights"
    timesteps: int = 300_000
    n_envs: int = 16
    seed: int = 0
    device: str = "auto"
    learning_rate: float = 1e-3
    n_steps: int = 64
    batch_size: int = 256
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    hidden_size: int = 128
    # Fast weights: the policies' defaults (fw_agents.policies.DEFAULT_MEMORY_KWARGS), η as the
    # fast memory's share of the drive (fast_normalize); --no-fast-normalize reads η as the paper's.
    fast_lr: float = _FAST_DEFAULTS["fast_lr"]
    decay: float = _FAST_DEFAULTS["decay"]
    inner_steps: int = _FAST_DEFAULTS["inner_steps"]
    fast_normalize: bool = _FAST_DEFAULTS["normalize"]
    critic: str = "shared"
    eval_freq: int = 25_000
    eval_episodes: int = 200
    checkpoint_freq: int = 50_000
    gif_episodes: int = 3
    run_dir: str | None = None
    runs_root: str = "runs"
    wandb: str | None = None
    resume: str | None = None
    progress_bar: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value and what is accepted."""
        if not env_registered(self.env):
            catch = ", ".join(envs.CATCH_IDS)
            raise ValueError(
                f"unknown env id {self.env!r}; use a registered Gymnasium id, e.g. {catch}, "
                "or module:id to import the module that registers it (e.g. popgym:popgym-RepeatFirstEasy-v0)"
            )
        _choice("memory", self.memory, MEMORY_NAMES)
        _choice("device", self.device, DEVICES)
        _choice("critic", self.critic, CRITIC_MODES)
        if self.wandb is not None:
            _choice("wandb", self.wandb, WANDB_MODES)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
        for name in ("timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "hidden_size", "inner_steps",
                     "eval_freq", "eval_episodes", "checkpoint_freq"):  # fmt: skip
            _at_least(name, getattr(self, name), 1)
        _at_least("gif_episodes", self.gif_episodes, 0)
        _in_open_interval("learning_rate", self.learning_rate, 0.0, math.inf)
        _in_open_interval("fast_lr", self.fast_lr, 0.0, math.inf)
        _in_open_interval("decay", self.decay, 0.0, 1.0)
        _in_open_interval("gamma", self.gamma, 0.0, 1.0, closed_high=True)
        _in_open_interval("gae_lambda", self.gae_lambda, 0.0, 1.0, closed_high=True)
        if not (isinstance(self.ent_coef, (int, float)) and 0 <= self.ent_coef < math.inf):
            raise ValueError(f"ent_coef must be a finite number >= 0, got {self.ent_coef!r}")
        if self.batch_size < 2:  # PPO normalises advantages over the minibatch: one sample gives NaN
            raise ValueError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        if self.resume is not None:
            path = Path(self.resume)
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ValueError(f"cannot read resume checkpoint {self.resume!r} (no such readable file)")

    def policy_kwargs(self) -> dict[str, Any]:
        memory_kwargs: dict[str, Any] = {}
        if self.memory == "fastweights":
            memory_kwargs = dict(
                normalize=self.fast_normalize, fast_lr=self.fast_lr, decay=self.decay, inner_steps=self.inner_steps
            )
        return dict(memory=self.memory, hidden_size=self.hidden_size, memory_kwargs=memory_kwargs, critic=self.critic)


def env_registered(env_id: str) -> bool:
    """Whether ``env_id`` names a registered Gymnasium env. Gymnasium's ``module:id`` form
    (e.g. ``popgym:popgym-RepeatFirstEasy-v0``) imports ``module`` first, as ``gym.make`` does."""
    module, sep, name = env_id.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
        env_id = name
    return env_id in gym.registry


def make_env(env_id: str, n_envs: int, seed: int, render_mode: str | None = None) -> VecEnv:
    """Vectorised env with episode statistics: batched numpy Catch for Catch ids, else ``DummyVecEnv``."""
    if env_id in envs.CATCH_IDS:
        env = VecMonitor(envs.CatchVecEnv.from_id(env_id, n_envs, render_mode=render_mode))
        env.seed(seed)
        return env
    env_kwargs = {"render_mode": render_mode} if render_mode else None
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


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


class EvalCatchRate(BaseCallback):
    """Run after each evaluation: logs ``eval/catch_rate`` (Catch: return +1 means caught)."""

    def _on_step(self) -> bool:
        returns = self.parent.evaluations_results[-1]  # type: ignore[union-attr]
        self.logger.record("eval/catch_rate", float(np.mean(np.asarray(returns) > 0)))
        return True


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameter; the run stops (see :class:`StopOnNonFinite`)."""


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


def build_model(config: TrainConfig, env: VecEnv) -> RecurrentPPO:
    """``FastRecurrentPPO`` with the memory policy, or the checkpoint named by ``config.resume``."""
    if config.resume:
        return FastRecurrentPPO.load(config.resume, env=env, device=config.device)
    return FastRecurrentPPO(
        RecurrentMemoryPolicy,
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        policy_kwargs=config.policy_kwargs(),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def _save_atomically(model: RecurrentPPO, path: Path) -> None:
    """``model.save(path)`` through :func:`fw_agents.files.atomic_path`: a crash, a kill or a
    full disk mid-save never leaves a truncated model under the final name."""
    with atomic_path(path) as tmp:
        model.save(tmp)


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` (same arguments, same ``<prefix>_<steps>_steps.zip`` names)
    with every zip written atomically (:func:`_save_atomically`); SB3's own writes in place."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            _save_atomically(self.model, Path(self._checkpoint_path(extension="zip")))
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
        _save_atomically(self.model, self.path)
        return True


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and save; returns the evaluation summary (also in ``eval_summary.json``).

    Ctrl-C saves ``checkpoints/interrupted_<steps>_steps.zip`` (resume it with ``--resume``)
    and re-raises ``KeyboardInterrupt``.
    """
    config.validate()
    is_catch = config.env in envs.CATCH_IDS  # reward +1 exactly when the ball is caught
    name = f"{config.env}-{config.memory}-s{config.seed}"
    tracker = start_run(config.runs_root, name, asdict(config), run_dir=config.run_dir, wandb_mode=config.wandb)
    run_dir = tracker.run_dir
    env = make_env(config.env, config.n_envs, config.seed)
    eval_env = make_env(config.env, min(config.eval_episodes, 50), config.seed + 10_000)
    try:
        model = build_model(config, env)
        model.set_logger(tracker.logger)
        steps_per_call = config.n_envs
        callbacks = [
            StopOnNonFinite(),
            CatchRateCallback(),
            AtomicCheckpointCallback(
                max(config.checkpoint_freq // steps_per_call, 1), str(run_dir / "checkpoints"), "model"
            ),
            EvalCallback(
                eval_env,
                n_eval_episodes=config.eval_episodes,
                eval_freq=max(config.eval_freq // steps_per_call, 1),
                log_path=str(run_dir),
                callback_on_new_best=SaveBestAtomically(run_dir / "best" / "best_model.zip"),
                deterministic=True,
                callback_after_eval=EvalCatchRate() if is_catch else None,
            ),
        ]
        remaining = config.timesteps - model.num_timesteps
        try:
            if remaining > 0:
                model.learn(
                    remaining,
                    callback=CallbackList(callbacks),
                    reset_num_timesteps=not config.resume,
                    progress_bar=config.progress_bar,
                )
        except KeyboardInterrupt:
            path = run_dir / "checkpoints" / f"interrupted_{model.num_timesteps}_steps.zip"
            _save_atomically(model, path)
            print(f"\ninterrupted at {model.num_timesteps} steps; checkpoint saved to {path}")
            raise
        _save_atomically(model, run_dir / "model.zip")
        summary = evaluate(model, eval_env, config.eval_episodes, catch_rate=is_catch)
        summary.update(env=config.env, memory=config.memory, timesteps=model.num_timesteps, run_dir=str(run_dir))
        write_text_atomically(run_dir / "eval_summary.json", json.dumps(summary, indent=2) + "\n")
        tracker.log_summary(summary)
        from fw_agents.plots import plot_learning_curve, record_gif

        curve = plot_learning_curve(run_dir, title=f"{config.env} — {config.memory}", catch=is_catch)
        tracker.save_file(curve)
        if config.gif_episodes:
            record_gif(model, config.env, run_dir / "episodes.gif", config.gif_episodes, config.seed + 20_000)
        return summary
    finally:
        env.close()
        eval_env.close()
        tracker.close()


def evaluate(model: RecurrentPPO, env: VecEnv, episodes: int, catch_rate: bool = True) -> dict[str, Any]:
    """Deterministic evaluation: mean/std return, episodes, mean length and, for Catch
    (``catch_rate=True``), the catch rate (the fraction of returns > 0)."""
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    returns = np.asarray(returns, dtype=float)
    summary = dict(
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        episodes=len(returns),
        mean_length=float(np.mean(lengths)),
    )
    if catch_rate:
        summary["catch_rate"] = float(np.mean(returns > 0))
    return summary


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _in_open_interval(
    name: str, value: float, low: float, high: float, closed_high: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and low < value and (value <= high if closed_high else value < high)
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in ({low}, {high}{bracket}, got {value!r}")
